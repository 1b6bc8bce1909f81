/* ThreadSanitizer: one producer thread and two consumer threads over ONE
 * mapping (TSan tracks addresses, so separate mappings would hide races).
 * A small ring keeps the consumers lapped; one consumer blocks on the futex,
 * the other polls. Payloads are checksummed as in the stress test. */
#include <pthread.h>

#include "helpers.h"

#include "ring_internal.h"

#define MESSAGES 300000ull

static unsigned char *base;
static struct shmq_geometry geometry;
static struct shmq_wake_page wake; /* stands in for the consumer-state page */
static struct shmq_producer p;
static _Atomic int failures;

static void *produce(void *arg)
{
    (void)arg;
    unsigned char msg[32];
    for (uint64_t seq = 0; seq < MESSAGES; seq++) {
        memcpy(msg, &seq, 8);
        memset(msg + 8, (int)(seq & 0xFF), 16);
        uint64_t sum = checksum(msg, 24);
        memcpy(msg + 24, &sum, 8);
        if (shmq_producer_publish(&p, msg, 32, NULL) != 0)
            failures++;
        if (seq % 1024 == 0)
            usleep(100); /* let the blocking consumer fall asleep now and then */
    }
    return NULL;
}

static void *consume(void *arg)
{
    int blocking = arg != NULL;
    struct shmq_consumer c = {0};
    shmq_consumer_bind(&c, base, &geometry, SHMQ_START_EARLIEST, &wake);
    unsigned char buf[32];
    uint64_t received = 0, start = c.position;
    while (shmq_consumer_position(&c) < MESSAGES) {
        size_t len;
        int rc = blocking ? shmq_consumer_poll_wait(&c, buf, 32, &len, 1000000000)
                          : shmq_consumer_poll(&c, buf, 32, &len);
        if (rc == SHMQ_EMPTY) {
            sched_yield();
            continue;
        }
        if (rc != 0 || len != 32 || checksum(buf, 24) != *(uint64_t *)(buf + 24)) {
            failures++;
            continue;
        }
        received++;
    }
    if (received + shmq_consumer_lost(&c) != MESSAGES - start)
        failures++;
    return NULL;
}

int main(void)
{
    test_start(120);
    const char *name = test_name("tsan");
    struct shmq_producer *owner = make_producer(name, 32, 16, 0);
    shmq_producer_close(owner);
    struct shmq_region *r;
    CHECK_RC(shmq_region_open(&r, name, SHMQ_REGION_READ_WRITE), 0);
    base = shmq_region_base(r);
    CHECK_RC(shmq_header_read(base, shmq_region_size(r), &geometry), 0);
    /* Bound before any consumer starts: binding reopens the stream that
     * closing `owner` ended. */
    shmq_producer_bind(&p, base, &geometry, &wake);
    pthread_t threads[3];
    CHECK(pthread_create(&threads[1], NULL, consume, NULL) == 0);
    CHECK(pthread_create(&threads[2], NULL, consume, (void *)1) == 0);
    CHECK(pthread_create(&threads[0], NULL, produce, NULL) == 0);
    for (int i = 0; i < 3; i++)
        pthread_join(threads[i], NULL);
    shmq_region_close(r);
    CHECK(failures == 0);
    return 0;
}

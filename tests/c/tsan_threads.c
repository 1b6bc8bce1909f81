/* ThreadSanitizer: one producer thread and two consumer threads over ONE
 * mapping (TSan tracks addresses, so separate mappings would hide races).
 * A small ring keeps the consumers lapped; one consumer blocks on the futex,
 * the other polls. Payloads are checksummed as in the stress test. Twice:
 * 32-byte messages in 32-byte slots, then messages of 32 to 504 bytes
 * (records of one to sixteen slots, padded at the ring's end) in the same
 * 16 slots. */
#include <pthread.h>

#include "helpers.h"

#include "ring_internal.h"

#define MESSAGES 300000ull

static unsigned char *base;
static struct shmq_geometry geometry;
static struct shmq_wake_page wake; /* stands in for the consumer-state page */
static struct shmq_producer p;
static _Atomic int failures;
static int mixed; /* the second run: messages of many slots */

#define LARGEST 512

static size_t length_of(uint64_t seq)
{
    return mixed ? 32 + 8 * (size_t)((seq * 7919) % 60) : 32;
}

static void *produce(void *arg)
{
    (void)arg;
    unsigned char msg[LARGEST];
    for (uint64_t seq = 0; seq < MESSAGES; seq++) {
        size_t n = length_of(seq);
        memcpy(msg, &seq, 8);
        memset(msg + 8, (int)(seq & 0xFF), n - 16);
        uint64_t sum = checksum(msg, n - 8);
        memcpy(msg + n - 8, &sum, 8);
        if (shmq_producer_publish(&p, msg, n, NULL) != 0)
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
    unsigned char buf[LARGEST];
    uint64_t received = 0, start = c.position;
    while (shmq_consumer_position(&c) < MESSAGES) {
        size_t len;
        int rc = blocking ? shmq_consumer_poll_wait(&c, buf, LARGEST, &len, 1000000000)
                          : shmq_consumer_poll(&c, buf, LARGEST, &len);
        if (rc == SHMQ_EMPTY) {
            sched_yield();
            continue;
        }
        uint64_t seq, sum;
        memcpy(&seq, buf, 8);
        memcpy(&sum, buf + len - 8, 8);
        if (rc != 0 || seq != shmq_consumer_position(&c) - 1 || len != length_of(seq) ||
            checksum(buf, len - 8) != sum) {
            failures++;
            continue;
        }
        received++;
    }
    if (received + shmq_consumer_lost(&c) != MESSAGES - start)
        failures++;
    return NULL;
}

static void run(const char *name)
{
    struct shmq_config config = {.slot_size = 32, .capacity = 16,
                                 .max_message_size = mixed ? LARGEST : 0};
    struct shmq_producer *owner;
    CHECK_RC(shmq_producer_open(&owner, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    shmq_producer_close(owner);
    memset(&p, 0, sizeof(p));
    memset(&wake, 0, sizeof(wake));
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
}

int main(void)
{
    test_start(120);
    run(test_name("tsan"));
    mixed = 1;
    run(test_name("tsan-mixed"));
    return 0;
}

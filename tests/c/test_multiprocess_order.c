/* One producer process, three consumer processes, 10^6 messages each: every
 * consumer receives every message, in order, byte for byte (the ring is large
 * enough that nobody is lapped, so lost must be 0). */
#include "helpers.h"
#include "../../csrc/tools/pattern.h"

#define MESSAGES 1000000u
#define CONSUMERS 3

static int consume(const char *name)
{
    struct shmq_consumer *c;
    if (shmq_consumer_open(&c, name, SHMQ_START_EARLIEST) < 0)
        return 2;
    unsigned char buf[256];
    for (uint64_t expect = 0; expect < MESSAGES; expect++) {
        size_t len;
        int rc = shmq_consumer_poll_wait(c, buf, sizeof(buf), &len, 10 * 1000000000LL);
        if (rc < 0) {
            fprintf(stderr, "consumer: message %llu: %s\n", (unsigned long long)expect, shmq_strerror(rc));
            return 3;
        }
        uint64_t i;
        if (len != 16 + expect % 200 || !shmq_pattern_check(buf, len, &i) || i != expect) {
            fprintf(stderr, "consumer: message %llu wrong (len %zu)\n", (unsigned long long)expect, len);
            return 4;
        }
    }
    int lost = shmq_consumer_lost(c) != 0;
    shmq_consumer_close(c);
    return lost ? 5 : 0;
}

int main(void)
{
    test_start(120);
    const char *name = test_name("order");
    struct shmq_producer *p = make_producer(name, 256, 1u << 20, 0);
    pid_t kids[CONSUMERS];
    for (int k = 0; k < CONSUMERS; k++) {
        kids[k] = fork();
        CHECK(kids[k] >= 0);
        if (kids[k] == 0)
            _exit(consume(name));
    }
    unsigned char msg[256];
    for (uint64_t i = 0; i < MESSAGES; i++) {
        size_t len = 16 + i % 200;
        shmq_pattern_fill(msg, len, i);
        CHECK_RC(shmq_producer_publish(p, msg, len, NULL), 0);
    }
    for (int k = 0; k < CONSUMERS; k++) {
        int status = wait_child(kids[k]);
        if (status != 0)
            fprintf(stderr, "consumer %d exited %d\n", k, status);
        CHECK(status == 0);
    }
    shmq_producer_close(p);
    return 0;
}

/* Blocking poll across processes: bursts separated by random gaps, so the
 * consumer falls asleep often and each burst must wake it. Every message
 * arrives, and no wait ends by timeout while messages are pending (a lost
 * wake-up would show up as exactly that). Several consumers sleep at once. */
#include "helpers.h"

#define MESSAGES 20000u
#define CONSUMERS 2

static int consume(const char *name)
{
    struct shmq_consumer *c;
    if (shmq_consumer_open(&c, name, SHMQ_START_EARLIEST) < 0)
        return 2;
    for (uint64_t expect = 0; expect < MESSAGES; expect++) {
        uint64_t got;
        /* The longest gap is 3 ms; 2 s without a wake-up means one was lost. */
        int rc = shmq_consumer_poll_wait(c, &got, 8, NULL, 2 * 1000000000LL);
        if (rc == -ETIMEDOUT) {
            fprintf(stderr, "timed out waiting for message %llu\n", (unsigned long long)expect);
            return 3;
        }
        if (rc != 0 || got != expect)
            return 4;
    }
    return shmq_consumer_lost(c) == 0 ? 0 : 5;
}

int main(void)
{
    test_start(120);
    const char *name = test_name("blocking");
    struct shmq_producer *p = make_producer(name, 8, 1u << 16, 0);
    pid_t kids[CONSUMERS];
    for (int k = 0; k < CONSUMERS; k++) {
        kids[k] = fork();
        CHECK(kids[k] >= 0);
        if (kids[k] == 0)
            _exit(consume(name));
    }
    uint64_t rng = 12345;
    for (uint64_t i = 0; i < MESSAGES;) {
        uint64_t burst = 1 + xorshift(&rng) % 64;
        for (uint64_t b = 0; b < burst && i < MESSAGES; b++, i++)
            CHECK_RC(shmq_producer_publish(p, &i, 8, NULL), 0);
        uint64_t gap = xorshift(&rng) % 4;
        if (gap)
            usleep((useconds_t)(gap * 1000 - 500)); /* 0.5 to 2.5 ms, or none */
    }
    for (int k = 0; k < CONSUMERS; k++)
        CHECK(wait_child(kids[k]) == 0);
    shmq_producer_close(p);
    return 0;
}

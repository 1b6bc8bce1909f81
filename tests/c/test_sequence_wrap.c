/* Sequences are free-running 64-bit numbers and the futex wake counter is a
 * 32-bit one; both must wrap. The queue starts 100 messages before 2^64 (so
 * the wake counter starts 100 before 2^32) and we publish across the wrap:
 * in-process with overrun (lost counts stay exact across the wrap), and to a
 * sleeping consumer in another process (every wake-up crosses 2^32). */
#include "helpers.h"

#define START (UINT64_MAX - 99)

static void overrun_counts_stay_exact_across_the_wrap(void)
{
    const char *name = test_name("wrap-lossy");
    struct shmq_producer *p = make_producer(name, 8, 8, START);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    CHECK(shmq_consumer_position(c) == START);
    uint64_t received = 0;
    for (uint64_t i = 0; i < 1000; i++) {
        uint64_t seq, v = START + i;
        CHECK_RC(shmq_producer_publish(p, &v, 8, &seq), 0);
        CHECK(seq == v);
        if (i % 3 == 0) { /* read one in three: lapped again and again */
            uint64_t got;
            if (shmq_consumer_poll(c, &got, 8, NULL) == 0) {
                CHECK(got == shmq_consumer_position(c) - 1);
                received++;
            }
        }
    }
    uint64_t got;
    while (shmq_consumer_poll(c, &got, 8, NULL) == 0) {
        CHECK(got == shmq_consumer_position(c) - 1);
        received++;
    }
    CHECK(shmq_consumer_position(c) == START + 1000); /* wrapped to 900 */
    CHECK(shmq_consumer_position(c) == 900);
    CHECK(received + shmq_consumer_lost(c) == 1000);
    CHECK(shmq_consumer_lost(c) > 0);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

static void sleeping_consumer_wakes_across_the_wrap(void)
{
    const char *name = test_name("wrap-futex");
    struct shmq_producer *p = make_producer(name, 8, 1024, START);
    pid_t kid = fork();
    CHECK(kid >= 0);
    if (kid == 0) {
        struct shmq_consumer *c;
        if (shmq_consumer_open(&c, name, SHMQ_START_EARLIEST) < 0)
            _exit(2);
        for (uint64_t i = 0; i < 300; i++) {
            uint64_t got;
            int rc = shmq_consumer_poll_wait(c, &got, 8, NULL, 5 * 1000000000LL);
            if (rc != 0 || got != START + i)
                _exit(3);
        }
        _exit(shmq_consumer_lost(c) == 0 ? 0 : 4);
    }
    for (uint64_t i = 0; i < 300; i++) {
        uint64_t v = START + i;
        usleep(300); /* let the consumer fall asleep before most messages */
        CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    }
    CHECK(wait_child(kid) == 0);
    shmq_producer_close(p);
}

int main(void)
{
    test_start(60);
    overrun_counts_stay_exact_across_the_wrap();
    sleeping_consumer_wakes_across_the_wrap();
    return 0;
}

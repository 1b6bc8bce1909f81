/* A blocking poll on an empty queue returns -ETIMEDOUT after its timeout,
 * never before, and not long after (the bound is generous: CI machines are
 * busy; the printed figures are the measurement); timeout 0 never waits. */
#include "helpers.h"

int main(void)
{
    test_start(30);
    const char *name = test_name("timeout");
    struct shmq_producer *p = make_producer(name, 8, 8, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    char buf[8];
    uint64_t t0 = now_ns();
    CHECK_RC(shmq_consumer_poll_wait(c, buf, 8, NULL, 0), SHMQ_EMPTY);
    CHECK(now_ns() - t0 < 100 * 1000000);
    const int64_t timeouts_ms[] = {1, 10, 50, 200};
    for (size_t i = 0; i < sizeof(timeouts_ms) / sizeof(timeouts_ms[0]); i++) {
        for (uint32_t spin = 0; spin <= 1000; spin += 1000) {
            shmq_consumer_set_spin(c, spin);
            int64_t want = timeouts_ms[i] * 1000000;
            t0 = now_ns();
            CHECK_RC(shmq_consumer_poll_wait(c, buf, 8, NULL, want), -ETIMEDOUT);
            int64_t took = (int64_t)(now_ns() - t0);
            printf("timeout %lld ms (spin %u): returned after %.3f ms\n", (long long)timeouts_ms[i],
                   spin, (double)took / 1e6);
            CHECK(took >= want);
            CHECK(took < want + 500 * 1000000);
        }
    }
    /* A message published before the deadline ends the wait with it. */
    CHECK_RC(shmq_producer_publish(p, "x", 1, NULL), 0);
    size_t len;
    CHECK_RC(shmq_consumer_poll_wait(c, buf, 8, &len, 1000000000), 0);
    CHECK(len == 1 && buf[0] == 'x');
    shmq_consumer_close(c);
    shmq_producer_close(p);
    return 0;
}

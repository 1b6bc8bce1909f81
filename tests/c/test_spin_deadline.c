/*
 * Waiting ends when it should, whatever the settings or the ring says:
 *   - with the spin budget set to UINT32_MAX (clamped to SHMQ_SPIN_MAX), a
 *     poll_wait with a 10 ms (or 1 ms) timeout returns -ETIMEDOUT within
 *     100 ms, and a 1 ms one well before a whole spin would have ended:
 *     spinning checks the deadline;
 *   - a ring whose stamps all read 2^62 (garbage, written through a
 *     read-write mapping) makes a poll return SHMQ_CORRUPT instead of
 *     looping, and so does poll_wait(-1), at once;
 *   - start=earliest on a full 16-slot ring: the publish right after the
 *     open costs nothing, and the consumer receives exactly capacity
 *     messages (the 15 old ones still intact and the new one).
 */
#include "adversary.h"

/* How long a whole spin budget of SHMQ_SPIN_MAX takes here: a child spins
 * in poll_wait, and the spin ends when it raises the wake flag to sleep. */
static uint64_t full_spin_ns(const char *name, struct shmq_producer *p)
{
    int ready[2];
    CHECK(pipe(ready) == 0);
    atomic_store(&p->consumers.wake->wake_flag, 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        struct shmq_consumer *c;
        if (shmq_consumer_open(&c, name, SHMQ_START_LATEST) != 0)
            _exit(2);
        shmq_consumer_set_spin(c, SHMQ_SPIN_MAX);
        uint64_t v;
        signal_fd(ready[1]);
        _exit(shmq_consumer_poll_wait(c, &v, sizeof(v), NULL, 5000000000LL) == 0 ? 0 : 3);
    }
    CHECK(wait_fd(ready[0]));
    uint64_t t0 = now_ns();
    while (atomic_load(&p->consumers.wake->wake_flag) == 0)
        CHECK(now_ns() - t0 < 4000000000ull);
    uint64_t took = now_ns() - t0, v = 0;
    CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), 0);
    CHECK(wait_child(kid) == 0);
    close(ready[0]);
    close(ready[1]);
    return took;
}

static void spinning_still_honours_the_deadline(void)
{
    const char *name = test_name("spin");
    struct shmq_producer *p = make_producer(name, 8, 16, 0);
    uint64_t spin_ns = full_spin_ns(name, p);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    shmq_consumer_set_spin(c, UINT32_MAX);
    const int64_t timeouts_ms[] = {10, 1, 10, 1, 10, 1};
    uint64_t best_1ms = UINT64_MAX;
    for (size_t i = 0; i < sizeof(timeouts_ms) / sizeof(timeouts_ms[0]); i++) {
        uint64_t v, t0 = now_ns();
        CHECK_RC(shmq_consumer_poll_wait(c, &v, sizeof(v), NULL, timeouts_ms[i] * 1000000), -ETIMEDOUT);
        uint64_t took = now_ns() - t0;
        printf("spin UINT32_MAX, timeout %lld ms: -ETIMEDOUT after %.2f ms\n",
               (long long)timeouts_ms[i], (double)took / 1e6);
        CHECK(took >= (uint64_t)timeouts_ms[i] * 1000000);
        CHECK(took < 100000000);
        if (timeouts_ms[i] == 1 && took < best_1ms)
            best_1ms = took;
    }
    /* The clamp alone would keep it under 100 ms; that the spin checks the
     * deadline shows when a whole spin takes much longer than 1 ms: the
     * best of three 1 ms waits must end well before a whole spin would. */
    printf("a whole spin of SHMQ_SPIN_MAX takes %.2f ms here; best 1 ms wait: %.2f ms\n",
           (double)spin_ns / 1e6, (double)best_1ms / 1e6);
    if (spin_ns >= 4000000)
        CHECK(best_1ms < spin_ns / 2);
    /* And a message that comes during the spin still ends it. */
    uint64_t v = 7, got;
    CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), 0);
    CHECK_RC(shmq_consumer_poll_wait(c, &got, sizeof(got), NULL, 10000000), 0);
    CHECK(got == 7);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

static void garbage_stamps_are_reported_not_looped_on(void)
{
    const char *name = test_name("garbage");
    struct shmq_producer *p = make_producer(name, 8, 16, 0);
    for (uint64_t i = 0; i < 20; i++)
        CHECK_RC(shmq_producer_publish(p, &i, sizeof(i), NULL), 0);
    struct shmq_consumer *c, *w;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    CHECK_RC(shmq_consumer_open(&w, name, SHMQ_START_LATEST), 0);
    /* Through a read-write mapping of our own, as anyone able to write the
     * segment could. */
    struct shmq_region *rw;
    CHECK_RC(shmq_region_open(&rw, name, SHMQ_REGION_READ_WRITE), 0);
    unsigned char *slots = (unsigned char *)shmq_region_base(rw) + p->geometry.index_offset;
    for (uint64_t s = 0; s < p->geometry.capacity; s++)
        atomic_store(&shmq_record_at(slots, &p->geometry, s)->stamp, UINT64_C(1) << 62);
    uint64_t got, t0 = now_ns();
    CHECK_RC(shmq_consumer_poll(c, &got, sizeof(got), NULL), SHMQ_CORRUPT);
    CHECK_RC(shmq_consumer_poll(c, &got, sizeof(got), NULL), SHMQ_CORRUPT);
    CHECK_RC(shmq_consumer_poll_wait(c, &got, sizeof(got), NULL, -1), SHMQ_CORRUPT);
    /* One that was waiting at the head when the garbage came. */
    CHECK_RC(shmq_consumer_poll_wait(w, &got, sizeof(got), NULL, -1), SHMQ_CORRUPT);
    uint64_t took = now_ns() - t0;
    printf("stamps 2^62: SHMQ_CORRUPT from poll and poll_wait(-1) in %.2f ms\n", (double)took / 1e6);
    CHECK(took < 1000000000ull);
    shmq_region_close(rw);
    shmq_consumer_close(w);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

static void earliest_on_a_full_ring_loses_nothing_to_the_next_publish(void)
{
    const char *name = test_name("earliest");
    struct shmq_producer *p = make_producer(name, 8, 16, 0);
    for (uint64_t i = 0; i < 40; i++)
        CHECK_RC(shmq_producer_publish(p, &i, sizeof(i), NULL), 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    CHECK(shmq_consumer_position(c) == 40 - 16 + 1);
    uint64_t v = 40, got, count = 0;
    CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), 0);
    int rc;
    while ((rc = shmq_consumer_poll(c, &got, sizeof(got), NULL)) == 0) {
        CHECK(got == 40 - 16 + 1 + count);
        count++;
    }
    CHECK_RC(rc, SHMQ_EMPTY);
    printf("earliest on a full 16-slot ring, one publish later: %llu received, %llu lost\n",
           (unsigned long long)count, (unsigned long long)shmq_consumer_lost(c));
    CHECK(count == 16);
    CHECK(shmq_consumer_lost(c) == 0);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

int main(void)
{
    test_start(30);
    spinning_still_honours_the_deadline();
    garbage_stamps_are_reported_not_looped_on();
    earliest_on_a_full_ring_loses_nothing_to_the_next_publish();
    return 0;
}

/*
 * The end of a stream, and who may end or remove a queue:
 *   - shmq_producer_close ends the stream: a consumer asleep in
 *     poll_wait(-1) first gets every message published before the close,
 *     then SHMQ_ENDED, promptly (the close wakes it), and
 *     shmq_consumer_ended() says 1;
 *   - a producer that reopens the queue clears the mark;
 *   - a producer killed with SIGKILL does not end the stream, and
 *     shmq_consumer_producer_alive() goes from 1 to 0 (a lock, no pids);
 *   - shmq_unlink refuses (-EBUSY) while a live producer holds the queue,
 *     removes it with SHMQ_UNLINK_FORCE (shmq_consumer_unlinked() says 1 and
 *     both objects are gone), and removes it plainly once the producer died;
 *   - a child forked from a producer process that closes its inherited
 *     handle (opened with SHMQ_UNLINK_ON_CLOSE) neither ends the stream nor
 *     unlinks the queue nor frees the producer lock; the parent publishes on.
 * "Is it ended" is asked with a blocking poll of 1 ms: whether a plain poll
 * reports the end is not what this test is about.
 */
#include "adversary.h"

#define ONE_MS 1000000LL

/* 1 if the queue's two objects exist, 0 if neither, -1 if only one. */
static int objects_exist(const char *name)
{
    char consumers[SHMQ_NAME_MAX + 16];
    snprintf(consumers, sizeof(consumers), "%s%s", name, SHMQ_CONSUMERS_SUFFIX);
    int ring = shmq_region_exists(name), state = shmq_region_exists(consumers);
    return ring == state ? ring : -1;
}

/* What a short blocking poll says now, when there is nothing to read. */
static int nothing_left(struct shmq_consumer *c)
{
    uint64_t v;
    return shmq_consumer_poll_wait(c, &v, sizeof(v), NULL, ONE_MS);
}

#define BEFORE_CLOSE 50u

static void close_ends_the_stream_after_the_last_message(void)
{
    const char *name = test_name("eos");
    struct shmq_producer *p = make_producer(name, 8, 1024, 0);
    uint64_t *closed_at = shared_alloc(sizeof(uint64_t));
    int ready[2], results[2];
    CHECK(pipe(ready) == 0 && pipe(results) == 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        struct shmq_consumer *c;
        if (shmq_consumer_open(&c, name, SHMQ_START_LATEST) != 0)
            _exit(2);
        signal_fd(ready[1]);
        uint64_t got = 0, v;
        int rc;
        while ((rc = shmq_consumer_poll_wait(c, &v, sizeof(v), NULL, -1)) == 0) {
            if (v != got)
                _exit(3);
            got++;
        }
        uint64_t latency = now_ns() - atomic_load((_Atomic uint64_t *)closed_at);
        if (rc != SHMQ_ENDED || got != BEFORE_CLOSE || shmq_consumer_ended(c) != 1)
            _exit(4);
        /* It stays ended, and a blocking poll does not block on it. */
        uint64_t t0 = now_ns();
        if (shmq_consumer_poll_wait(c, &v, sizeof(v), NULL, -1) != SHMQ_ENDED ||
            now_ns() - t0 > 1000000000ull)
            _exit(5);
        _exit(write(results[1], &latency, sizeof(latency)) == (ssize_t)sizeof(latency) ? 0 : 6);
    }
    CHECK(wait_fd(ready[0]));
    CHECK(wait_asleep(p, &kid, 1));
    for (uint64_t i = 0; i < BEFORE_CLOSE; i++)
        CHECK_RC(shmq_producer_publish(p, &i, sizeof(i), NULL), 0);
    /* The close must wake sleepers, not leave them to their 100 ms slice:
     * it bumps the futex word they sleep on (wake_sleepers). */
    struct shmq_consumer *watch;
    CHECK_RC(shmq_consumer_open(&watch, name, SHMQ_START_LATEST), 0);
    uint32_t word = atomic_load(&watch->control->futex_word);
    atomic_store((_Atomic uint64_t *)closed_at, now_ns());
    shmq_producer_close(p);
    CHECK(atomic_load(&watch->control->futex_word) == word + 1);
    shmq_consumer_close(watch);
    CHECK(wait_child(kid) == 0);
    uint64_t latency;
    CHECK(read(results[0], &latency, sizeof(latency)) == (ssize_t)sizeof(latency));
    printf("asleep in poll_wait(-1): all %u messages, then SHMQ_ENDED %.2f ms after the close\n",
           BEFORE_CLOSE, (double)latency / 1e6);
    CHECK(latency < 1000000000ull);

    /* Reopening clears the mark: empty again, not ended. */
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    CHECK(shmq_consumer_ended(c) == 1);
    CHECK_RC(nothing_left(c), SHMQ_ENDED);
    CHECK_RC(shmq_producer_open(&p, name, NULL, 0), 0);
    CHECK(shmq_consumer_ended(c) == 0);
    uint64_t v;
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), NULL), SHMQ_EMPTY);
    CHECK_RC(nothing_left(c), -ETIMEDOUT);
    shmq_consumer_close(c);
    shmq_producer_close(p);
    munmap(closed_at, sizeof(uint64_t));
    close(ready[0]), close(ready[1]), close(results[0]), close(results[1]);
}

static void killed_producer_leaves_the_stream_open(void)
{
    const char *name = test_name("eos-kill");
    shmq_producer_close(make_producer(name, 8, 64, 0));
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    CHECK(shmq_consumer_producer_alive(c) == 0);
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        struct shmq_producer *p;
        if (shmq_producer_open(&p, name, NULL, 0) != 0)
            _exit(2);
        for (uint64_t i = 0; i < 5; i++)
            shmq_producer_publish(p, &i, sizeof(i), NULL);
        signal_fd(ready[1]);
        pause();
        _exit(0);
    }
    CHECK(wait_fd(ready[0]));
    CHECK(shmq_consumer_producer_alive(c) == 1);
    CHECK(shmq_consumer_ended(c) == 0);
    CHECK_RC(shmq_unlink(name, 0), -EBUSY);
    kill_and_reap(kid);
    CHECK(shmq_consumer_producer_alive(c) == 0);
    CHECK(shmq_consumer_ended(c) == 0);
    for (uint64_t i = 0; i < 5; i++) {
        uint64_t v;
        CHECK_RC(shmq_consumer_poll_wait(c, &v, sizeof(v), NULL, ONE_MS), 0);
        CHECK(v == i);
    }
    CHECK_RC(nothing_left(c), -ETIMEDOUT); /* not SHMQ_ENDED */
    /* Nobody holds it now: a plain unlink removes it. */
    CHECK(objects_exist(name) == 1);
    CHECK_RC(shmq_unlink(name, 0), 0);
    CHECK(objects_exist(name) == 0);
    CHECK(shmq_consumer_unlinked(c) == 1);
    shmq_consumer_close(c);
    close(ready[0]), close(ready[1]);
}

static void unlink_refuses_a_live_producer_unless_forced(void)
{
    const char *name = test_name("eos-unlink");
    struct shmq_producer *p = make_producer(name, 8, 64, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    CHECK_RC(shmq_unlink(name, 0), -EBUSY);
    CHECK(objects_exist(name) == 1);
    CHECK(shmq_consumer_unlinked(c) == 0);
    CHECK_RC(shmq_unlink(name, SHMQ_UNLINK_FORCE), 0);
    CHECK(objects_exist(name) == 0);
    CHECK(shmq_consumer_unlinked(c) == 1);
    CHECK_RC(shmq_unlink(name, SHMQ_UNLINK_FORCE), -ENOENT);
    /* Open handles keep working. */
    uint64_t v = 42, got;
    CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), 0);
    CHECK_RC(shmq_consumer_poll(c, &got, sizeof(got), NULL), 0);
    CHECK(got == 42);
    CHECK(shmq_consumer_producer_alive(c) == 1);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

static void forked_child_closing_its_copy_changes_nothing(void)
{
    const char *name = test_name("eos-fork");
    struct shmq_config config = {.slot_size = 8, .capacity = 64};
    struct shmq_producer *p;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL | SHMQ_UNLINK_ON_CLOSE), 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    uint64_t v = 1, got;
    CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        uint64_t w = 99;
        int refused = shmq_producer_publish(p, &w, sizeof(w), NULL) == -ECHILD;
        shmq_producer_close(p);
        _exit(refused ? 0 : 2);
    }
    CHECK(wait_child(kid) == 0);
    CHECK(objects_exist(name) == 1);
    CHECK(shmq_consumer_unlinked(c) == 0);
    CHECK(shmq_consumer_ended(c) == 0);
    CHECK(shmq_consumer_producer_alive(c) == 1);
    CHECK_RC(shmq_unlink(name, 0), -EBUSY);
    struct shmq_producer *second;
    CHECK_RC(shmq_producer_open(&second, name, NULL, 0), -EBUSY);
    CHECK_RC(shmq_consumer_poll(c, &got, sizeof(got), NULL), 0);
    CHECK(got == 1);
    for (v = 2; v < 100; v++) {
        CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), 0);
        CHECK_RC(shmq_consumer_poll(c, &got, sizeof(got), NULL), 0);
        CHECK(got == v);
    }
    CHECK_RC(nothing_left(c), -ETIMEDOUT);
    /* The parent's own close does both. */
    shmq_producer_close(p);
    CHECK(objects_exist(name) == 0);
    CHECK(shmq_consumer_unlinked(c) == 1);
    CHECK(shmq_consumer_ended(c) == 1);
    CHECK_RC(nothing_left(c), SHMQ_ENDED);
    shmq_consumer_close(c);
}

int main(void)
{
    test_start(30);
    setvbuf(stdout, NULL, _IONBF, 0);
    close_ends_the_stream_after_the_last_message();
    killed_producer_leaves_the_stream_open();
    unlink_refuses_a_live_producer_unless_forced();
    forked_child_closing_its_copy_changes_nothing();
    return 0;
}

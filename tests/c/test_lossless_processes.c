/*
 * Lossless mode across processes (the one-process cases are in
 * test_lossless_basics.c):
 *
 *  - every_registered_consumer_gets_every_message: 10^7 self-checking
 *    messages through a 256-slot ring to three registered consumers in
 *    their own processes, one of which sleeps at random moments. Each one
 *    gets all of them, in order (sequence + 1 each time), none torn
 *    (msg_check), the sum of their checksums equal to the producer's, and
 *    lost == 0.
 *  - killed_consumer_frees_a_blocked_producer: 100 rounds of a registered
 *    consumer that never reads, a producer blocked on the full ring, and
 *    kill -9 of the consumer from another thread: the producer's next
 *    publish succeeds less than 100 ms after the kill (it probes the
 *    entries' locks every 10 ms). Prints the largest delay seen.
 *  - killed_producer_neither_tears_nor_duplicates: producers killed with
 *    kill -9 at random moments while they publish (or wait for room), each
 *    followed by a new one that continues the sequence. The registered
 *    consumers see every sequence exactly once, each message whole.
 *  - entries_of_dead_consumers_are_freed: with every entry held by live
 *    processes, another consumer gets -EUSERS; kill -9 of one holder frees
 *    its entry.
 */
#include "adversary.h"

#include <pthread.h>

#define MAX_LEN 64

static struct shmq_producer *lossless_create(const char *name, uint32_t slot_size,
                                             uint32_t capacity, uint32_t max_consumers)
{
    struct shmq_config config = {.slot_size = slot_size, .capacity = capacity,
                                 .max_consumers = max_consumers, .delivery = SHMQ_LOSSLESS};
    struct shmq_producer *p = NULL;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    return p;
}

/* ------------------------------------------------------------ every message */

struct reader_result {
    uint64_t received, lost, bad, out_of_order, sum, sleeps;
    int done;
};

/* Reads `count` messages from a registered consumer, checking each. */
static void read_all(const char *name, uint64_t count, int sleeper, int ready_fd,
                     struct reader_result *r, uint64_t seed)
{
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    CHECK(shmq_consumer_registered(c) == 1);
    shmq_consumer_set_spin(c, 2000);
    signal_fd(ready_fd);
    unsigned char buf[MAX_LEN];
    uint64_t expect = 0, rng = seed;
    while (r->received + r->bad < count) {
        size_t len;
        int rc = shmq_consumer_poll_wait(c, buf, sizeof(buf), &len, 10ll * 1000 * 1000 * 1000);
        if (rc == SHMQ_CORRUPT) {
            r->bad++;
            continue;
        }
        CHECK_RC(rc, 0);
        uint64_t seq, inc, sum;
        if (!msg_check(buf, len, MAX_LEN, &seq, &inc, &sum)) {
            r->bad++;
            continue;
        }
        if (seq != expect)
            r->out_of_order++;
        expect = seq + 1;
        r->received++;
        r->sum += sum;
        if (sleeper && (xorshift(&rng) & 0xffff) == 0) {
            sleep_ns(xorshift(&rng) % (3 * 1000 * 1000)); /* up to 3 ms */
            r->sleeps++;
        }
    }
    r->lost = shmq_consumer_lost(c);
    r->done = 1;
    shmq_consumer_close(c);
}

static void every_registered_consumer_gets_every_message(void)
{
    const uint64_t count = 10 * 1000 * 1000;
    enum { READERS = 3 };
    const char *name = test_name("ll-every");
    struct shmq_producer *p = lossless_create(name, MAX_LEN, 256, 8);
    struct reader_result *results = shared_alloc(sizeof(struct reader_result) * READERS);
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t kids[READERS];
    for (int k = 0; k < READERS; k++) {
        kids[k] = fork_child();
        if (kids[k] == 0) {
            close(ready[0]);
            read_all(name, count, k == 0, ready[1], &results[k], 0x1234567ull + (uint64_t)k);
            _exit(0);
        }
    }
    close(ready[1]);
    for (int k = 0; k < READERS; k++)
        CHECK(wait_fd(ready[0]));
    unsigned char msg[MAX_LEN];
    uint64_t sum = 0, t0 = now_ns();
    for (uint64_t i = 0; i < count; i++) {
        size_t len = msg_make(msg, MAX_LEN, i, 0);
        uint64_t seq;
        CHECK_RC(shmq_producer_publish_wait(p, msg, len, &seq, -1), 0);
        CHECK(seq == i);
        uint64_t s;
        memcpy(&s, msg + len - 8, 8);
        sum += s;
    }
    double seconds = (double)(now_ns() - t0) / 1e9;
    shmq_producer_close(p);
    for (int k = 0; k < READERS; k++) {
        CHECK(wait_child(kids[k]) == 0);
        struct reader_result *r = &results[k];
        fprintf(stderr, "reader %d: received=%llu lost=%llu bad=%llu out_of_order=%llu sleeps=%llu\n",
                k, (unsigned long long)r->received, (unsigned long long)r->lost,
                (unsigned long long)r->bad, (unsigned long long)r->out_of_order,
                (unsigned long long)r->sleeps);
        CHECK(r->done && r->received == count && r->lost == 0 && r->bad == 0 &&
              r->out_of_order == 0 && r->sum == sum);
    }
    CHECK(results[0].sleeps > 0);
    fprintf(stderr, "every message: %llu messages to %d registered consumers in %.2f s (%.0f/s)\n",
            (unsigned long long)count, READERS, seconds, (double)count / seconds);
    close(ready[0]);
}

/* ------------------------------------------------- killed consumer, resume */

struct killer {
    pid_t victim;
    uint64_t delay_ns;
    uint64_t killed_at;
};

static void *kill_later(void *arg)
{
    struct killer *k = arg;
    sleep_ns(k->delay_ns);
    k->killed_at = now_ns();
    CHECK(kill(k->victim, SIGKILL) == 0);
    return NULL;
}

static void killed_consumer_frees_a_blocked_producer(void)
{
    const int rounds = 100;
    const char *name = test_name("ll-kill-c");
    struct shmq_producer *p = lossless_create(name, 16, 64, 4);
    uint64_t rng = 0xfeedbeefull, worst = 0, total = 0, v = 0;
    for (int round = 0; round < rounds; round++) {
        int ready[2];
        CHECK(pipe(ready) == 0);
        pid_t kid = fork_child();
        if (kid == 0) {
            struct shmq_consumer *c;
            CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
            CHECK(shmq_consumer_registered(c) == 1);
            signal_fd(ready[1]);
            for (;;)
                pause(); /* registered, and never reads */
        }
        close(ready[1]);
        CHECK(wait_fd(ready[0]));
        close(ready[0]);
        /* Fill the ring: the consumer reads nothing, so 64 messages fit. */
        int filled = 0;
        while (filled <= 64 && shmq_producer_publish(p, &v, 8, NULL) == 0)
            v++, filled++;
        if (filled != 64)
            fprintf(stderr, "round %d: %d messages fitted, not 64\n", round, filled);
        CHECK(filled == 64);
        CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), SHMQ_FULL);
        struct killer k = {.victim = kid, .delay_ns = 5000000 + xorshift(&rng) % 20000000};
        pthread_t thread;
        CHECK(pthread_create(&thread, NULL, kill_later, &k) == 0);
        CHECK_RC(shmq_producer_publish_wait(p, &v, 8, NULL, -1), 0);
        uint64_t resumed_at = now_ns();
        v++;
        CHECK(pthread_join(thread, NULL) == 0);
        CHECK(resumed_at > k.killed_at); /* it really was blocked until the kill */
        uint64_t delay = resumed_at - k.killed_at;
        total += delay;
        if (delay > worst)
            worst = delay;
        if (delay >= 100 * 1000 * 1000)
            fprintf(stderr, "round %d: resumed %.1f ms after the kill\n", round, delay / 1e6);
        CHECK(delay < 100 * 1000 * 1000);
        CHECK(wait_child(kid) == 128 + SIGKILL);
    }
    fprintf(stderr, "killed consumer: producer resumed after %.1f ms at most, %.1f ms on average, "
            "over %d rounds\n", worst / 1e6, total / 1e6 / rounds, rounds);
    shmq_producer_close(p);
}

/* A consumer killed while the producer waited for it leaves its entry
 * registered; the producer then stops waiting for it. A new consumer that
 * claims that entry must be waited for again (backpressure.c, DEATH: "a
 * consumer that claims the entry again (with a new claim counter) is waited
 * for again"), or it is lapped, and loses messages, on a lossless queue. */
static void reclaimed_entry_of_a_killed_consumer_is_waited_for(void)
{
    const char *name = test_name("ll-reclaim");
    struct shmq_producer *p = lossless_create(name, 16, 16, 1);
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        struct shmq_consumer *c;
        CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
        signal_fd(ready[1]);
        for (;;)
            pause();
    }
    close(ready[1]);
    CHECK(wait_fd(ready[0]));
    close(ready[0]);
    uint64_t v = 0;
    for (int i = 0; i < 16; i++, v++)
        CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    kill_and_reap(kid);
    /* Blocked on the dead consumer: it finds it dead and goes on. */
    CHECK_RC(shmq_producer_publish_wait(p, &v, 8, NULL, 5ll * 1000 * 1000 * 1000), 0);
    v++;
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0); /* claims the same entry */
    CHECK(shmq_consumer_entry(c) == 0 && shmq_consumer_registered(c) == 1);
    int fitted = 0;
    while (fitted <= 16 && shmq_producer_publish(p, &v, 8, NULL) == 0)
        v++, fitted++;
    if (fitted != 16)
        fprintf(stderr, "reclaimed entry: %d messages fitted ahead of the new consumer, not 16\n",
                fitted);
    CHECK(fitted == 16);
    uint64_t got;
    CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), 0);
    CHECK(shmq_consumer_lost(c) == 0);
    /* Closed cleanly, then claimed once more: waited for again too. */
    shmq_consumer_close(c);
    CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    v++;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    CHECK(shmq_consumer_entry(c) == 0 && shmq_consumer_registered(c) == 1);
    fitted = 0;
    while (fitted <= 16 && shmq_producer_publish(p, &v, 8, NULL) == 0)
        v++, fitted++;
    if (fitted != 16)
        fprintf(stderr, "entry claimed after a clean close: %d messages fitted, not 16\n", fitted);
    CHECK(fitted == 16);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

/* ----------------------------------------------- killed producer, restarted */

#define BIG_LEN 1024

struct checker_result {
    uint64_t received, bad, duplicated, skipped, lost, incarnations;
    int done;
};

static void check_sequence(const char *name, uint64_t count, int ready_fd, struct checker_result *r)
{
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    CHECK(shmq_consumer_registered(c) == 1);
    signal_fd(ready_fd);
    unsigned char buf[BIG_LEN];
    uint64_t expect = 0, last_incarnation = UINT64_MAX;
    while (expect < count) {
        size_t len;
        int rc = shmq_consumer_poll_wait(c, buf, sizeof(buf), &len, 100 * 1000 * 1000);
        if (rc == -ETIMEDOUT || rc == SHMQ_ENDED)
            continue; /* between producers */
        if (rc == SHMQ_CORRUPT) {
            r->bad++;
            continue;
        }
        CHECK_RC(rc, 0);
        uint64_t seq, inc, sum;
        if (!msg_check(buf, len, BIG_LEN, &seq, &inc, &sum)) {
            r->bad++;
            continue;
        }
        CHECK(shmq_consumer_position(c) == seq + 1); /* the payload names its own slot */
        if (seq < expect)
            r->duplicated++;
        else if (seq > expect)
            r->skipped += seq - expect;
        if (inc != last_incarnation)
            r->incarnations++, last_incarnation = inc;
        expect = seq + 1;
        r->received++;
    }
    r->lost = shmq_consumer_lost(c);
    r->done = 1;
    shmq_consumer_close(c);
}

/* One producer's life: attach, continue the sequence up to `count`. */
static void produce_until(const char *name, uint64_t count, uint64_t incarnation)
{
    struct shmq_config config = {.delivery = SHMQ_LOSSLESS};
    struct shmq_producer *p;
    int rc;
    /* The killed one's lock is gone with it; the kernel frees it on exit. */
    while ((rc = shmq_producer_open(&p, name, &config, 0)) == -EBUSY)
        sleep_ns(100000);
    CHECK_RC(rc, 0);
    unsigned char msg[BIG_LEN];
    for (uint64_t seq = shmq_producer_next_sequence(p); seq < count; seq++) {
        size_t len = msg_make(msg, BIG_LEN, seq, incarnation);
        uint64_t got;
        CHECK_RC(shmq_producer_publish_wait(p, msg, len, &got, -1), 0);
        CHECK(got == seq);
    }
    shmq_producer_close(p);
}

static void killed_producer_neither_tears_nor_duplicates(void)
{
    const uint64_t count = 400000;
    const int kills = 40;
    enum { CHECKERS = 2 };
    const char *name = test_name("ll-kill-p");
    shmq_producer_close(lossless_create(name, BIG_LEN, 64, 4));
    struct checker_result *results = shared_alloc(sizeof(struct checker_result) * CHECKERS);
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t kids[CHECKERS];
    for (int k = 0; k < CHECKERS; k++) {
        kids[k] = fork_child();
        if (kids[k] == 0) {
            close(ready[0]);
            check_sequence(name, count, ready[1], &results[k]);
            _exit(0);
        }
    }
    close(ready[1]);
    for (int k = 0; k < CHECKERS; k++)
        CHECK(wait_fd(ready[0]));
    close(ready[0]);
    uint64_t rng = 0xabcdef12345ull;
    int killed = 0, incarnation = 1;
    for (; killed < kills; incarnation++) {
        pid_t producer = fork_child();
        if (producer == 0) {
            produce_until(name, count, (uint64_t)incarnation);
            _exit(0);
        }
        sleep_ns(500000 + xorshift(&rng) % 4000000);
        kill(producer, SIGKILL);
        int status = wait_child(producer);
        if (status == 0)
            break; /* it finished first: count was too small for the kills */
        CHECK(status == 128 + SIGKILL);
        killed++;
    }
    pid_t last = fork_child();
    if (last == 0) {
        produce_until(name, count, (uint64_t)incarnation);
        _exit(0);
    }
    CHECK(wait_child(last) == 0);
    for (int k = 0; k < CHECKERS; k++) {
        CHECK(wait_child(kids[k]) == 0);
        struct checker_result *r = &results[k];
        fprintf(stderr, "checker %d: received=%llu bad=%llu duplicated=%llu skipped=%llu lost=%llu "
                "incarnations=%llu\n", k, (unsigned long long)r->received,
                (unsigned long long)r->bad, (unsigned long long)r->duplicated,
                (unsigned long long)r->skipped, (unsigned long long)r->lost,
                (unsigned long long)r->incarnations);
        CHECK(r->done && r->received == count && r->bad == 0 && r->duplicated == 0 &&
              r->skipped == 0 && r->lost == 0);
    }
    fprintf(stderr, "killed producer: %d kills, %d producers, %llu messages\n", killed,
            incarnation, (unsigned long long)count);
    CHECK(killed >= kills / 2);
}

/* ---------------------------------------------------------- entry table */

static void entries_of_dead_consumers_are_freed(void)
{
    const char *name = test_name("ll-entries");
    struct shmq_producer *p = lossless_create(name, 16, 16, 2);
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        int ready[2];
        CHECK(pipe(ready) == 0);
        kids[k] = fork_child();
        if (kids[k] == 0) {
            struct shmq_consumer *c;
            CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
            signal_fd(ready[1]);
            for (;;)
                pause();
        }
        close(ready[1]);
        CHECK(wait_fd(ready[0]));
        close(ready[0]);
    }
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), -EUSERS);
    struct shmq_consumer_options look = {.no_entry = 1};
    CHECK_RC(shmq_consumer_open_with(&c, name, &look), 0); /* an observer needs no entry */
    CHECK(shmq_consumer_registered(c) == 0);
    shmq_consumer_close(c);
    struct shmq_consumer_info info[4];
    CHECK(shmq_producer_consumers(p, info, 4) == 2);
    kill_and_reap(kids[0]);
    CHECK(shmq_producer_consumers(p, info, 4) == 1);
    CHECK(info[0].pid == (uint32_t)kids[1]);
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    CHECK(shmq_consumer_registered(c) == 1);
    shmq_consumer_close(c);
    kill_and_reap(kids[1]);
    shmq_producer_close(p);
}

int main(void)
{
    test_start(600);
    reclaimed_entry_of_a_killed_consumer_is_waited_for();
    entries_of_dead_consumers_are_freed();
    killed_consumer_frees_a_blocked_producer();
    killed_producer_neither_tears_nor_duplicates();
    every_registered_consumer_gets_every_message();
    return 0;
}

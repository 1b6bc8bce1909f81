/*
 * A producer killed with SIGKILL at any moment never makes a sequence number
 * mean two messages, and its successor continues the sequence.
 *
 * Rounds: a producer process attaches and publishes self-checking messages
 * (adversary.h: sequence, incarnation, PRNG bytes, checksum) at full speed,
 * one at a time in even rounds and in batches of 1..64 in odd ones, into a
 * 64-slot ring, until it is killed after a random delay; the next round's
 * producer (a new process, a new incarnation) takes over, and must start
 * past everything its predecessor published, by no more than the publish
 * it was killed in. Every tenth round is followed by one whose producer is
 * killed at once, often inside shmq_producer_open. The sequence starts just
 * before 2^64, so it wraps.
 *
 * Three consumer processes read throughout with shmq_consumer_poll_wait and
 * stall now and then, so they are overrun often. Each checks every message
 * whole, sequences strictly increasing and equal to its own position, every
 * gap counted as lost, incarnations never going backwards, and records
 * sequence -> (incarnation, checksum) in a table shared by all: a sequence
 * delivered to two consumers with two payloads is a conflict. At the end,
 * received + lost == last position - start position for each of them.
 *
 * Then, deterministically, for every k in 1..64: a producer killed after
 * stamping k messages of a batch (and half-way through the next one) but
 * before storing head, crafted through its read-write mapping. A consumer
 * that read those k messages before the kill never sees their numbers again:
 * the new producer's next_sequence is next+k, and a consumer that reads them
 * only after the kill gets the same bytes.
 */
#include "adversary.h"

#define SLOT 64u
#define CAPACITY 64u
#define ROUNDS 200
#define EARLY_ROUNDS (ROUNDS / 10)
#define INCARNATIONS (ROUNDS + EARLY_ROUNDS + 2)
#define CONSUMERS 3
#define FIRST (UINT64_MAX - 20000)
#define TABLE_SIZE (1u << 22)
/* Producers stop publishing here, so the table bounds every sequence. */
#define SEQUENCE_LIMIT (TABLE_SIZE - 4 * CAPACITY)
#define NOT_OPENED UINT64_MAX

struct shared {
    _Atomic uint32_t done; /* the last producer is closing: SHMQ_ENDED is final */
    /* per incarnation: next_sequence right after open, and after the last
     * publish that returned */
    _Atomic uint64_t opened_at[INCARNATIONS];
    _Atomic uint64_t published_to[INCARNATIONS];
};

struct tally {
    uint64_t received, lost, start, end, bad_payload, bad_order, bad_gap, bad_incarnation,
        conflicts, bad_rc, overruns;
    int last_bad_rc;
};

static struct shared *sh;
static _Atomic uint64_t *table; /* sequence - FIRST -> incarnation << 48 | checksum bits */

static void run_producer(const char *name, uint64_t incarnation, int batches, int ready_fd)
{
    struct shmq_producer *p;
    int rc = shmq_producer_open(&p, name, NULL, 0);
    if (rc < 0) {
        fprintf(stderr, "incarnation %llu: open: %s\n", (unsigned long long)incarnation,
                shmq_strerror(rc));
        _exit(2);
    }
    atomic_store(&sh->published_to[incarnation], shmq_producer_next_sequence(p));
    atomic_store(&sh->opened_at[incarnation], shmq_producer_next_sequence(p));
    signal_fd(ready_fd);
    static unsigned char msgs[CAPACITY][SLOT];
    const void *ptrs[CAPACITY];
    size_t lens[CAPACITY];
    uint64_t rng = incarnation * 7919 + 1;
    for (;;) {
        uint64_t next = shmq_producer_next_sequence(p);
        if (next - FIRST >= SEQUENCE_LIMIT)
            pause(); /* the table is full; wait to be killed */
        if (!batches) {
            size_t len = msg_make(msgs[0], SLOT, next, incarnation);
            rc = shmq_producer_publish(p, msgs[0], len, NULL);
        } else {
            size_t n = 1 + (size_t)(xorshift(&rng) % CAPACITY);
            for (size_t i = 0; i < n; i++) {
                lens[i] = msg_make(msgs[i], SLOT, next + i, incarnation);
                ptrs[i] = msgs[i];
            }
            rc = shmq_producer_publish_many(p, ptrs, lens, n, NULL);
        }
        if (rc != 0)
            _exit(3);
        atomic_store_explicit(&sh->published_to[incarnation], shmq_producer_next_sequence(p),
                              memory_order_relaxed);
    }
}

static void record(struct tally *t, uint64_t sequence, uint64_t incarnation, uint64_t sum)
{
    uint64_t index = sequence - FIRST;
    if (index >= TABLE_SIZE)
        return;
    uint64_t value = incarnation << 48 | (sum & ((UINT64_C(1) << 48) - 1));
    uint64_t seen = 0;
    if (!atomic_compare_exchange_strong(&table[index], &seen, value) && seen != value) {
        if (t->conflicts++ < 5)
            fprintf(stderr, "sequence %llu delivered as incarnation %llu and as %llu\n",
                    (unsigned long long)sequence, (unsigned long long)(seen >> 48),
                    (unsigned long long)incarnation);
    }
}

static int run_consumer(const char *name, int which, int ready_fd, int result_fd)
{
    struct shmq_consumer *c;
    if (shmq_consumer_open(&c, name, SHMQ_START_EARLIEST) < 0)
        return 2;
    struct tally t = {0};
    t.start = shmq_consumer_position(c);
    signal_fd(ready_fd);
    uint64_t rng = (uint64_t)which * 104729 + 3;
    uint64_t last_seq = 0, last_lost = 0, last_inc = 0;
    int first = 1;
    unsigned char buf[SLOT];
    for (;;) {
        size_t len;
        int rc = shmq_consumer_poll_wait(c, buf, sizeof(buf), &len, 100 * 1000000LL);
        if (rc == -ETIMEDOUT)
            continue;
        if (rc == SHMQ_ENDED) {
            /* Ended by the last producer's close, or still by the creator's
             * before the first round opened it again. */
            if (atomic_load(&sh->done))
                break;
            usleep(500);
            continue;
        }
        if (rc != 0) {
            t.bad_rc++;
            t.last_bad_rc = rc;
            continue;
        }
        t.received++;
        uint64_t seq, inc, sum, lost = shmq_consumer_lost(c);
        if (!msg_check(buf, len, SLOT, &seq, &inc, &sum)) {
            t.bad_payload++;
            continue;
        }
        if (seq != shmq_consumer_position(c) - 1 || (!first && (int64_t)(seq - last_seq) <= 0))
            t.bad_order++;
        if ((first && seq - t.start != lost) || (!first && seq - last_seq - 1 != lost - last_lost))
            t.bad_gap++;
        if (lost != last_lost)
            t.overruns++;
        if (inc == 0 || inc >= INCARNATIONS || inc < last_inc)
            t.bad_incarnation++;
        record(&t, seq, inc, sum);
        first = 0;
        last_seq = seq;
        last_lost = lost;
        last_inc = inc;
        uint64_t r = xorshift(&rng);
        if (r % 3000 == 0)
            usleep((useconds_t)((r >> 32) % 3000)); /* stalled, often past a lap */
    }
    t.lost = shmq_consumer_lost(c);
    t.end = shmq_consumer_position(c);
    shmq_consumer_close(c);
    return write(result_fd, &t, sizeof(t)) == (ssize_t)sizeof(t) ? 0 : 4;
}

/* Kills producer incarnation `inc` at a random moment: after it is ready and
 * a random delay, or (early) right after fork, before it may have opened.
 * Returns 1 if it had published at least one message. */
static int kill_round(const char *name, uint64_t inc, int batches, int early, uint64_t *rng)
{
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        close(ready[0]);
        run_producer(name, inc, batches, ready[1]);
        _exit(1);
    }
    close(ready[1]);
    if (early) {
        sleep_ns(xorshift(rng) % 300000);
    } else {
        CHECK(wait_fd(ready[0]));
        sleep_ns(xorshift(rng) % 3000000);
    }
    kill_and_reap(kid);
    close(ready[0]);
    uint64_t opened = atomic_load(&sh->opened_at[inc]);
    return opened != NOT_OPENED && atomic_load(&sh->published_to[inc]) != opened;
}

/* The successor's next sequence lies past everything its predecessor
 * published, by at most the publish it was killed in (plus the one whose
 * return it had not yet recorded). */
static void check_successor(uint64_t prev, int prev_batches, uint64_t next_opened)
{
    uint64_t published = atomic_load(&sh->published_to[prev]);
    uint64_t ahead = next_opened - published;
    uint64_t slack = prev_batches ? 2 * CAPACITY : 2;
    if ((int64_t)ahead < 0 || ahead > slack) {
        fprintf(stderr, "incarnation %llu published up to %llu; its successor opened at %llu\n",
                (unsigned long long)prev, (unsigned long long)published,
                (unsigned long long)next_opened);
        exit(1);
    }
}

static void killed_producers_never_reuse_a_sequence(void)
{
    const char *name = test_name("kill9");
    sh = shared_alloc(sizeof(*sh));
    table = shared_alloc(TABLE_SIZE * sizeof(*table));
    for (int i = 0; i < INCARNATIONS; i++)
        atomic_store(&sh->opened_at[i], NOT_OPENED);
    shmq_producer_close(make_producer(name, SLOT, CAPACITY, FIRST));

    int ready[2], results[CONSUMERS][2];
    pid_t kids[CONSUMERS];
    CHECK(pipe(ready) == 0);
    for (int k = 0; k < CONSUMERS; k++) {
        CHECK(pipe(results[k]) == 0);
        kids[k] = fork_child();
        if (kids[k] == 0)
            _exit(run_consumer(name, k, ready[1], results[k][1]));
        close(results[k][1]);
    }
    for (int k = 0; k < CONSUMERS; k++)
        CHECK(wait_fd(ready[0]));

    uint64_t rng = 0xC0FFEE, start = now_ns();
    uint64_t inc = 1, last_opened_inc = 0;
    int last_batches = 0, mid_stream = 0, early_opened = 0;
    for (int round = 0; round < ROUNDS; round++) {
        int steps = round % 10 == 9 ? 2 : 1; /* every tenth: then an early kill */
        for (int step = 0; step < steps; step++, inc++) {
            int batches = round % 2, early = step == 1;
            int published = kill_round(name, inc, batches, early, &rng);
            uint64_t opened = atomic_load(&sh->opened_at[inc]);
            if (opened == NOT_OPENED)
                continue;
            if (last_opened_inc)
                check_successor(last_opened_inc, last_batches, opened);
            last_opened_inc = inc;
            last_batches = batches;
            mid_stream += !early && published;
            early_opened += early;
        }
    }
    double rounds_secs = (double)(now_ns() - start) / 1e9;

    /* The last producer: publishes a little, then ends the stream. */
    CHECK(inc == INCARNATIONS - 1);
    struct shmq_producer *p;
    CHECK_RC(shmq_producer_open(&p, name, NULL, 0), 0);
    check_successor(last_opened_inc, last_batches, shmq_producer_next_sequence(p));
    unsigned char msg[SLOT];
    for (int i = 0; i < 100; i++) {
        size_t len = msg_make(msg, SLOT, shmq_producer_next_sequence(p), inc);
        CHECK_RC(shmq_producer_publish(p, msg, len, NULL), 0);
    }
    uint64_t head = shmq_producer_next_sequence(p);
    atomic_store(&sh->done, 1);
    shmq_producer_close(p);

    int failed = 0;
    for (int k = 0; k < CONSUMERS; k++) {
        CHECK(wait_child(kids[k]) == 0);
        struct tally t;
        CHECK(read(results[k][0], &t, sizeof(t)) == (ssize_t)sizeof(t));
        close(results[k][0]);
        printf("consumer %d: received=%llu lost=%llu overruns=%llu bad_payload=%llu "
               "bad_order=%llu bad_gap=%llu bad_incarnation=%llu conflicts=%llu bad_rc=%llu (%d)\n",
               k, (unsigned long long)t.received, (unsigned long long)t.lost,
               (unsigned long long)t.overruns, (unsigned long long)t.bad_payload,
               (unsigned long long)t.bad_order, (unsigned long long)t.bad_gap,
               (unsigned long long)t.bad_incarnation, (unsigned long long)t.conflicts,
               (unsigned long long)t.bad_rc, t.last_bad_rc);
        failed |= t.bad_payload || t.bad_order || t.bad_gap || t.bad_incarnation ||
                  t.conflicts || t.bad_rc;
        failed |= t.start != FIRST || t.end != head || t.received + t.lost != t.end - t.start;
        failed |= t.overruns == 0; /* the ring is small enough to lap them */
    }
    close(ready[0]);
    close(ready[1]);
    printf("%d rounds (%d single, %d batched) + %d early kills (%d never finished opening): "
           "%d killed mid-stream, %llu messages in %.2f s, sequence wrapped: %s\n",
           ROUNDS, ROUNDS / 2, ROUNDS / 2, EARLY_ROUNDS, EARLY_ROUNDS - early_opened, mid_stream,
           (unsigned long long)(head - FIRST), rounds_secs, head < FIRST ? "yes" : "no");
    CHECK(!failed);
    CHECK(mid_stream >= ROUNDS / 2); /* most kills landed while publishing */
    munmap(table, TABLE_SIZE * sizeof(*table));
    munmap(sh, sizeof(*sh));
}

/* Polls every message there is now into msgs (SLOT bytes each); returns how
 * many, after checking each is whole and at the expected sequence. */
static int drain(struct shmq_consumer *c, unsigned char (*msgs)[SLOT], size_t *lens, int max)
{
    int n = 0;
    for (;;) {
        uint64_t expect = shmq_consumer_position(c);
        CHECK(n < max);
        int rc = shmq_consumer_poll(c, msgs[n], SLOT, &lens[n]);
        if (rc == SHMQ_EMPTY)
            return n;
        CHECK_RC(rc, 0);
        uint64_t seq, inc, sum;
        CHECK(msg_check(msgs[n], lens[n], SLOT, &seq, &inc, &sum));
        CHECK(seq == expect);
        n++;
    }
}

static void batch_killed_after_k_messages_keeps_their_numbers(void)
{
    const char *name = test_name("batchdeath");
    struct shmq_producer *p = make_producer(name, SLOT, CAPACITY, UINT64_MAX - 1000);
    unsigned char msg[SLOT];
    for (int i = 0; i < 10; i++) {
        size_t len = msg_make(msg, SLOT, shmq_producer_next_sequence(p), 1);
        CHECK_RC(shmq_producer_publish(p, msg, len, NULL), 0);
    }
    uint64_t next = shmq_producer_next_sequence(p);
    shmq_producer_close(p);
    struct shmq_consumer *early, *late; /* read before the kill, and after */
    CHECK_RC(shmq_consumer_open(&early, name, SHMQ_START_LATEST), 0);
    CHECK_RC(shmq_consumer_open(&late, name, SHMQ_START_LATEST), 0);
    static unsigned char seen_early[CAPACITY + 4][SLOT], seen_late[CAPACITY + 4][SLOT];
    size_t lens_early[CAPACITY + 4], lens_late[CAPACITY + 4];
    for (uint64_t k = 1; k <= CAPACITY; k++) {
        int ready[2];
        CHECK(pipe(ready) == 0);
        pid_t kid = fork_child();
        if (kid == 0) {
            /* The batch's producer: stamps k messages whole, starts the next
             * one if the batch went on, and dies before storing head. */
            struct shmq_producer *dying;
            if (shmq_producer_open(&dying, name, NULL, 0) != 0 ||
                shmq_producer_next_sequence(dying) != next)
                _exit(2);
            for (uint64_t i = 0; i < k; i++) {
                size_t len = msg_make(msg, SLOT, next + i, 1000 + k);
                craft_record(dying, msg, len, 1);
            }
            if (k < CAPACITY) {
                size_t len = msg_make(msg, SLOT, next + k, 1000 + k);
                craft_record(dying, msg, len / 2, 0);
            }
            signal_fd(ready[1]);
            pause();
            _exit(0);
        }
        CHECK(wait_fd(ready[0]));
        close(ready[0]);
        close(ready[1]);
        /* Whole messages past head are readable, the half-written one not. */
        CHECK(drain(early, seen_early, lens_early, CAPACITY + 4) == (int)k);
        kill_and_reap(kid);
        CHECK_RC(shmq_producer_open(&p, name, NULL, 0), 0);
        CHECK(shmq_producer_next_sequence(p) == next + k);
        /* Whoever reads them now reads the same bytes. */
        CHECK(drain(late, seen_late, lens_late, CAPACITY + 4) == (int)k);
        for (uint64_t i = 0; i < k; i++)
            CHECK(lens_late[i] == lens_early[i] && memcmp(seen_late[i], seen_early[i], lens_early[i]) == 0);
        /* And what comes next gets the next numbers. */
        for (int i = 0; i < 3; i++) {
            size_t len = msg_make(msg, SLOT, next + k + (uint64_t)i, 2000 + k);
            uint64_t seq;
            CHECK_RC(shmq_producer_publish(p, msg, len, &seq), 0);
            CHECK(seq == next + k + (uint64_t)i);
        }
        CHECK(drain(early, seen_early, lens_early, CAPACITY + 4) == 3);
        CHECK(drain(late, seen_late, lens_late, CAPACITY + 4) == 3);
        CHECK(shmq_consumer_lost(early) == 0 && shmq_consumer_lost(late) == 0);
        next += k + 3;
        shmq_producer_close(p);
    }
    shmq_consumer_close(early);
    shmq_consumer_close(late);
}

int main(void)
{
    test_start(60);
    setvbuf(stdout, NULL, _IONBF, 0); /* children must not inherit buffered output */
    batch_killed_after_k_messages_keeps_their_numbers();
    killed_producers_never_reuse_a_sequence();
    return 0;
}

/*
 * A producer killed in the middle of a shmq_producer_publish_many much
 * longer than the ring must not make its successor reuse sequence numbers
 * that consumers already received ("no sequence number is ever reused for
 * another payload", producer.c).
 *
 * The successor starts from head and walks over slots stamped with exactly
 * the next sequence, at most one lap. If a batch stored head only at its
 * end, a batch longer than the ring would have overwritten its own first
 * messages with later ones by the time it died: the walk would stop at
 * once, and the successor would number its messages from the batch's first
 * sequence again, although a consumer that kept up has delivered them.
 *
 * A real batch of 2^21 messages into a 16-slot ring, in a child process,
 * killed with SIGKILL once a consumer (polling as fast as it can) has
 * received messages more than four laps into it. The successor's
 * next_sequence must lie past every sequence that consumer received, and a
 * consumer that joins after the successor published must never get one of
 * those sequence numbers with another payload.
 */
#include "adversary.h"

#define CAPACITY 16u
#define BATCH (1u << 21)

/* A message is (sequence, incarnation); the batch's are incarnation 1. */
struct message {
    uint64_t sequence, incarnation;
};

static void publish_one_long_batch(const char *name, int ready_fd)
{
    struct shmq_producer *p;
    if (shmq_producer_open(&p, name, NULL, 0) != 0)
        _exit(2);
    /* Every message of the batch is the same (incarnation 1); the consumer
     * knows each one's sequence from its position. */
    static const struct message msg = {0, 1};
    const void **ptrs = malloc(BATCH * sizeof(*ptrs));
    size_t *lens = malloc(BATCH * sizeof(*lens));
    if (!ptrs || !lens)
        _exit(3);
    for (uint32_t i = 0; i < BATCH; i++) {
        ptrs[i] = &msg;
        lens[i] = sizeof(msg);
    }
    signal_fd(ready_fd);
    shmq_producer_publish_many(p, ptrs, lens, BATCH, NULL);
    pause(); /* finished before the kill: the parent says so and skips */
    _exit(0);
}

int main(void)
{
    test_start(30);
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *name = test_name("long-batch-kill");
    struct shmq_producer *p = make_producer(name, sizeof(struct message), CAPACITY, 0);
    for (uint64_t i = 0; i < 10; i++) {
        struct message m = {i, 0};
        CHECK_RC(shmq_producer_publish(p, &m, sizeof(m), NULL), 0);
    }
    const uint64_t first = shmq_producer_next_sequence(p);
    shmq_producer_close(p);
    struct shmq_consumer *keeping_up;
    CHECK_RC(shmq_consumer_open(&keeping_up, name, SHMQ_START_LATEST), 0);

    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t kid = fork_child();
    if (kid == 0)
        publish_one_long_batch(name, ready[1]);
    CHECK(wait_fd(ready[0]));
    /* Read until well into the batch, then kill it. */
    uint64_t highest = 0, received = 0, t0 = now_ns();
    struct message m;
    while (highest < first + 4 * CAPACITY) {
        int rc = shmq_consumer_poll(keeping_up, &m, sizeof(m), NULL);
        /* Lapped again and again; whether that may be reported as
         * corruption is test_long_batch_lapping_is_not_corruption's
         * business, not this test's. */
        if (rc == SHMQ_EMPTY || rc == SHMQ_CORRUPT)
            continue;
        CHECK_RC(rc, 0);
        CHECK(m.incarnation == 1);
        highest = shmq_consumer_position(keeping_up) - 1;
        received++;
    }
    kill_and_reap(kid);
    double killed_after_ms = (double)(now_ns() - t0) / 1e6;
    /* What the dead batch left for anyone to read, the consumer reads too. */
    for (int rc; (rc = shmq_consumer_poll(keeping_up, &m, sizeof(m), NULL)) != SHMQ_EMPTY;) {
        if (rc == SHMQ_CORRUPT)
            continue;
        CHECK_RC(rc, 0);
        CHECK(m.incarnation == 1);
        highest = shmq_consumer_position(keeping_up) - 1;
        received++;
    }
    if (highest == first + BATCH - 1) {
        printf("the batch finished before the kill (%.2f ms); nothing to test\n", killed_after_ms);
        shmq_consumer_close(keeping_up);
        return 77;
    }

    CHECK_RC(shmq_producer_open(&p, name, NULL, 0), 0);
    uint64_t next = shmq_producer_next_sequence(p);
    printf("batch of %u on %u slots killed after %.2f ms; a consumer received %llu of its "
           "messages, up to sequence %llu; the successor's next_sequence is %llu\n",
           BATCH, CAPACITY, killed_after_ms, (unsigned long long)received,
           (unsigned long long)highest, (unsigned long long)next);
    struct shmq_consumer *joining;
    CHECK_RC(shmq_consumer_open(&joining, name, SHMQ_START_LATEST), 0);
    for (uint64_t i = 0; i < 5; i++) {
        m = (struct message){shmq_producer_next_sequence(p), 2};
        CHECK_RC(shmq_producer_publish(p, &m, sizeof(m), NULL), 0);
    }
    int reused = 0;
    while (shmq_consumer_poll(joining, &m, sizeof(m), NULL) == 0) {
        uint64_t seq = shmq_consumer_position(joining) - 1;
        if (seq - first <= highest - first && m.incarnation != 1 && reused++ == 0)
            fprintf(stderr, "sequence %llu delivered twice, with two payloads\n",
                    (unsigned long long)seq);
    }
    shmq_consumer_close(joining);
    shmq_consumer_close(keeping_up);
    shmq_producer_close(p);
    close(ready[0]);
    close(ready[1]);
    CHECK(reused == 0);
    CHECK(next > highest);
    return 0;
}

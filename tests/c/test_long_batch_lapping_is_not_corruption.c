/*
 * A consumer lapped while a long shmq_producer_publish_many is in progress
 * is overrun by a legitimate producer, and must count the loss and go on:
 * SHMQ_CORRUPT is for stamps that are garbage ("not a fast producer",
 * shmq.h), and here every stamp is a real message.
 *
 * Head can lag the stamps: a batch that stores head only at its end, a
 * producer that died before storing it, a head store not yet visible. A
 * lapped reader that resynchronises to head - capacity/2 alone lands at or
 * behind itself, steps one slot per resync through every slot the batch has
 * rewritten, and with more than MAX_RESYNCS (64) of them in its way gives up
 * with SHMQ_CORRUPT: a batch longer than capacity/2 + 64 (4160 messages on
 * the default ring) is enough.
 *
 *   1. Deterministic: a 1024-slot ring, full; a consumer at the oldest
 *      message; then 1000 messages stamped (through the producer's
 *      read-write mapping) with head not moved. The consumer's next poll
 *      must deliver a message, not SHMQ_CORRUPT, and every sequence is
 *      then delivered or counted lost.
 *   2. Live: the default ring (8192 slots) and batches of 8192 messages for
 *      a second, with a consumer process that stalls now and then: no poll
 *      may return SHMQ_CORRUPT, and received + lost == position - start.
 */
#include "adversary.h"

#define SLOT 64u

static void stale_head_during_a_batch_is_not_corruption(const char *name)
{
    struct shmq_producer *p = make_producer(name, SLOT, 1024, 0);
    unsigned char msg[SLOT], buf[SLOT];
    for (uint64_t i = 0; i < 1024; i++)
        CHECK_RC(shmq_producer_publish(p, msg, msg_make(msg, SLOT, i, 1), NULL), 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    uint64_t start = shmq_consumer_position(c);
    CHECK(start == 1);
    /* publish_many of 1000 messages, as far as it got: all stamped, head
     * still 1024. */
    for (uint64_t s = 1024; s < 2024; s++)
        craft_record(p, msg, msg_make(msg, SLOT, s, 2), 1);
    size_t len;
    int rc = shmq_consumer_poll(c, buf, sizeof(buf), &len);
    printf("lapped during a 1000-message batch on 1024 slots: poll returned %d (%s), "
           "position %llu, lost %llu\n",
           rc, shmq_strerror(rc), (unsigned long long)shmq_consumer_position(c),
           (unsigned long long)shmq_consumer_lost(c));
    CHECK_RC(rc, 0);
    uint64_t received = 1;
    while ((rc = shmq_consumer_poll(c, buf, sizeof(buf), &len)) == 0)
        received++;
    CHECK_RC(rc, SHMQ_EMPTY);
    CHECK(shmq_consumer_position(c) == 2024);
    CHECK(received + shmq_consumer_lost(c) == 2024 - start);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

struct tally {
    uint64_t polls, received, lost, corrupt, bad_payload, bad_rc, start, end;
};

static int lapped_reader(const char *name, int ready_fd, int result_fd)
{
    struct shmq_consumer *c;
    if (shmq_consumer_open(&c, name, SHMQ_START_LATEST) != 0)
        return 2;
    struct tally t = {0};
    t.start = shmq_consumer_position(c);
    signal_fd(ready_fd);
    unsigned char buf[SLOT];
    uint64_t rng = 5;
    for (;;) {
        size_t len;
        int rc = shmq_consumer_poll_wait(c, buf, sizeof(buf), &len, 100000000);
        t.polls++;
        if (rc == SHMQ_ENDED)
            break;
        if (rc == 0) {
            uint64_t seq, inc, sum;
            t.received++;
            if (!msg_check(buf, len, SLOT, &seq, &inc, &sum) || seq != shmq_consumer_position(c) - 1)
                t.bad_payload++;
        } else if (rc == SHMQ_CORRUPT) {
            t.corrupt++;
        } else if (rc != -ETIMEDOUT) {
            t.bad_rc++;
        }
        if (xorshift(&rng) % 2048 == 0)
            usleep(200); /* lapped now and then */
    }
    t.lost = shmq_consumer_lost(c);
    t.end = shmq_consumer_position(c);
    shmq_consumer_close(c);
    return write(result_fd, &t, sizeof(t)) == (ssize_t)sizeof(t) ? 0 : 4;
}

static void long_batches_on_the_default_ring_are_not_corruption(void)
{
    const char *name = test_name("batch-live");
    const uint32_t capacity = SHMQ_DEFAULT_CAPACITY;
    struct shmq_producer *p = make_producer(name, SLOT, capacity, 0);
    int ready[2], results[2];
    CHECK(pipe(ready) == 0 && pipe(results) == 0);
    pid_t kid = fork_child();
    if (kid == 0)
        _exit(lapped_reader(name, ready[1], results[1]));
    CHECK(wait_fd(ready[0]));
    unsigned char(*msgs)[SLOT] = malloc((size_t)capacity * SLOT);
    const void **ptrs = malloc(capacity * sizeof(*ptrs));
    size_t *lens = malloc(capacity * sizeof(*lens));
    CHECK(msgs && ptrs && lens);
    uint64_t batches = 0, until = now_ns() + 1000000000ull;
    while (now_ns() < until) {
        uint64_t next = shmq_producer_next_sequence(p);
        for (uint32_t i = 0; i < capacity; i++) {
            lens[i] = msg_make(msgs[i], SLOT, next + i, 1);
            ptrs[i] = msgs[i];
        }
        CHECK_RC(shmq_producer_publish_many(p, ptrs, lens, capacity, NULL), 0);
        batches++;
    }
    uint64_t head = shmq_producer_next_sequence(p);
    shmq_producer_close(p);
    CHECK(wait_child(kid) == 0);
    struct tally t;
    CHECK(read(results[0], &t, sizeof(t)) == (ssize_t)sizeof(t));
    printf("%llu batches of %u on %u slots: %llu polls, %llu received, %llu lost, "
           "%llu SHMQ_CORRUPT, %llu bad payloads, %llu other errors\n",
           (unsigned long long)batches, capacity, capacity, (unsigned long long)t.polls,
           (unsigned long long)t.received, (unsigned long long)t.lost,
           (unsigned long long)t.corrupt, (unsigned long long)t.bad_payload,
           (unsigned long long)t.bad_rc);
    CHECK(t.bad_payload == 0 && t.bad_rc == 0);
    CHECK(t.end == head && t.received + t.lost == t.end - t.start);
    CHECK(t.corrupt == 0);
    free(msgs);
    free(ptrs);
    free(lens);
    close(ready[0]), close(ready[1]), close(results[0]), close(results[1]);
}

int main(void)
{
    test_start(30);
    setvbuf(stdout, NULL, _IONBF, 0);
    int failed = 0;
    /* Both parts run, so the report shows both; each fails in a child. */
    const char *name = test_name("batch-stale"); /* named here: the parent unlinks it */
    pid_t kid = fork_child();
    if (kid == 0) {
        stale_head_during_a_batch_is_not_corruption(name);
        _exit(0);
    }
    failed |= wait_child(kid) != 0;
    long_batches_on_the_default_ring_are_not_corruption();
    CHECK(!failed);
    return 0;
}

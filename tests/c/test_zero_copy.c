/*
 * Zero-copy writes and reads: shmq_producer_claim / commit / abort and
 * shmq_consumer_peek / release.
 *
 *  - a committed loan is read in place, whole, under its sequence; the
 *    loan's memory is 16-byte aligned and sized for slot_size bytes;
 *  - an aborted loan is never seen and the next publish takes its sequence;
 *  - while a loan (or an in-place read) is open, everything else on that
 *    handle returns -EINPROGRESS; commit and release with nothing open -EINVAL;
 *  - an in-place read whose slot the producer reused (published, or only
 *    claimed: the "in progress" mark is enough) releases with
 *    SHMQ_OVERWRITTEN and counts as lost; one that was not lapped releases 0;
 *  - lossless: a registered consumer's open read holds claim back (SHMQ_FULL,
 *    -ETIMEDOUT) until it is released, and is never overwritten;
 *  - a producer killed -9 between claim and commit leaves nothing a reader
 *    delivers, and the next producer continues at the abandoned sequence.
 */
#include "helpers.h"

#include <stdatomic.h>
#include <sys/mman.h>

static void fill(unsigned char *p, size_t n, uint64_t seq)
{
    uint64_t rng = seq * UINT64_C(0x9E3779B97F4A7C15) + 1;
    memcpy(p, &seq, 8);
    for (size_t i = 8; i < n; i++)
        p[i] = (unsigned char)xorshift(&rng);
}

static int intact(const unsigned char *p, size_t n, uint64_t seq)
{
    unsigned char want[n];
    fill(want, n, seq);
    return memcmp(want, p, n) == 0;
}

static void claim_commit_peek_release(void)
{
    const char *name = test_name("zc-basic");
    struct shmq_producer *p = make_producer(name, 4096, 8, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    for (uint64_t i = 0; i < 20; i++) {
        size_t size = 8 + (size_t)(i * 211) % (4096 - 8 + 1);
        void *data;
        CHECK_RC(shmq_producer_claim(p, size, &data), 0);
        CHECK(((uintptr_t)data & 15) == 0);
        fill(data, size, i);
        CHECK_RC(shmq_producer_commit(p), 0);
        CHECK(shmq_producer_next_sequence(p) - 1 == i);
        const void *view;
        size_t len;
        CHECK_RC(shmq_consumer_peek(c, &view, &len), 0);
        CHECK(len == size && intact(view, len, i));
        CHECK(shmq_consumer_position(c) == i); /* not moved on before release */
        CHECK_RC(shmq_consumer_release(c), 0);
        CHECK(shmq_consumer_position(c) == i + 1);
    }
    /* A whole slot, and an empty message. */
    void *data;
    CHECK_RC(shmq_producer_claim(p, 4096, &data), 0);
    memset(data, 0xab, 4096);
    CHECK_RC(shmq_producer_commit(p), 0);
    CHECK_RC(shmq_producer_claim(p, 0, &data), 0);
    CHECK_RC(shmq_producer_commit(p), 0);
    const void *view;
    size_t len;
    CHECK_RC(shmq_consumer_peek(c, &view, &len), 0);
    CHECK(len == 4096 && ((const unsigned char *)view)[4095] == 0xab);
    CHECK_RC(shmq_consumer_release(c), 0);
    CHECK_RC(shmq_consumer_peek(c, &view, &len), 0);
    CHECK(len == 0);
    CHECK_RC(shmq_consumer_release(c), 0);
    CHECK_RC(shmq_consumer_peek(c, &view, &len), SHMQ_EMPTY);
    CHECK(shmq_consumer_lost(c) == 0);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

static void misuse_and_in_progress(void)
{
    const char *name = test_name("zc-misuse");
    struct shmq_producer *p = make_producer(name, 256, 4, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    void *data;
    unsigned char msg[8] = {0};
    CHECK_RC(shmq_producer_commit(p), -EINVAL);
    CHECK_RC(shmq_producer_claim(p, 257, &data), -EMSGSIZE);
    CHECK_RC(shmq_producer_claim(p, 8, NULL), -EINVAL);
    CHECK_RC(shmq_producer_claim(p, 8, &data), 0);
    CHECK_RC(shmq_producer_claim(p, 8, &data), -EINPROGRESS);
    CHECK_RC(shmq_producer_publish(p, msg, 8, NULL), -EINPROGRESS);
    const void *ptrs[1] = {msg};
    size_t lens[1] = {8};
    CHECK_RC(shmq_producer_publish_many(p, ptrs, lens, 1, NULL), -EINPROGRESS);
    CHECK_RC(shmq_producer_publish_wait(p, msg, 8, NULL, 0), -EINPROGRESS);
    CHECK(shmq_producer_next_sequence(p) == 0);
    CHECK_RC(shmq_producer_commit(p), 0);

    const void *view;
    size_t len;
    unsigned char buf[256];
    CHECK_RC(shmq_consumer_release(c), -EINVAL);
    CHECK_RC(shmq_consumer_peek(c, NULL, &len), -EINVAL);
    CHECK_RC(shmq_consumer_peek(c, &view, &len), 0);
    CHECK_RC(shmq_consumer_peek(c, &view, &len), -EINPROGRESS);
    CHECK_RC(shmq_consumer_poll(c, buf, sizeof buf, &len), -EINPROGRESS);
    size_t lengths[4];
    CHECK_RC(shmq_consumer_poll_many(c, buf, sizeof buf, lengths, 4), -EINPROGRESS);
    CHECK_RC(shmq_consumer_release(c), 0);
    CHECK_RC(shmq_consumer_release(c), -EINVAL);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

static void aborted_loan_is_never_seen(void)
{
    const char *name = test_name("zc-abort");
    struct shmq_producer *p = make_producer(name, 512, 4, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    unsigned char msg[512];
    const void *view;
    size_t len;
    for (uint64_t seq = 0; seq < 16; seq++) { /* around the ring four times */
        void *data;
        CHECK_RC(shmq_producer_claim(p, 512, &data), 0);
        memset(data, 0xee, 512);
        CHECK_RC(shmq_consumer_peek(c, &view, &len), SHMQ_EMPTY); /* open: not yet */
        shmq_producer_abort(p);
        CHECK_RC(shmq_consumer_peek(c, &view, &len), SHMQ_EMPTY); /* abandoned: never */
        CHECK(shmq_producer_next_sequence(p) == seq);
        fill(msg, 100, seq);
        uint64_t got = UINT64_MAX;
        CHECK_RC(shmq_producer_publish(p, msg, 100, &got), 0);
        CHECK(got == seq); /* the abandoned loan's sequence */
        CHECK_RC(shmq_consumer_peek(c, &view, &len), 0);
        CHECK(len == 100 && intact(view, len, seq));
        CHECK_RC(shmq_consumer_release(c), 0);
    }
    CHECK(shmq_consumer_lost(c) == 0);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

static void lapped_read_is_overwritten(void)
{
    const char *name = test_name("zc-lapped");
    const uint32_t cap = 4;
    struct shmq_producer *p = make_producer(name, 64, cap, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    unsigned char msg[64];
    const void *view;
    size_t len;
    uint64_t next = 0;
    fill(msg, 64, next);
    CHECK_RC(shmq_producer_publish(p, msg, 64, NULL), 0);
    next++;

    /* Not lapped: capacity - 1 more messages leave its slot alone. */
    CHECK_RC(shmq_consumer_peek(c, &view, &len), 0);
    for (uint32_t i = 0; i < cap - 1; i++, next++) {
        fill(msg, 64, next);
        CHECK_RC(shmq_producer_publish(p, msg, 64, NULL), 0);
    }
    CHECK(intact(view, len, 0));
    CHECK_RC(shmq_consumer_release(c), 0);

    /* Lapped by a publish into its slot. */
    CHECK_RC(shmq_consumer_peek(c, &view, &len), 0);
    uint64_t viewed = shmq_consumer_position(c);
    CHECK(viewed == 1);
    fill(msg, 64, next);
    CHECK_RC(shmq_producer_publish(p, msg, 64, NULL), 0); /* seq 4: slot 0 */
    next++;
    fill(msg, 64, next);
    CHECK_RC(shmq_producer_publish(p, msg, 64, NULL), 0); /* seq 5: slot 1, ours */
    next++;
    CHECK(!intact(view, len, viewed)); /* the bytes really changed under it */
    CHECK_RC(shmq_consumer_release(c), SHMQ_OVERWRITTEN);
    CHECK(shmq_consumer_lost(c) == 1 && shmq_consumer_position(c) == viewed + 1);

    /* Lapped by a claim alone: the "in progress" mark is enough. */
    CHECK_RC(shmq_consumer_peek(c, &view, &len), 0);
    viewed = shmq_consumer_position(c);
    CHECK(viewed == 2);
    while (next % cap != viewed % cap) {
        fill(msg, 64, next);
        CHECK_RC(shmq_producer_publish(p, msg, 64, NULL), 0);
        next++;
    }
    void *data;
    CHECK_RC(shmq_producer_claim(p, 64, &data), 0); /* not written, not committed */
    CHECK_RC(shmq_consumer_release(c), SHMQ_OVERWRITTEN);
    CHECK(shmq_consumer_lost(c) == 2);
    shmq_producer_abort(p);

    /* Delivered + lost == published range. */
    uint64_t received = 0;
    while (shmq_consumer_peek(c, &view, &len) == 0) {
        uint64_t seq;
        memcpy(&seq, view, 8);
        CHECK(seq == shmq_consumer_position(c) && intact(view, len, seq));
        if (shmq_consumer_release(c) == 0)
            received++;
    }
    CHECK(received + shmq_consumer_lost(c) + 1 == next); /* + the first, received above */
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

static void lossless_read_holds_the_producer(void)
{
    const char *name = test_name("zc-lossless");
    const uint32_t cap = 4;
    struct shmq_config config = {.slot_size = 64, .capacity = cap, .delivery = SHMQ_LOSSLESS};
    struct shmq_producer *p;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    CHECK(shmq_consumer_registered(c) == 1);
    unsigned char msg[64];
    for (uint64_t i = 0; i < cap; i++) {
        fill(msg, 64, i);
        CHECK_RC(shmq_producer_publish(p, msg, 64, NULL), 0);
    }
    const void *view;
    size_t len;
    CHECK_RC(shmq_consumer_peek(c, &view, &len), 0);
    void *data;
    CHECK_RC(shmq_producer_claim(p, 64, &data), SHMQ_FULL);
    uint64_t t0 = now_ns();
    CHECK_RC(shmq_producer_claim_wait(p, 64, &data, 50 * 1000 * 1000), -ETIMEDOUT);
    CHECK(now_ns() - t0 >= 40 * 1000 * 1000);
    CHECK(intact(view, len, 0));
    CHECK_RC(shmq_consumer_release(c), 0);
    CHECK_RC(shmq_producer_claim_wait(p, 64, &data, 1000 * 1000 * 1000), 0);
    fill(data, 64, cap);
    CHECK_RC(shmq_producer_commit(p), 0);
    CHECK(shmq_producer_next_sequence(p) - 1 == cap);
    for (uint64_t i = 1; i <= cap; i++) {
        CHECK_RC(shmq_consumer_peek(c, &view, &len), 0);
        CHECK(len == 64 && intact(view, len, i));
        CHECK_RC(shmq_consumer_release(c), 0);
    }
    CHECK(shmq_consumer_lost(c) == 0);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

/* The child opens the producer, publishes `whole` messages, claims a whole
 * slot, writes half of it, says so on the pipe and waits to be killed. */
static void killed_child(const char *name, int fd, uint32_t slot, int whole)
{
    struct shmq_producer *p;
    if (shmq_producer_open(&p, name, NULL, 0) != 0)
        _exit(2);
    unsigned char *msg = malloc(slot);
    for (int i = 0; i < whole; i++) {
        uint64_t seq = shmq_producer_next_sequence(p);
        fill(msg, slot / 2 + (size_t)i, seq);
        if (shmq_producer_publish(p, msg, slot / 2 + (size_t)i, NULL) != 0)
            _exit(3);
    }
    void *data;
    uint64_t seq = shmq_producer_next_sequence(p);
    if (shmq_producer_claim(p, slot, &data) != 0)
        _exit(4);
    fill(msg, slot, seq);
    memcpy(data, msg, slot / 2); /* half of a message that would pass the check */
    if (write(fd, &seq, sizeof seq) != sizeof seq)
        _exit(5);
    for (;;)
        pause();
}

static void killed_inside_claim(void)
{
    const char *name = test_name("zc-killed");
    const uint32_t slot = 1 << 16, cap = 4;
    const int rounds = 10, whole = 3;
    struct shmq_producer *p = make_producer(name, slot, cap, 0);
    shmq_producer_close(p);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    uint64_t expect = 0;
    for (int r = 0; r < rounds; r++) {
        int fds[2];
        CHECK(pipe(fds) == 0);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            killed_child(name, fds[1], slot, whole);
        }
        close(fds[1]);
        uint64_t abandoned;
        CHECK(read(fds[0], &abandoned, sizeof abandoned) == sizeof abandoned);
        close(fds[0]);
        /* Read what the child published while it sits inside its claim. */
        const void *view;
        size_t len;
        int rc;
        while ((rc = shmq_consumer_peek(c, &view, &len)) == 0) {
            uint64_t seq;
            memcpy(&seq, view, 8);
            CHECK(seq == expect && intact(view, len, seq));
            CHECK_RC(shmq_consumer_release(c), 0);
            expect++;
        }
        CHECK_RC(rc, SHMQ_EMPTY); /* the half-written loan is not there */
        CHECK(expect == abandoned);
        CHECK(kill(pid, SIGKILL) == 0);
        CHECK(wait_child(pid) == 128 + SIGKILL);
        CHECK_RC(shmq_consumer_peek(c, &view, &len), SHMQ_EMPTY);
        /* A new producer continues at the abandoned sequence. */
        CHECK_RC(shmq_producer_open(&p, name, NULL, 0), 0);
        CHECK(shmq_producer_next_sequence(p) == abandoned);
        shmq_producer_close(p);
    }
    CHECK_RC(shmq_producer_open(&p, name, NULL, 0), 0);
    void *data;
    CHECK_RC(shmq_producer_claim(p, slot, &data), 0);
    fill(data, slot, expect);
    CHECK_RC(shmq_producer_commit(p), 0);
    CHECK(shmq_producer_next_sequence(p) - 1 == expect);
    const void *view;
    size_t len;
    CHECK_RC(shmq_consumer_peek(c, &view, &len), 0);
    CHECK(len == slot && intact(view, len, expect));
    CHECK_RC(shmq_consumer_release(c), 0);
    CHECK(shmq_consumer_lost(c) == 0 && expect == (uint64_t)(rounds * whole));
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

int main(void)
{
    test_start(60);
    claim_commit_peek_release();
    misuse_and_in_progress();
    aborted_loan_is_never_seen();
    lapped_read_is_overwritten();
    lossless_read_holds_the_producer();
    killed_inside_claim();
    return 0;
}

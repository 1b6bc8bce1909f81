/*
 * A consumer, however buggy or hostile within its own process, cannot hurt
 * the producer or the other consumers:
 *   - through its ring descriptor and mapping it cannot truncate, write,
 *     punch holes, map writable, mprotect writable or madvise away the ring
 *     (the kernel refuses each), and a stray store faults in it alone;
 *   - scribbling random bytes over its whole own entry changes nothing for
 *     anyone else;
 *   - storing 0 into the wake flag in a loop delays a sleeper's wake-up by
 *     at most one sleep slice (100 ms) per message: each of 20 messages
 *     published at random gaps still reaches a consumer blocked in
 *     shmq_consumer_poll_wait(2 s), none by timeout;
 *   - storing 1 into the wake flag in a loop only costs the producer
 *     wake-ups: every message still arrives intact.
 * Intact means: the self-checking messages of adversary.h, in order.
 */
#define _GNU_SOURCE
#include "adversary.h"

#define SLOT 64u

/* Publishes `count` self-checking messages from sequence `from`. */
static void publish_range(struct shmq_producer *p, uint64_t count)
{
    unsigned char msg[SLOT];
    for (uint64_t i = 0; i < count; i++) {
        uint64_t seq = shmq_producer_next_sequence(p);
        CHECK_RC(shmq_producer_publish(p, msg, msg_make(msg, SLOT, seq, 1), NULL), 0);
    }
}

/* Reads `count` messages, each whole and the next in sequence. Returns how
 * many arrived before a wait timed out (with timeout_ns), or count. */
static uint64_t receive_range(struct shmq_consumer *c, uint64_t count, int64_t timeout_ns)
{
    unsigned char buf[SLOT];
    for (uint64_t i = 0; i < count; i++) {
        uint64_t expect = shmq_consumer_position(c), seq, inc, sum;
        size_t len;
        int rc = shmq_consumer_poll_wait(c, buf, sizeof(buf), &len, timeout_ns);
        if (rc == -ETIMEDOUT)
            return i;
        CHECK_RC(rc, 0);
        CHECK(msg_check(buf, len, SLOT, &seq, &inc, &sum));
        CHECK(seq == expect);
    }
    return count;
}

/* In a grandchild: a store to addr must kill it with SIGSEGV. */
static int store_faults(volatile unsigned char *addr)
{
    pid_t kid = fork_child();
    if (kid == 0) {
        signal(SIGSEGV, SIG_DFL);
        addr[0] = (unsigned char)(addr[0] + 1);
        _exit(0);
    }
    return wait_child(kid) == 128 + SIGSEGV;
}

/* Each attack on the ring, from a consumer's own handle; returns a bit set
 * of the attacks that were not refused the way they must be. */
static int attack_ring(const char *name)
{
    struct shmq_consumer *c;
    if (shmq_consumer_open(&c, name, SHMQ_START_LATEST) != 0)
        return 1 << 30;
    int fd = shmq_region_fd(c->region), failed = 0;
    unsigned char *base = shmq_region_base(c->region);
    size_t size = shmq_region_size(c->region);
    unsigned char junk[64];
    memset(junk, 0xEE, sizeof(junk));

    errno = 0;
    if (ftruncate(fd, 0) == 0 || (errno != EINVAL && errno != EBADF))
        failed |= 1 << 0;
    errno = 0;
    if (ftruncate(fd, (off_t)size * 2) == 0 || (errno != EINVAL && errno != EBADF))
        failed |= 1 << 1;
    errno = 0;
    if (pwrite(fd, junk, sizeof(junk), 0) != -1 || errno != EBADF)
        failed |= 1 << 2;
    errno = 0;
    if (pwrite(fd, junk, sizeof(junk), (off_t)c->geometry.index_offset) != -1 || errno != EBADF)
        failed |= 1 << 3;
    errno = 0;
    if (write(fd, junk, sizeof(junk)) != -1 || errno != EBADF)
        failed |= 1 << 4;
    errno = 0;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)size) == 0 ||
        errno != EBADF)
        failed |= 1 << 5;
    errno = 0;
    if (mprotect(base, size, PROT_READ | PROT_WRITE) == 0 || errno != EACCES)
        failed |= 1 << 6;
    errno = 0;
    void *writable = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (writable != MAP_FAILED || errno != EACCES)
        failed |= 1 << 7;
    errno = 0;
    if (madvise(base, size, MADV_REMOVE) == 0)
        failed |= 1 << 8;
    if (!store_faults((unsigned char *)&c->control->head))
        failed |= 1 << 9;
    if (!store_faults(c->data))
        failed |= 1 << 10;
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size != size)
        failed |= 1 << 11;
    shmq_consumer_close(c);
    return failed;
}

static void read_only_ring_refuses_every_write(void)
{
    const char *name = test_name("hurt-ro");
    struct shmq_producer *p = make_producer(name, SLOT, 16, 0);
    struct shmq_consumer *other;
    CHECK_RC(shmq_consumer_open(&other, name, SHMQ_START_LATEST), 0);
    publish_range(p, 10);
    int result[2];
    CHECK(pipe(result) == 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        int failed = attack_ring(name);
        _exit(write(result[1], &failed, sizeof(failed)) == (ssize_t)sizeof(failed) ? 0 : 2);
    }
    CHECK(wait_child(kid) == 0);
    int failed;
    CHECK(read(result[0], &failed, sizeof(failed)) == (ssize_t)sizeof(failed));
    if (failed)
        fprintf(stderr, "attacks not refused as they must be: bit set 0x%x (see attack_ring)\n",
                failed);
    CHECK(failed == 0);
    close(result[0]);
    close(result[1]);
    /* What was there before is intact, and the queue works on. */
    CHECK(receive_range(other, 10, 0) == 10);
    for (int round = 0; round < 100; round++) {
        publish_range(p, 10);
        CHECK(receive_range(other, 10, 0) == 10);
    }
    CHECK(shmq_consumer_lost(other) == 0);
    shmq_consumer_close(other);
    shmq_producer_close(p);
}

static void scribbling_over_its_own_entry_hurts_nobody_else(void)
{
    const char *name = test_name("hurt-entry");
    struct shmq_producer *p = make_producer(name, SLOT, 8192, 0);
    struct shmq_consumer *other;
    CHECK_RC(shmq_consumer_open(&other, name, SHMQ_START_LATEST), 0);
    int ready[2], go[2];
    CHECK(pipe(ready) == 0 && pipe(go) == 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        struct shmq_consumer *c;
        if (shmq_consumer_open(&c, name, SHMQ_START_LATEST) != 0 || shmq_consumer_entry(c) < 0)
            _exit(2);
        unsigned char *entry = (unsigned char *)c->entry;
        uint64_t rng = 77;
        for (int i = 0; i < 100; i++)
            for (size_t b = 0; b < c->consumers.page_size; b++)
                entry[b] = (unsigned char)xorshift(&rng);
        signal_fd(ready[1]);
        /* It keeps scribbling while it reads: reading still works for it. */
        if (!wait_fd(go[0]))
            _exit(3);
        for (int round = 0; round < 50; round++) {
            for (size_t b = 0; b < c->consumers.page_size; b++)
                entry[b] = (unsigned char)xorshift(&rng);
            if (receive_range(c, 100, 2000000000LL) != 100)
                _exit(4);
        }
        _exit(0);
    }
    CHECK(wait_fd(ready[0]));
    signal_fd(go[1]);
    /* Producer and the other consumer go on as if nothing happened. */
    for (int round = 0; round < 50; round++) {
        publish_range(p, 100);
        CHECK(receive_range(other, 100, 0) == 100);
    }
    CHECK(wait_child(kid) == 0);
    CHECK(shmq_consumer_lost(other) == 0);
    /* A producer that reopens the queue, and a new consumer, still can. */
    shmq_producer_close(p);
    CHECK_RC(shmq_producer_open(&p, name, NULL, 0), 0);
    struct shmq_consumer *late;
    CHECK_RC(shmq_consumer_open(&late, name, SHMQ_START_LATEST), 0);
    CHECK(shmq_consumer_entry(late) >= 0);
    publish_range(p, 10);
    CHECK(receive_range(late, 10, 0) == 10);
    CHECK(receive_range(other, 10, 0) == 10);
    shmq_consumer_close(late);
    shmq_consumer_close(other);
    shmq_producer_close(p);
    close(ready[0]), close(ready[1]), close(go[0]), close(go[1]);
}

/* A child that opens a consumer and stores `value` into the wake flag until
 * killed. */
static pid_t start_flag_writer(const char *name, uint32_t value)
{
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        struct shmq_consumer *c;
        if (shmq_consumer_open(&c, name, SHMQ_START_LATEST) != 0 || c->consumers.wake == NULL)
            _exit(2);
        _Atomic uint32_t *flag = &c->consumers.wake->wake_flag;
        signal_fd(ready[1]);
        for (;;)
            atomic_store(flag, value);
    }
    CHECK(wait_fd(ready[0]));
    close(ready[0]);
    close(ready[1]);
    return kid;
}

#define STRANDED_MESSAGES 20

static void clearing_the_wake_flag_delays_a_sleeper_by_one_slice_at_most(void)
{
    const char *name = test_name("hurt-zero");
    struct shmq_producer *p = make_producer(name, SLOT, 64, 0);
    int ready[2], results[2];
    CHECK(pipe(ready) == 0 && pipe(results) == 0);
    pid_t sleeper = fork_child();
    if (sleeper == 0) {
        struct shmq_consumer *c;
        if (shmq_consumer_open(&c, name, SHMQ_START_LATEST) != 0)
            _exit(2);
        signal_fd(ready[1]);
        uint64_t latencies[STRANDED_MESSAGES];
        for (int i = 0; i < STRANDED_MESSAGES; i++) {
            uint64_t sent;
            size_t len;
            int rc = shmq_consumer_poll_wait(c, &sent, sizeof(sent), &len, 2000000000LL);
            if (rc != 0 || len != sizeof(sent))
                _exit(rc == -ETIMEDOUT ? 3 : 4);
            latencies[i] = now_ns() - sent;
        }
        _exit(write(results[1], latencies, sizeof(latencies)) == (ssize_t)sizeof(latencies) ? 0 : 5);
    }
    CHECK(wait_fd(ready[0]));
    pid_t zeroer = start_flag_writer(name, 0);
    uint64_t rng = 2024, wakeups0 = shmq_producer_wakeups(p);
    for (int i = 0; i < STRANDED_MESSAGES; i++) {
        sleep_ns(5000000 + xorshift(&rng) % 150000000); /* 5 to 155 ms: it sleeps */
        uint64_t sent = now_ns();
        CHECK_RC(shmq_producer_publish(p, &sent, sizeof(sent), NULL), 0);
    }
    int status = wait_child(sleeper);
    kill_and_reap(zeroer);
    CHECK(status == 0); /* 3: a message waited out the whole 2 s timeout */
    uint64_t latencies[STRANDED_MESSAGES], worst = 0, total = 0;
    CHECK(read(results[0], latencies, sizeof(latencies)) == (ssize_t)sizeof(latencies));
    for (int i = 0; i < STRANDED_MESSAGES; i++) {
        worst = latencies[i] > worst ? latencies[i] : worst;
        total += latencies[i];
    }
    printf("wake flag zeroed in a loop: %d messages, wake-up latency mean %.1f ms, worst %.1f ms, "
           "%llu wake-ups\n",
           STRANDED_MESSAGES, (double)total / STRANDED_MESSAGES / 1e6, (double)worst / 1e6,
           (unsigned long long)(shmq_producer_wakeups(p) - wakeups0));
    /* One slice is 100 ms; the rest is room for a loaded machine. */
    CHECK(worst < 1000000000ull);
    shmq_producer_close(p);
    close(ready[0]), close(ready[1]), close(results[0]), close(results[1]);
}

#define FLAG_MESSAGES 20000u

static void raising_the_wake_flag_only_costs_wakeups(void)
{
    const char *name = test_name("hurt-one");
    struct shmq_producer *p = make_producer(name, SLOT, 32768, 0);
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t reader = fork_child();
    if (reader == 0) {
        struct shmq_consumer *c;
        if (shmq_consumer_open(&c, name, SHMQ_START_LATEST) != 0)
            _exit(2);
        signal_fd(ready[1]);
        if (receive_range(c, FLAG_MESSAGES, 5000000000LL) != FLAG_MESSAGES)
            _exit(3);
        _exit(shmq_consumer_lost(c) == 0 ? 0 : 4);
    }
    CHECK(wait_fd(ready[0]));
    pid_t raiser = start_flag_writer(name, 1);
    uint64_t rng = 7, wakeups0 = shmq_producer_wakeups(p);
    for (uint64_t sent = 0; sent < FLAG_MESSAGES;) {
        uint64_t burst = 1 + xorshift(&rng) % 200;
        publish_range(p, burst < FLAG_MESSAGES - sent ? burst : FLAG_MESSAGES - sent);
        sent += burst;
        if (xorshift(&rng) % 4 == 0)
            usleep(200);
    }
    int status = wait_child(reader);
    kill_and_reap(raiser);
    uint64_t wakeups = shmq_producer_wakeups(p) - wakeups0;
    printf("wake flag raised in a loop: %u messages cost %llu wake-ups (%.2f per message)\n",
           FLAG_MESSAGES, (unsigned long long)wakeups, (double)wakeups / FLAG_MESSAGES);
    CHECK(status == 0);
    CHECK(wakeups > 0 && wakeups <= FLAG_MESSAGES);
    shmq_producer_close(p);
    close(ready[0]), close(ready[1]);
}

int main(void)
{
    test_start(60);
    setvbuf(stdout, NULL, _IONBF, 0);
    read_only_ring_refuses_every_write();
    scribbling_over_its_own_entry_hurts_nobody_else();
    clearing_the_wake_flag_delays_a_sleeper_by_one_slice_at_most();
    raising_the_wake_flag_only_costs_wakeups();
    return 0;
}

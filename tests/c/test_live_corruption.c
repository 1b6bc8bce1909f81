/*
 * Shared memory is untrusted input, even while it is in use. For a few
 * seconds a corrupter process maps the ring and the consumer-state segment
 * read-write and writes random values into record stamps, lengths and first
 * slots, the tail hint, the
 * control page (head, futex_word, stream_state, and the identity line, each
 * word restored after a short while) and the consumer-state segment (wake
 * flag, entries, header), while a producer publishes (closing and reopening
 * now and then, so its open reads the damaged segments too) and two consumer
 * processes poll, wait and reopen.
 *
 * Invariants: nobody crashes (ASan aborts on any read or write out of
 * bounds; every poll gets a heap buffer of exactly the size it passes), no
 * delivered length exceeds the buffer or the slot_size the consumer
 * validated when it opened (a consumer that opened while the identity line
 * was damaged into another valid geometry, a slot_size with the same
 * stride, say, trusts that one: the ring is then garbage, read in bounds),
 * every blocking call
 * returns within its timeout plus 1 s, and every return code is one the
 * manual documents for that call.
 */
#include <sched.h>

#include "adversary.h"

#define SLOT 100u
#define CAPACITY 32u
#define CORRUPT_SECONDS 3
#define CONSUMERS 2
#define MARGIN_NS (1000 * 1000000LL)

struct shared {
    _Atomic uint32_t stop;
};

struct tally {
    uint64_t calls, delivered, corrupt, ended, timed_out, too_small, reopens, open_failures;
    uint64_t bad_rc, bad_length, late, bad_open_rc, bad_flag;
    int last_bad_rc, last_bad_open_rc;
    int64_t worst_overshoot_ns;
};

static struct shared *sh;

static int rc_in(int rc, const int *allowed, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (rc == allowed[i])
            return 1;
    return 0;
}
#define RC_IN(rc, ...) rc_in((rc), (const int[]){__VA_ARGS__}, sizeof((int[]){__VA_ARGS__}) / sizeof(int))

static int consumer_open_rc_ok(int rc)
{
    return RC_IN(rc, -ENOENT, -EINVAL, -ENAMETOOLONG, -EACCES, -EPERM, -EPROTO, -ENODATA,
                 -EPROTONOSUPPORT, -EBADMSG, -ENOMEM, -EMFILE);
}

static int producer_open_rc_ok(int rc)
{
    return RC_IN(rc, -EBUSY, -ENOENT, -EEXIST, -EPERM, -EMEDIUMTYPE, -EINVAL, -ENAMETOOLONG,
                 -EPROTO, -ENODATA, -EPROTONOSUPPORT, -EBADMSG, -ENOSPC, -EACCES, -ENOMEM, -EMFILE);
}

static void bad_rc(struct tally *t, const char *call, int rc)
{
    if (t->bad_rc++ < 5)
        fprintf(stderr, "%s: undocumented return code %d (%s)\n", call, rc, shmq_strerror(rc));
    t->last_bad_rc = rc;
}

static void check_time(struct tally *t, uint64_t t0, int64_t timeout_ns)
{
    int64_t over = (int64_t)(now_ns() - t0) - timeout_ns;
    if (over > t->worst_overshoot_ns)
        t->worst_overshoot_ns = over;
    if (over > MARGIN_NS)
        t->late++;
}

/* One blocking poll with a random timeout into a heap buffer of a random size. */
static void poll_once(struct shmq_consumer *c, struct tally *t, uint64_t r)
{
    int64_t timeout = r % 5 == 0 ? 0 : (int64_t)((r >> 8) % 50 + 1) * 1000000;
    size_t size = (r >> 20) % 8 == 0 ? (size_t)((r >> 24) % SLOT) : SLOT;
    unsigned char *buf = malloc(size ? size : 1);
    CHECK(buf != NULL);
    size_t len = 0;
    uint64_t t0 = now_ns();
    /* Never NULL: a zero-length message into (NULL, 0) is another matter,
     * tested by test_empty_message_needs_no_buffer. */
    int rc = shmq_consumer_poll_wait(c, buf, size, &len, timeout);
    check_time(t, t0, timeout);
    free(buf);
    if (!RC_IN(rc, 0, SHMQ_EMPTY, SHMQ_ENDED, SHMQ_CORRUPT, -ETIMEDOUT, -EINTR, -EMSGSIZE))
        bad_rc(t, "shmq_consumer_poll_wait", rc);
    t->delivered += rc == 0;
    t->corrupt += rc == SHMQ_CORRUPT;
    t->ended += rc == SHMQ_ENDED;
    t->timed_out += rc == -ETIMEDOUT;
    t->too_small += rc == -EMSGSIZE;
    /* The largest message this consumer's open validated (an open during a
     * corrupted identity line may have taken a larger, still sound, one). */
    size_t largest = shmq_consumer_max_message_size(c);
    if ((rc == 0 && (len > size || len > largest)) ||
        (rc == -EMSGSIZE && (len <= size || len > largest)))
        t->bad_length++;
}

static void poll_many_once(struct shmq_consumer *c, struct tally *t, uint64_t r)
{
    size_t size = 1 + (size_t)(r % (4 * SLOT));
    unsigned char *buf = malloc(size);
    size_t lens[8];
    CHECK(buf != NULL);
    int n = shmq_consumer_poll_many(c, buf, size, lens, 8);
    free(buf);
    if (n < 0 && !RC_IN(n, SHMQ_ENDED, SHMQ_CORRUPT, -EMSGSIZE))
        bad_rc(t, "shmq_consumer_poll_many", n);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        total += lens[i];
        if (lens[i] > shmq_consumer_max_message_size(c))
            t->bad_length++;
    }
    if (n > 8 || total > size)
        t->bad_length++;
    t->delivered += n > 0 ? (uint64_t)n : 0;
}

static int run_consumer(const char *name, int which, int result_fd)
{
    struct tally t = {0};
    struct shmq_consumer *c = NULL;
    uint64_t rng = (uint64_t)which * 31337 + 7;
    while (!atomic_load(&sh->stop)) {
        uint64_t r = xorshift(&rng);
        if (c == NULL) {
            struct shmq_consumer_options o = {.start = r % 2 ? SHMQ_START_EARLIEST : SHMQ_START_LATEST,
                                              .spin = (r >> 4) % 3 == 0 ? 2000 : 0};
            int rc = shmq_consumer_open_with(&c, name, &o);
            if (rc < 0) {
                c = NULL;
                t.open_failures++;
                if (!consumer_open_rc_ok(rc) && t.bad_open_rc++ < 5)
                    fprintf(stderr, "consumer open: undocumented %d (%s)\n", rc, shmq_strerror(rc));
                t.last_bad_open_rc = consumer_open_rc_ok(rc) ? t.last_bad_open_rc : rc;
                usleep(200);
                continue;
            }
            t.reopens++;
        }
        t.calls++;
        switch ((r >> 8) % 32) {
        case 0: {
            int64_t timeout = (int64_t)((r >> 16) % 30) * 1000000;
            uint64_t t0 = now_ns();
            int rc = shmq_consumer_wait_flags(c, timeout, (r >> 24) % 2 ? SHMQ_WAIT_PAST_END : 0);
            check_time(&t, t0, timeout);
            if (!RC_IN(rc, 0, SHMQ_ENDED, -ETIMEDOUT, -EINTR))
                bad_rc(&t, "shmq_consumer_wait", rc);
            break;
        }
        case 1:
            poll_many_once(c, &t, r >> 16);
            break;
        case 2: {
            int alive = shmq_consumer_producer_alive(c), ended = shmq_consumer_ended(c);
            int unlinked = shmq_consumer_unlinked(c);
            t.bad_flag += (alive != 0 && alive != 1) || (ended != 0 && ended != 1) ||
                          (unlinked != 0 && unlinked != 1);
            break;
        }
        case 3:
            if ((r >> 16) % 8 == 0) {
                shmq_consumer_close(c);
                c = NULL;
            }
            break;
        default:
            poll_once(c, &t, r >> 13);
        }
    }
    shmq_consumer_close(c);
    return write(result_fd, &t, sizeof(t)) == (ssize_t)sizeof(t) ? 0 : 4;
}

static int run_producer(const char *name, int result_fd)
{
    struct tally t = {0};
    /* max_message_size too: an open while the identity line says another one
     * (still sound) is refused, as one with another slot_size is. */
    struct shmq_config config = {.slot_size = SLOT, .capacity = CAPACITY, .max_message_size = SLOT};
    uint64_t rng = 4242;
    unsigned char msgs[8][SLOT];
    const void *ptrs[8];
    size_t lens[8];
    for (int i = 0; i < 8; i++) {
        memset(msgs[i], 0x5A + i, SLOT);
        ptrs[i] = msgs[i];
    }
    struct shmq_producer *p = NULL;
    while (!atomic_load(&sh->stop)) {
        if (p == NULL) {
            int rc = shmq_producer_open(&p, name, &config, 0);
            if (rc < 0) {
                p = NULL;
                t.open_failures++;
                if (!producer_open_rc_ok(rc)) {
                    if (t.bad_open_rc++ < 5)
                        fprintf(stderr, "producer open: undocumented %d (%s)\n", rc,
                                shmq_strerror(rc));
                    t.last_bad_open_rc = rc;
                }
                usleep(200);
                continue;
            }
            t.reopens++;
        }
        int rc;
        uint64_t burst = 1000 + xorshift(&rng) % 20000;
        for (uint64_t i = 0; i < burst && !atomic_load(&sh->stop); i++) {
            uint64_t r = xorshift(&rng);
            if (r % 4 == 0) {
                size_t n = 1 + (size_t)((r >> 8) % 8);
                for (size_t k = 0; k < n; k++)
                    lens[k] = (size_t)((r >> (16 + k)) % (SLOT + 1));
                rc = shmq_producer_publish_many(p, ptrs, lens, n, NULL);
                t.delivered += n;
            } else {
                rc = shmq_producer_publish(p, msgs[0], (size_t)((r >> 8) % (SLOT + 1)), NULL);
                t.delivered++;
            }
            t.calls++;
            if (rc != 0)
                bad_rc(&t, "publish", rc);
            if (r % 512 == 0)
                usleep(100); /* lets consumers fall asleep, so wake-ups happen */
        }
        if (xorshift(&rng) % 4 == 0) { /* close (ending the stream) and reopen */
            shmq_producer_close(p);
            p = NULL;
        } else {
            sleep_ns(xorshift(&rng) % 3000000); /* a gap: consumers fall asleep */
        }
    }
    shmq_producer_close(p);
    return write(result_fd, &t, sizeof(t)) == (ssize_t)sizeof(t) ? 0 : 4;
}

/* A random value that is sometimes plausible: near the old one, or a lap away. */
static uint64_t nasty(uint64_t old, uint64_t r)
{
    switch (r % 6) {
    case 0: return old + (r >> 8) % 64 - 32;
    case 1: return old + CAPACITY * ((r >> 8) % 3) - CAPACITY;
    case 2: return UINT64_C(1) << 62;
    case 3: return old ^ (UINT64_C(1) << ((r >> 8) % 64));
    default: return xorshift(&r);
    }
}

static void open_consumer_state(struct shmq_region **state, const char *name)
{
    shmq_region_close(*state);
    *state = NULL;
    if (shmq_region_open_object(state, name, SHMQ_CONSUMERS_SUFFIX, SHMQ_REGION_READ_WRITE) < 0)
        *state = NULL;
}

static int run_corrupter(const char *name)
{
    struct shmq_region *ring, *state = NULL;
    CHECK_RC(shmq_region_open(&ring, name, SHMQ_REGION_READ_WRITE), 0);
    unsigned char *base = shmq_region_base(ring);
    struct shmq_geometry g;
    CHECK_RC(shmq_header_read(base, shmq_region_size(ring), &g), 0);
    struct shmq_control *control = (struct shmq_control *)base;
    unsigned char *slots = base + g.index_offset;
    uint64_t rng = 99991, writes = 0, end = now_ns() + CORRUPT_SECONDS * 1000000000ull;
    uint64_t reopen_at = 0;
    while (now_ns() < end) {
        if (now_ns() >= reopen_at) { /* a producer may have replaced it */
            open_consumer_state(&state, name);
            reopen_at = now_ns() + 50 * 1000000ull;
        }
        uint64_t r = xorshift(&rng), v = xorshift(&rng);
        struct shmq_record *slot = shmq_record_at(slots, &g, r >> 32);
        unsigned which = (unsigned)(r % 20);
        if (which < 6) {
            atomic_store(&slot->stamp, nasty(atomic_load(&slot->stamp), v));
        } else if (which < 8) {
            uint32_t len = v % 3 == 0 ? (uint32_t)(v >> 8) : (uint32_t)((v >> 8) % (SLOT + 2));
            atomic_store(&slot->length, len);
        } else if (which < 9) {
            /* The record's first slot, or the tail hint. */
            if (v & 1)
                atomic_store(&slot->slot, v % 3 == 0 ? (uint32_t)(v >> 8) : (uint32_t)((v >> 8) % CAPACITY));
            else
                atomic_store(&control->tail, nasty(atomic_load(&control->tail), v));
        } else if (which < 11) {
            atomic_store(&control->head, nasty(atomic_load(&control->head), v));
        } else if (which < 12) {
            atomic_store(&control->futex_word, (uint32_t)v);
        } else if (which < 13) {
            uint32_t saved = atomic_load(&control->stream_state);
            atomic_store(&control->stream_state, v % 3 == 2 ? (uint32_t)(v >> 8) : (uint32_t)(v % 3));
            if (v & (UINT64_C(1) << 60)) {
                sleep_ns((v >> 32) % 300000);
                atomic_store(&control->stream_state, saved);
            }
        } else if (which < 14) {
            /* One word of the identity line, put back after a while: only
             * opens read it, and they must refuse it or cope. */
            _Atomic uint64_t *word =
                (_Atomic uint64_t *)(base + 8 * ((v >> 8) % (sizeof(struct shmq_identity) / 8)));
            uint64_t saved = atomic_load(word);
            atomic_store(word, nasty(saved, v >> 16));
            sleep_ns((v >> 32) % 300000);
            atomic_store(word, saved);
        } else if (state != NULL) {
            unsigned char *cs = shmq_region_base(state);
            size_t size = shmq_region_size(state), page = (size_t)sysconf(_SC_PAGESIZE);
            if (size < 3 * page)
                continue;
            if (which < 16) {
                atomic_store((_Atomic uint32_t *)(cs + page), (uint32_t)(v % 3 == 2 ? v >> 8 : v % 3));
            } else if (which < 19) {
                size_t at = 2 * page + (size_t)((v >> 8) % (size - 2 * page)) / 8 * 8;
                atomic_store((_Atomic uint64_t *)(cs + at), xorshift(&v));
            } else {
                /* The header, kept damaged half the time: a producer that
                 * opens then replaces the object. */
                _Atomic uint64_t *word = (_Atomic uint64_t *)(cs + 8 * ((v >> 8) % 5));
                uint64_t saved = atomic_load(word);
                atomic_store(word, nasty(saved, v >> 16));
                if (v & (UINT64_C(1) << 60)) {
                    sleep_ns((v >> 32) % 300000);
                    atomic_store(word, saved);
                }
            }
        }
        writes++;
        if (r % 16 == 0)
            sleep_ns((v >> 40) % 200000);
        else
            sched_yield();
    }
    printf("corrupter: %llu writes in %d s\n", (unsigned long long)writes, CORRUPT_SECONDS);
    shmq_region_close(state);
    shmq_region_close(ring);
    return 0;
}

static void print_tally(const char *who, const struct tally *t)
{
    printf("%s: calls=%llu delivered=%llu corrupt=%llu ended=%llu timed_out=%llu too_small=%llu "
           "opens=%llu open_failures=%llu worst_overshoot=%.1f ms | bad_rc=%llu (%d) "
           "bad_length=%llu late=%llu bad_open_rc=%llu (%d) bad_flag=%llu\n",
           who, (unsigned long long)t->calls, (unsigned long long)t->delivered,
           (unsigned long long)t->corrupt, (unsigned long long)t->ended,
           (unsigned long long)t->timed_out, (unsigned long long)t->too_small,
           (unsigned long long)t->reopens, (unsigned long long)t->open_failures,
           (double)t->worst_overshoot_ns / 1e6, (unsigned long long)t->bad_rc, t->last_bad_rc,
           (unsigned long long)t->bad_length, (unsigned long long)t->late,
           (unsigned long long)t->bad_open_rc, t->last_bad_open_rc, (unsigned long long)t->bad_flag);
}

static int tally_bad(const struct tally *t)
{
    return t->bad_rc || t->bad_length || t->late || t->bad_open_rc || t->bad_flag;
}

int main(void)
{
    test_start(60);
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *name = test_name("corrupt-live");
    sh = shared_alloc(sizeof(*sh));
    struct shmq_config config = {.slot_size = SLOT, .capacity = CAPACITY, .max_consumers = 4};
    struct shmq_producer *p;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    shmq_producer_close(p);

    int results[CONSUMERS + 1][2];
    pid_t kids[CONSUMERS + 1];
    for (int k = 0; k <= CONSUMERS; k++) {
        CHECK(pipe(results[k]) == 0);
        kids[k] = fork_child();
        if (kids[k] == 0)
            _exit(k == CONSUMERS ? run_producer(name, results[k][1])
                                 : run_consumer(name, k, results[k][1]));
        close(results[k][1]);
    }
    usleep(300000); /* undisturbed first */
    pid_t corrupter = fork_child();
    if (corrupter == 0)
        _exit(run_corrupter(name));
    int corrupter_status = wait_child(corrupter);
    usleep(300000); /* and on, over whatever the corrupter left */
    atomic_store(&sh->stop, 1);

    int failed = corrupter_status != 0;
    for (int k = 0; k <= CONSUMERS; k++) {
        int status = wait_child(kids[k]);
        struct tally t;
        if (status != 0 || read(results[k][0], &t, sizeof(t)) != (ssize_t)sizeof(t)) {
            fprintf(stderr, "%s %d died: status %d\n", k == CONSUMERS ? "producer" : "consumer", k,
                    status);
            failed = 1;
            continue;
        }
        char who[32] = "producer";
        if (k < CONSUMERS)
            snprintf(who, sizeof(who), "consumer %d", k);
        print_tally(who, &t);
        failed |= tally_bad(&t) || t.calls == 0;
        close(results[k][0]);
    }
    munmap(sh, sizeof(*sh));
    CHECK(!failed);
    return 0;
}

/*
 * Messages larger than a slot (max_message_size; producer.c, RECORDS):
 *
 *  - boundary sizes: 0, 1, payload - 1, payload, payload + 1, three slots,
 *    1 MiB and the maximum go through publish, publish_many and claim, and
 *    come back whole through poll, poll_alloc, poll_many and peek; one byte
 *    more is -EMSGSIZE and publishes nothing; the configuration's bounds
 *    (slot_size * capacity) and a mismatched max_message_size on attach;
 *  - mixed random sizes, lossless, a producer and two consumer processes:
 *    20,000 messages, every byte and the order checked;
 *  - lossy, a fast producer of 256 KiB - 1 MiB messages and a slow consumer:
 *    no torn message (each carries its checksum), received + lost ==
 *    published, lost > 0;
 *  - in-place reads of lapped large records release with SHMQ_OVERWRITTEN,
 *    and one that releases 0 never saw a changed byte;
 *  - kill -9 of a producer inside large records, 30 rounds: its successor
 *    continues, no reader gets a partial record, no sequence is reused.
 */
#include "adversary.h"

#include <signal.h>
#include <stdatomic.h>

/* Message `seq` of `n` bytes: its sequence, then bytes derived from it and
 * `salt`; the last 8 bytes (when n >= 24) are a checksum of the rest, so a
 * reader that does not know the salt still detects a torn copy. */
static void fill(unsigned char *p, size_t n, uint64_t seq, uint64_t salt)
{
    uint64_t rng = (seq ^ salt) * UINT64_C(0x9E3779B97F4A7C15) + 1;
    unsigned char head[16];
    memcpy(head, &seq, 8);
    memcpy(head + 8, &salt, 8);
    memcpy(p, head, n < 16 ? n : 16);
    size_t body = n >= 24 ? n - 8 : n;
    for (size_t i = 16; i < body; i += 8) {
        uint64_t word = xorshift(&rng);
        memcpy(p + i, &word, body - i < 8 ? body - i : 8);
    }
    if (n >= 24) {
        uint64_t sum = checksum(p, n - 8);
        memcpy(p + n - 8, &sum, 8);
    }
}

static int intact(const unsigned char *p, size_t n, uint64_t seq, uint64_t salt)
{
    unsigned char *want = malloc(n ? n : 1);
    CHECK(want != NULL);
    fill(want, n, seq, salt);
    int same = memcmp(want, p, n) == 0;
    free(want);
    return same;
}

/* Whole, without knowing its salt: the checksum matches and it names seq. */
static int self_consistent(const unsigned char *p, size_t n, uint64_t seq)
{
    uint64_t named, sum;
    if (n < 24)
        return 1;
    memcpy(&named, p, 8);
    memcpy(&sum, p + n - 8, 8);
    return named == seq && sum == checksum(p, n - 8);
}

static void *alloc_plain(void *context, size_t length)
{
    void **out = context;
    *out = malloc(length ? length : 1);
    return *out;
}

static struct shmq_producer *make_large(const char *name, uint32_t slot, uint32_t capacity,
                                        uint64_t largest, int lossless)
{
    struct shmq_config config = {.slot_size = slot, .capacity = capacity,
                                 .max_message_size = largest,
                                 .delivery = lossless ? SHMQ_LOSSLESS : SHMQ_LOSSY};
    struct shmq_producer *p = NULL;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    return p;
}

static void configuration_bounds(void)
{
    const char *name = test_name("large-bounds");
    struct shmq_config config = {.slot_size = 256, .capacity = 64,
                                 .max_message_size = 256 * 64 + 1};
    struct shmq_producer *p;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), -EINVAL);
    config.max_message_size = 256 * 64;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    CHECK(shmq_producer_max_message_size(p) == 256 * 64);
    shmq_producer_close(p);
    config.max_message_size = 256 * 16;
    CHECK_RC(shmq_producer_open(&p, name, &config, 0), -EMEDIUMTYPE);
    config.max_message_size = 0; /* whatever it is */
    CHECK_RC(shmq_producer_open(&p, name, &config, 0), 0);
    CHECK(shmq_producer_max_message_size(p) == 256 * 64);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    CHECK(shmq_consumer_max_message_size(c) == 256 * 64);
    shmq_consumer_close(c);
    shmq_producer_close(p);
    /* The default stays the slot's size. */
    const char *plain = test_name("large-default");
    p = make_producer(plain, 100, 8, 0);
    CHECK(shmq_producer_max_message_size(p) == 100);
    shmq_producer_close(p);
}

static void boundary_sizes(void)
{
    const char *name = test_name("large-sizes");
    enum { SLOT = 1000, CAPACITY = 4096 }; /* slot_stride 1008 */
    const uint64_t largest = (uint64_t)SLOT * CAPACITY;
    struct shmq_producer *p = make_large(name, SLOT, CAPACITY, largest, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    const size_t sizes[] = {0, 1, 1007, 1008, 1009, 3 * 1008, 1 << 20, largest - 1, largest};
    const size_t count = sizeof(sizes) / sizeof(sizes[0]);
    unsigned char *msg = malloc(largest), *buf = malloc(largest);
    CHECK(msg && buf);
    for (int how = 0; how < 4; how++) {
        for (size_t i = 0; i < count; i++) {
            size_t n = sizes[i];
            uint64_t seq = shmq_producer_next_sequence(p);
            fill(msg, n, seq, (uint64_t)how);
            if (how == 0 || how == 3) {
                CHECK_RC(shmq_producer_publish(p, msg, n, NULL), 0);
            } else if (how == 1) {
                const void *one[1] = {msg};
                CHECK_RC(shmq_producer_publish_many(p, one, &n, 1, NULL), 0);
            } else {
                void *data;
                CHECK_RC(shmq_producer_claim(p, n, &data), 0);
                CHECK(((uintptr_t)data & 15) == 0);
                memcpy(data, msg, n);
                CHECK_RC(shmq_producer_commit(p), 0);
            }
            size_t len = 0;
            if (how == 0) {
                CHECK_RC(shmq_consumer_poll(c, buf, largest, &len), 0);
                CHECK(len == n && intact(buf, n, seq, (uint64_t)how));
            } else if (how == 1) {
                void *got = NULL;
                CHECK_RC(shmq_consumer_poll_alloc(c, alloc_plain, &got, &len), 0);
                CHECK(len == n && intact(got, n, seq, (uint64_t)how));
                free(got);
            } else if (how == 2) {
                const void *view;
                CHECK_RC(shmq_consumer_peek(c, &view, &len), 0);
                CHECK(len == n && intact(view, n, seq, (uint64_t)how));
                CHECK_RC(shmq_consumer_release(c), 0);
            } else {
                size_t lens[4];
                CHECK(shmq_consumer_poll_many(c, buf, largest, lens, 4) == 1);
                CHECK(lens[0] == n && intact(buf, n, seq, (uint64_t)how));
            }
            CHECK(shmq_consumer_position(c) == seq + 1);
        }
    }
    /* A buffer one byte short: -EMSGSIZE, and the message stays. */
    fill(msg, 5000, shmq_producer_next_sequence(p), 9);
    CHECK_RC(shmq_producer_publish(p, msg, 5000, NULL), 0);
    size_t len = 0;
    CHECK_RC(shmq_consumer_poll(c, buf, 4999, &len), -EMSGSIZE);
    CHECK(len == 5000);
    CHECK_RC(shmq_consumer_poll(c, buf, 5000, &len), 0);
    /* One byte over the maximum publishes nothing, by any call. */
    uint64_t next = shmq_producer_next_sequence(p);
    unsigned char *over = malloc(largest + 1);
    CHECK(over != NULL);
    CHECK_RC(shmq_producer_publish(p, over, largest + 1, NULL), -EMSGSIZE);
    size_t over_len = largest + 1;
    const void *one[1] = {over};
    CHECK_RC(shmq_producer_publish_many(p, one, &over_len, 1, NULL), -EMSGSIZE);
    void *data;
    CHECK_RC(shmq_producer_claim(p, largest + 1, &data), -EMSGSIZE);
    CHECK(shmq_producer_next_sequence(p) == next);
    CHECK_RC(shmq_consumer_poll(c, buf, largest, &len), SHMQ_EMPTY);
    CHECK(shmq_consumer_lost(c) == 0);
    free(over);
    free(msg);
    free(buf);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

/* A size for mixed streams: mostly up to 2 KiB, one in 20 up to `large`. */
static size_t mixed_size(uint64_t *rng, size_t large)
{
    uint64_t r = xorshift(rng);
    return r % 20 == 0 ? (size_t)((r >> 8) % (large + 1)) : (size_t)((r >> 8) % 2049);
}

#define MIXED_COUNT 20000

static int mixed_reader(const char *name, int ready_fd)
{
    struct shmq_consumer *c;
    if (shmq_consumer_open(&c, name, SHMQ_START_LATEST) != 0)
        return 10;
    signal_fd(ready_fd);
    size_t cap = (size_t)shmq_consumer_max_message_size(c);
    unsigned char *buf = malloc(cap);
    uint64_t rng = 777;
    for (uint64_t s = 0; s < MIXED_COUNT; s++) {
        size_t len;
        int rc = shmq_consumer_poll_wait(c, buf, cap, &len, 20 * 1000000000LL);
        size_t want = mixed_size(&rng, 256 * 1024);
        if (rc != 0)
            return 11;
        if (shmq_consumer_position(c) != s + 1 || len != want || !intact(buf, len, s, 5))
            return 12;
    }
    int lost = shmq_consumer_lost(c) != 0;
    free(buf);
    shmq_consumer_close(c);
    return lost ? 13 : 0;
}

static void mixed_sizes_lossless_two_processes(void)
{
    const char *name = test_name("large-mixed");
    /* 2 MiB of slots for messages of up to 256 KiB: large records lap the
     * ring hundreds of times. */
    struct shmq_producer *p = make_large(name, 256, 8192, 256 * 1024, 1);
    pid_t kids[2];
    int ready[2];
    CHECK(pipe(ready) == 0);
    for (int k = 0; k < 2; k++) {
        kids[k] = fork_child();
        if (kids[k] == 0)
            _exit(mixed_reader(name, ready[1]));
    }
    CHECK(wait_fd(ready[0]) && wait_fd(ready[0]));
    CHECK_RC(shmq_producer_wait_consumers(p, 2, 10 * 1000000000LL), 2);
    unsigned char *msg = malloc(256 * 1024);
    uint64_t rng = 777;
    for (uint64_t s = 0; s < MIXED_COUNT; s++) {
        size_t n = mixed_size(&rng, 256 * 1024);
        fill(msg, n, s, 5);
        CHECK_RC(shmq_producer_publish_wait(p, msg, n, NULL, 20 * 1000000000LL), 0);
    }
    for (int k = 0; k < 2; k++)
        CHECK(wait_child(kids[k]) == 0);
    free(msg);
    close(ready[0]);
    close(ready[1]);
    shmq_producer_close(p);
}

struct lossy_tally {
    _Atomic uint64_t received, lost, torn, done;
};

static void lossy_large_no_torn_message(void)
{
    const char *name = test_name("large-lossy");
    struct lossy_tally *t = shared_alloc(sizeof(*t));
    /* A 4 MiB ring: four to sixteen messages per lap. */
    struct shmq_producer *p = make_large(name, 1024, 4096, 1 << 20, 0);
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        struct shmq_consumer *c;
        if (shmq_consumer_open(&c, name, SHMQ_START_EARLIEST) != 0)
            _exit(10);
        signal_fd(ready[1]);
        unsigned char *buf = malloc(1 << 20);
        uint64_t start = shmq_consumer_position(c);
        for (;;) {
            size_t len;
            uint64_t at = shmq_consumer_position(c);
            int rc = shmq_consumer_poll_wait(c, buf, 1 << 20, &len, 2000000000LL);
            if (rc == SHMQ_ENDED)
                break;
            if (rc != 0)
                _exit(11);
            (void)at;
            uint64_t seq = shmq_consumer_position(c) - 1;
            if (!self_consistent(buf, len, seq) || !intact(buf, len, seq, 3))
                atomic_fetch_add(&t->torn, 1);
            atomic_fetch_add(&t->received, 1);
            sleep_ns(200 * 1000); /* slow: the producer laps us */
        }
        atomic_store(&t->lost, shmq_consumer_lost(c));
        atomic_store(&t->done, shmq_consumer_position(c) - start);
        _exit(0);
    }
    CHECK(wait_fd(ready[0]));
    unsigned char *msg = malloc(1 << 20);
    uint64_t rng = 31;
    const uint64_t published = 3000;
    for (uint64_t s = 0; s < published; s++) {
        size_t n = (256 << 10) + (size_t)(xorshift(&rng) % ((768 << 10) + 1));
        fill(msg, n, s, 3);
        CHECK_RC(shmq_producer_publish(p, msg, n, NULL), 0);
    }
    shmq_producer_close(p); /* ends the stream */
    CHECK(wait_child(kid) == 0);
    printf("lossy large: received %llu, lost %llu, torn %llu of %llu\n",
           (unsigned long long)t->received, (unsigned long long)t->lost,
           (unsigned long long)t->torn, (unsigned long long)published);
    CHECK(t->torn == 0);
    CHECK(t->lost > 0);
    CHECK(t->received + t->lost == published && t->done == published);
    free(msg);
    close(ready[0]);
    close(ready[1]);
}

static void lapped_in_place_reads(void)
{
    const char *name = test_name("large-peek");
    struct shmq_producer *p = make_large(name, 256, 1024, 128 * 1024, 0); /* 256 KiB ring */
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    unsigned char *msg = malloc(128 * 1024), *copy = malloc(128 * 1024);
    /* Deterministic: hold a view of a 100 KiB record while the producer
     * writes records that reach into its slots. */
    for (int round = 0; round < 50; round++) {
        uint64_t seq = shmq_producer_next_sequence(p);
        fill(msg, 100 * 1024, seq, 1);
        CHECK_RC(shmq_producer_publish(p, msg, 100 * 1024, NULL), 0);
        const void *view;
        size_t len;
        CHECK_RC(shmq_consumer_peek(c, &view, &len), 0);
        CHECK(len == 100 * 1024 && intact(view, len, seq, 1));
        uint64_t lost = shmq_consumer_lost(c);
        /* 160 KiB more (a lap is 256 KiB): the record is overwritten in part
         * (its first slot untouched for some rounds, its tail not). */
        size_t more = 1000 + (size_t)round * 3000;
        for (size_t sent = 0; sent < 160 * 1024 + more; sent += 20000) {
            fill(msg, 20000, shmq_producer_next_sequence(p), 1);
            CHECK_RC(shmq_producer_publish(p, msg, 20000, NULL), 0);
        }
        memcpy(copy, view, len); /* torn, maybe */
        CHECK_RC(shmq_consumer_release(c), SHMQ_OVERWRITTEN);
        CHECK(shmq_consumer_lost(c) == lost + 1);
        /* Catch up for the next round. */
        while (shmq_consumer_poll(c, copy, 128 * 1024, &len) == 0)
            ;
    }
    /* Concurrent: a reader in a child, the producer here as fast as it can;
     * every view that releases 0 read the bytes that were published. */
    struct lossy_tally *t = shared_alloc(sizeof(*t));
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        struct shmq_consumer *r;
        if (shmq_consumer_open(&r, name, SHMQ_START_LATEST) != 0)
            _exit(10);
        signal_fd(ready[1]);
        for (;;) {
            const void *view;
            size_t len;
            int rc = shmq_consumer_wait(r, 2000000000LL);
            if (rc == SHMQ_ENDED)
                break;
            if (rc != 0 || (rc = shmq_consumer_peek(r, &view, &len)) == SHMQ_EMPTY)
                continue; /* lapped while waking up: resynchronised */
            if (rc != 0)
                _exit(11);
            uint64_t seq = shmq_consumer_position(r);
            memcpy(copy, view, len);
            rc = shmq_consumer_release(r);
            if (rc == 0) {
                if (!self_consistent(copy, len, seq) || !intact(copy, len, seq, 7))
                    atomic_fetch_add(&t->torn, 1);
                atomic_fetch_add(&t->received, 1);
            } else if (rc == SHMQ_OVERWRITTEN) {
                atomic_fetch_add(&t->done, 1);
            } else {
                _exit(12);
            }
        }
        atomic_store(&t->lost, shmq_consumer_lost(r));
        _exit(0);
    }
    CHECK(wait_fd(ready[0]));
    uint64_t rng = 5, until = now_ns() + 1500 * 1000000ull;
    while (now_ns() < until) {
        size_t n = 24 + (size_t)(xorshift(&rng) % (128 * 1024 - 24));
        fill(msg, n, shmq_producer_next_sequence(p), 7);
        CHECK_RC(shmq_producer_publish(p, msg, n, NULL), 0);
    }
    shmq_producer_close(p);
    CHECK(wait_child(kid) == 0);
    printf("concurrent in-place reads of large records: %llu clean, %llu overwritten, %llu lost\n",
           (unsigned long long)t->received, (unsigned long long)t->done,
           (unsigned long long)t->lost);
    CHECK(t->torn == 0 && t->received > 0);
    close(ready[0]);
    close(ready[1]);
    free(msg);
    free(copy);
    shmq_consumer_close(c);
}

static void producer_killed_inside_large_records(void)
{
    const char *name = test_name("large-kill9");
    struct shmq_producer *p = make_large(name, 512, 2048, 512 * 1024, 0); /* 1 MiB ring */
    shmq_producer_close(p);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    unsigned char *buf = malloc(512 * 1024);
    uint64_t last = UINT64_MAX, received = 0, rounds = 30;
    for (uint64_t round = 0; round < rounds; round++) {
        int ready[2];
        CHECK(pipe(ready) == 0);
        pid_t kid = fork_child();
        if (kid == 0) {
            struct shmq_producer *q;
            if (shmq_producer_open(&q, name, NULL, 0) != 0)
                _exit(10);
            signal_fd(ready[1]);
            uint64_t rng = round + 1;
            unsigned char *m = malloc(512 * 1024);
            for (;;) {
                size_t n = 24 + (size_t)(xorshift(&rng) % (512 * 1024 - 24));
                fill(m, n, shmq_producer_next_sequence(q), round);
                shmq_producer_publish(q, m, n, NULL);
            }
        }
        CHECK(wait_fd(ready[0]));
        close(ready[0]);
        close(ready[1]);
        uint64_t until = now_ns() + (2 + round % 5) * 1000000ull;
        /* Read while it writes, then kill it, most likely inside a record. */
        while (now_ns() < until) {
            size_t len;
            if (shmq_consumer_poll(c, buf, 512 * 1024, &len) == 0) {
                uint64_t seq = shmq_consumer_position(c) - 1;
                CHECK(self_consistent(buf, len, seq));
                CHECK(last == UINT64_MAX || seq > last); /* never a number twice */
                last = seq;
                received++;
            }
        }
        kill_and_reap(kid);
        size_t len;
        int rc;
        while ((rc = shmq_consumer_poll(c, buf, 512 * 1024, &len)) == 0) {
            uint64_t seq = shmq_consumer_position(c) - 1;
            CHECK(self_consistent(buf, len, seq));
            CHECK(last == UINT64_MAX || seq > last);
            last = seq;
            received++;
        }
        CHECK_RC(rc, SHMQ_EMPTY);
        /* The successor continues after the last whole record. */
        CHECK_RC(shmq_producer_open(&p, name, NULL, 0), 0);
        CHECK(last == UINT64_MAX || shmq_producer_next_sequence(p) > last);
        shmq_producer_close(p);
    }
    printf("producer killed -9 inside large records %llu times: %llu received, %llu lost\n",
           (unsigned long long)rounds, (unsigned long long)received,
           (unsigned long long)shmq_consumer_lost(c));
    CHECK(received > 0);
    free(buf);
    shmq_consumer_close(c);
}

int main(void)
{
    test_start(120);
    configuration_bounds();
    boundary_sizes();
    mixed_sizes_lossless_two_processes();
    lossy_large_no_torn_message();
    lapped_in_place_reads();
    producer_killed_inside_large_records();
    return 0;
}

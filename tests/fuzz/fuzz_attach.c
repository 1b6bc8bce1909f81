/*
 * libFuzzer target: attach and header validation, and reading slots, over
 * shared memory built from the fuzzer's bytes. tests/fuzz/run.sh builds and
 * runs it; tests/fuzz/README.md says how to replay a finding.
 *
 * WHAT ONE INPUT DOES
 *   1. Builds a valid queue by hand, in /dev/shm, from the geometry the
 *      prelude asks for: the ring through the core's own header code
 *      (shmq_header_init), `published` messages stamped through a producer
 *      bound to that mapping (so slots hold real, checkable payloads), and a
 *      consumer-state object tagged with the ring's instance. Starting from a
 *      valid queue puts every input past the magic and size checks, so
 *      coverage starts deep instead of waiting for the fuzzer to guess them.
 *   2. Damages it: up to 16 patches, each a 1/2/4/8-byte value written at an
 *      offset inside one area of the ring (identity line, control lines,
 *      slot headers, anywhere) or of the consumer-state object (header, wake
 *      page, entries, anywhere); optionally resizes either object, widens
 *      their modes or leaves the consumer state out.
 *   3. Opens a consumer (start latest, earliest or at a sequence, with or
 *      without an entry and an owner check) and, if asked, attaches a
 *      producer before or after it. The queue may be lossless, so that the
 *      producer reads the consumers' entries (backpressure.c) too. Patches marked "live" are written only now, through the harness's
 *      own writable mapping, while the consumer is attached: that is how a
 *      header field read twice, or a stamp or length trusted without a check,
 *      would show up as an out-of-bounds access.
 *   4. Runs up to 32 operations: poll, poll_many, poll_wait(timeout 0),
 *      poll_alloc, wait(timeout 0), peek/release, the accessors, and
 *      through the producer publish, publish_many, wait_room(0),
 *      claim/commit/abort and the list of consumers.
 *
 * WHAT IT ASSERTS (a failed check abort()s, so libFuzzer keeps the input)
 *   - Every return code is one the manual (csrc/shmq.h) documents for that
 *     call and that situation; -ENOMEM or -EMFILE count as failures, since
 *     nothing here should exhaust memory or descriptors.
 *   - A delivered length is <= slot_size and <= the buffer; -EMSGSIZE
 *     reports a length that is > the buffer and <= slot_size; poll_many's
 *     lengths fit the buffer together.
 *   - The consumer's position only moves forward, by exactly the messages
 *     delivered plus the growth of its lost count.
 *   - While no patch touched the identity line or the slots, every delivered
 *     message is byte for byte the one published under its sequence (or,
 *     before first_sequence, the empty stamp a new ring starts with).
 *   - Lossless, with nothing patched: the registered consumer loses nothing.
 *   - A refused publish or claim publishes nothing; a batch cut short by a
 *     full lossless ring published exactly its first messages.
 *   - Nothing leaks: LeakSanitizer checks memory; the lowest free descriptor
 *     is the same after every input; both objects are gone from /dev/shm.
 *   ASan and UBSan (-fno-sanitize-recover) watch every access and operation.
 *
 * INPUT FORMAT (bytes past the end of the input read as zero, so every input,
 * the empty one included, is a valid queue plus whatever it asks for)
 *
 *   prelude, 32 bytes:
 *     0  u8   flags (FLAG_* below)
 *     1  u8   capacity: 2 << (v % 6), so 2..64 slots
 *     2  u16  slot_size: v % 257, 0 meaning the default (1024)
 *     4  u8   consumer entries: 1 + v % 4
 *     5  u8   messages stamped before anyone attaches: v % (2 * capacity + 1)
 *     6  s8   ring size change in 8-byte steps (FLAG_RESIZE_RING)
 *     7  s8   consumer-state size change in 512-byte steps (FLAG_RESIZE_CONSUMERS)
 *     8  u64  first_sequence
 *     16 u64  the ring's instance number (| 1)
 *     24 u8   patches: v % 17
 *     25 u8   operations: v % 33
 *     26 u16  salt mixed into every payload
 *     28 u8   more flags (MORE_* below)
 *     29 s16  start position, relative to first_sequence (MORE_START_AT)
 *     31      unused
 *   patches, 11 bytes each: where u8 | offset u16 | value u64
 *     where bit 0: 0 ring, 1 consumer state; bits 1-2: width 1 << v;
 *     bits 3-4: area; bit 5: live (written after the consumer opened)
 *   operations, 2 bytes each: op u8 (op % 12 picks one of run_op's) | arg u8
 *
 * Each fuzzer process uses one queue name, "fuzz-TAG-PID", created and
 * unlinked within every input; TAG comes from $SHMQ_FUZZ_TAG so that run.sh
 * can sweep /dev/shm after a crash, the one exit that skips our unlink.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ring_internal.h"

#define PRELUDE_SIZE 32u
#define PATCH_SIZE 11u
#define OP_SIZE 2u
#define MAX_PATCHES 16u
#define MAX_OPS 32u

enum {
    FLAG_NO_CONSUMER_STATE = 1u << 0, /* leave the consumer-state object out */
    FLAG_START_EARLIEST = 1u << 1,
    FLAG_PRODUCER = 1u << 2,          /* attach a producer too */
    FLAG_PRODUCER_FIRST = 1u << 3,    /* ... before the consumer, not after */
    FLAG_RESIZE_RING = 1u << 4,
    FLAG_RESIZE_CONSUMERS = 1u << 5,
    FLAG_WIDE_MODES = 1u << 6,        /* ring 0644, consumer state 0666 */
    FLAG_NO_ENTRY = 1u << 7,          /* the consumer claims no entry */
};

enum {
    MORE_CHECK_OWNER = 1u << 0,       /* require our own uid: must pass */
    MORE_WRONG_OWNER = 1u << 1,       /* require another uid: -EPERM */
    MORE_PRODUCER_GEOMETRY = 1u << 2, /* the producer asks for slot_size + 1: -EMEDIUMTYPE */
    MORE_LOSSLESS = 1u << 3,          /* a lossless queue */
    MORE_START_AT = 1u << 4,          /* the consumer starts at a given sequence */
    MORE_PRODUCER_DELIVERY = 1u << 5, /* the producer asks for the other delivery: -EMEDIUMTYPE */
};

/* Ring areas a patch can aim at, and consumer-state areas. */
enum { RING_IDENTITY, RING_CONTROL_LINES, RING_SLOT_HEADERS, RING_ANYWHERE };
enum { STATE_HEADER, STATE_WAKE, STATE_ENTRIES, STATE_ANYWHERE };

/* The input, read as a stream that yields zeros past its end. */
struct reader {
    const uint8_t *data;
    size_t size;
    size_t at;
};

static void read_bytes(struct reader *r, void *out, size_t n)
{
    memset(out, 0, n);
    if (r->at < r->size) {
        size_t have = r->size - r->at < n ? r->size - r->at : n;
        memcpy(out, r->data + r->at, have);
    }
    r->at += n;
}

static uint8_t read_u8(struct reader *r) { uint8_t v; read_bytes(r, &v, 1); return v; }
static uint16_t read_u16(struct reader *r) { uint16_t v; read_bytes(r, &v, 2); return v; }
static uint64_t read_u64(struct reader *r) { uint64_t v; read_bytes(r, &v, 8); return v; }

#define FAIL(...)                                                      \
    do {                                                               \
        fprintf(stderr, "fuzz_attach: " __VA_ARGS__);                  \
        fputc('\n', stderr);                                           \
        abort();                                                       \
    } while (0)

#define EXPECT(cond, ...)             \
    do {                              \
        if (!(cond))                  \
            FAIL(__VA_ARGS__);        \
    } while (0)

static char queue_name[96];
static char ring_path[128];
static char state_path[128];

static void unlink_queue(void)
{
    shmq_unlink(queue_name, SHMQ_UNLINK_FORCE);
}

/* The message stamped under `sequence`: its length and its bytes, so that a
 * delivered copy can be checked without keeping what was published. */
static size_t pattern_length(uint64_t sequence, uint32_t salt, uint32_t slot_size)
{
    return (size_t)((sequence * 7u + salt) % ((uint64_t)slot_size + 1));
}

static uint8_t pattern_byte(uint64_t sequence, uint32_t salt, size_t i)
{
    return (uint8_t)(sequence * 31u + salt + i * 7u);
}

static void fill_pattern(uint8_t *buf, size_t length, uint64_t sequence, uint32_t salt)
{
    for (size_t i = 0; i < length; i++)
        buf[i] = pattern_byte(sequence, salt, i);
}

static int lowest_fd(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0)
        close(fd);
    return fd;
}

/* ------------------------------------------------------- the seed corpus */

/* Seeds, in the format above: valid queues of several geometries, each with
 * a mix of operations, some with the patches that reach the deeper checks
 * (a live stamp that laps the reader, an impossible length, a head far
 * ahead, a consumer-state header that disagrees with the ring, a raised
 * wake flag, a foreign layout version). SHMQ_FUZZ_WRITE_SEEDS=DIR writes
 * them to DIR and exits; run.sh does that before every run. */
struct seed {
    uint8_t flags, capacity_log2, published, more;
    uint16_t slot_size;
    uint64_t first_sequence;
    const char *patches; /* PATCH_SIZE bytes each */
    uint8_t patch_count;
    const char *ops;     /* OP_SIZE bytes each */
    uint8_t op_count;
};

/* A byte string and how many records it holds. */
#define PATCHES(bytes) .patches = bytes, .patch_count = (uint8_t)((sizeof(bytes) - 1) / PATCH_SIZE)
#define OPS(bytes) .ops = bytes, .op_count = (uint8_t)((sizeof(bytes) - 1) / OP_SIZE)

/* op arg pairs: poll, poll_many, poll_wait, poll_alloc, misc, publish,
 * publish_many, wait; several buffer sizes. */
#define SEED_OPS_READ "\0\0\1\x30\2\0\3\0\4\0\0\x06\1\x01\3\x01\7\0\0\x02"
/* peek, claim, peek with a poll between, claim and abort, wait_room,
 * publish_wait, list, publish_many, peek */
#define SEED_OPS_ZERO_COPY "\x08\0\x09\0\x08\x01\x09\x03\x0a\x01\x0a\0\x0b\x04\6\x07\x08\0"
/* publish_many until a lossless ring is full, then read and publish again */
#define SEED_OPS_FILL "\6\x07\6\x07\6\x07\x0a\x01\x0a\0\0\0\1\x70\6\x07\x0b\x04\x07\0"
#define SEED_OPS_MIXED "\5\0\0\0\6\x07\1\x70\5\x80\6\x83\0\x03\2\0\6\x05\3\0\4\x10\1\x11"
/* where | offset u16 | value u64 */
#define PATCH_LIVE_STAMP "\x36\0\0\xff\xff\xff\xff\xff\xff\xff\x7f"
#define PATCH_LIVE_LENGTH "\x34\x08\0\xff\xff\xff\xff\0\0\0\0"
#define PATCH_LIVE_HEAD "\x2e\0\0\0\x10\0\0\0\0\0\0"
#define PATCH_ENTRY_COUNT "\x05\x0c\0\x07\0\0\0\0\0\0\0"
#define PATCH_WAKE_FLAG "\x0d\0\0\x01\0\0\0\0\0\0\0"
#define PATCH_VERSION "\x04\x08\0\x03\0\0\0\0\0\0\0"

#define EARLIEST FLAG_START_EARLIEST
static const struct seed seeds[] = {
    {.flags = EARLIEST, .capacity_log2 = 2, .published = 5, .slot_size = 24,
     PATCHES(""), OPS(SEED_OPS_READ)},
    {.flags = EARLIEST, .published = 4, .slot_size = 8, .first_sequence = UINT64_MAX - 2,
     PATCHES(""), OPS(SEED_OPS_READ)},
    {.flags = EARLIEST | FLAG_PRODUCER, .published = 3, .slot_size = 16,
     PATCHES(""), OPS(SEED_OPS_MIXED)},
    {.flags = FLAG_PRODUCER | FLAG_PRODUCER_FIRST | FLAG_NO_CONSUMER_STATE, .capacity_log2 = 3,
     .published = 9, .slot_size = 40, .first_sequence = 7, PATCHES(""), OPS(SEED_OPS_MIXED)},
    {.flags = EARLIEST | FLAG_NO_ENTRY, .capacity_log2 = 1, .published = 4,
     .more = MORE_CHECK_OWNER, .slot_size = 200,
     PATCHES(PATCH_LIVE_STAMP PATCH_LIVE_LENGTH), OPS(SEED_OPS_READ)},
    {.flags = EARLIEST | FLAG_PRODUCER, .capacity_log2 = 2, .published = 8, .slot_size = 33,
     .first_sequence = 100, PATCHES(PATCH_LIVE_HEAD PATCH_WAKE_FLAG), OPS(SEED_OPS_MIXED)},
    {.flags = FLAG_PRODUCER | FLAG_PRODUCER_FIRST, .capacity_log2 = 1, .published = 2,
     .more = MORE_PRODUCER_GEOMETRY, .slot_size = 64,
     PATCHES(PATCH_ENTRY_COUNT), OPS(SEED_OPS_READ)},
    {.flags = FLAG_PRODUCER | FLAG_WIDE_MODES, .capacity_log2 = 1, .published = 2,
     .slot_size = 64, PATCHES(PATCH_VERSION), OPS(SEED_OPS_READ)},
    {.flags = FLAG_RESIZE_RING | EARLIEST, .capacity_log2 = 1, .published = 2,
     .more = MORE_WRONG_OWNER, .slot_size = 64, PATCHES(""), OPS(SEED_OPS_READ)},
    {.flags = EARLIEST | FLAG_PRODUCER, .capacity_log2 = 1, .published = 3, .slot_size = 48,
     PATCHES(""), OPS(SEED_OPS_ZERO_COPY)},
    {.flags = FLAG_PRODUCER, .capacity_log2 = 1, .more = MORE_LOSSLESS, .slot_size = 32,
     PATCHES(""), OPS(SEED_OPS_FILL)},
    {.flags = FLAG_PRODUCER | FLAG_PRODUCER_FIRST, .capacity_log2 = 2, .published = 6,
     .more = MORE_LOSSLESS | MORE_START_AT, .slot_size = 20, PATCHES(""), OPS(SEED_OPS_ZERO_COPY)},
};

static void put(uint8_t *out, size_t at, const void *value, size_t n)
{
    memcpy(out + at, value, n);
}

static void write_seeds(const char *dir)
{
    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
        const struct seed *s = &seeds[i];
        uint8_t out[PRELUDE_SIZE + MAX_PATCHES * PATCH_SIZE + MAX_OPS * OP_SIZE] = {0};
        uint8_t entries = 1, ring_delta = (uint8_t)-8, patches = s->patch_count, ops = s->op_count;
        uint64_t instance = 0x5eed0000u + i;
        uint16_t salt = (uint16_t)(17 * i);
        put(out, 0, &s->flags, 1);
        put(out, 1, &s->capacity_log2, 1);
        put(out, 2, &s->slot_size, 2);
        put(out, 4, &entries, 1);
        put(out, 5, &s->published, 1);
        put(out, 6, &ring_delta, 1);
        put(out, 8, &s->first_sequence, 8);
        put(out, 16, &instance, 8);
        put(out, 24, &patches, 1);
        put(out, 25, &ops, 1);
        put(out, 26, &salt, 2);
        put(out, 28, &s->more, 1);
        size_t at = PRELUDE_SIZE;
        put(out, at, s->patches, (size_t)patches * PATCH_SIZE);
        at += (size_t)patches * PATCH_SIZE;
        put(out, at, s->ops, (size_t)ops * OP_SIZE);
        at += (size_t)ops * OP_SIZE;
        char path[4096];
        snprintf(path, sizeof(path), "%s/seed-%02zu", dir, i);
        FILE *f = fopen(path, "wb");
        if (f == NULL || fwrite(out, 1, at, f) != at || fclose(f) != 0) {
            fprintf(stderr, "fuzz_attach: cannot write %s: %s\n", path, strerror(errno));
            exit(1);
        }
    }
    exit(0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *seed_dir = getenv("SHMQ_FUZZ_WRITE_SEEDS");
    if (seed_dir != NULL)
        write_seeds(seed_dir);
    const char *tag = getenv("SHMQ_FUZZ_TAG");
    if (tag == NULL || tag[0] == '\0' || strlen(tag) > 32 ||
        strspn(tag, "0123456789abcdefghijklmnopqrstuvwxyz") != strlen(tag))
        tag = "x";
    snprintf(queue_name, sizeof(queue_name), "fuzz-%s-%d", tag, (int)getpid());
    snprintf(ring_path, sizeof(ring_path), "/dev/shm/" SHMQ_NAME_PREFIX "%s", queue_name);
    snprintf(state_path, sizeof(state_path), "%s" SHMQ_CONSUMERS_SUFFIX, ring_path);
    unlink_queue();
    atexit(unlink_queue);
    return 0;
}

/* ------------------------------------------------------------- the queue */

struct prelude {
    uint8_t flags;
    uint8_t more;
    struct shmq_config config;
    uint64_t instance;
    uint32_t published;
    int8_t ring_delta;
    int8_t state_delta;
    uint32_t patches;
    uint32_t ops;
    uint32_t salt;
    int16_t start_delta;
};

static void read_prelude(struct reader *r, struct prelude *p)
{
    memset(p, 0, sizeof(*p));
    p->flags = read_u8(r);
    p->config.capacity = 2u << (read_u8(r) % 6);
    p->config.slot_size = read_u16(r) % 257;
    p->config.max_consumers = 1 + read_u8(r) % 4;
    p->published = read_u8(r) % (2 * p->config.capacity + 1);
    p->ring_delta = (int8_t)read_u8(r);
    p->state_delta = (int8_t)read_u8(r);
    p->config.first_sequence = read_u64(r);
    p->instance = read_u64(r) | 1;
    p->patches = read_u8(r) % (MAX_PATCHES + 1);
    p->ops = read_u8(r) % (MAX_OPS + 1);
    p->salt = read_u16(r);
    p->more = read_u8(r);
    p->start_delta = (int16_t)read_u16(r);
    if (p->more & MORE_LOSSLESS)
        p->config.delivery = SHMQ_LOSSLESS;
    r->at = PRELUDE_SIZE;
}

/* The harness's own writable mappings of the two objects. */
struct queue {
    struct shmq_geometry geometry;
    struct shmq_region *ring;
    struct shmq_consumer_state state; /* state.region NULL: none */
    int payloads_trusted; /* no patch touched geometry or slots */
};

/* Builds a valid queue from the prelude; 0, or -1 if the host refused. */
static int build_queue(struct queue *q, const struct prelude *p)
{
    memset(q, 0, sizeof(*q));
    if (shmq_geometry_plan(&q->geometry, &p->config) < 0)
        FAIL("geometry_plan refused capacity %u slot_size %u", p->config.capacity,
             p->config.slot_size);
    /* The input chooses the instance, so runs are reproducible. */
    q->geometry.instance = p->instance;
    if (shmq_region_create(&q->ring, queue_name, (size_t)q->geometry.total_size, 0600) < 0)
        return -1;
    unsigned char *base = shmq_region_base(q->ring);
    shmq_header_init(base, &q->geometry);
    /* Messages stamped by a producer bound to our mapping: the core's own
     * write path, so the slots hold exactly what a real producer leaves. */
    struct shmq_producer stamper;
    memset(&stamper, 0, sizeof(stamper));
    shmq_producer_bind(&stamper, base, &q->geometry, NULL);
    static uint8_t payload[SHMQ_DEFAULT_SLOT_SIZE];
    for (uint32_t i = 0; i < p->published; i++) {
        uint64_t s = shmq_producer_next_sequence(&stamper);
        size_t length = pattern_length(s, p->salt, q->geometry.slot_size);
        fill_pattern(payload, length, s, p->salt);
        if (shmq_producer_publish(&stamper, payload, length, NULL) != 0)
            FAIL("stamping message %u failed", i);
    }
    if (!(p->flags & FLAG_NO_CONSUMER_STATE) &&
        shmq_consumers_create(&q->state, queue_name, &q->geometry, 0600) < 0)
        return -1;
    shmq_header_publish(base);
    q->payloads_trusted = 1;
    return 0;
}

static void close_queue(struct queue *q)
{
    shmq_region_close(q->ring);
    shmq_consumers_close(&q->state);
    q->ring = NULL;
}

/* Writes one patch; live ones wait until the consumer is open. */
static void apply_patch(struct queue *q, uint8_t where, uint16_t offset, uint64_t value)
{
    size_t width = (size_t)1 << ((where >> 1) & 3);
    unsigned area = (where >> 3) & 3;
    unsigned char *base;
    size_t size, start, length;
    if ((where & 1) == 0) {
        const struct shmq_geometry *g = &q->geometry;
        base = shmq_region_base(q->ring);
        size = shmq_region_size(q->ring);
        switch (area) {
        case RING_IDENTITY: start = 0; length = SHMQ_LINE; break;
        case RING_CONTROL_LINES: start = SHMQ_LINE; length = 3 * SHMQ_LINE; break;
        case RING_SLOT_HEADERS: {
            /* The stamp and length words of one slot. */
            size_t slot = offset / SHMQ_SLOT_HEADER % g->capacity;
            start = g->slots_offset + slot * g->slot_stride;
            length = SHMQ_SLOT_HEADER;
            break;
        }
        default: start = 0; length = size; break;
        }
        if (area != RING_CONTROL_LINES)
            q->payloads_trusted = 0;
    } else {
        if (q->state.region == NULL)
            return;
        base = shmq_region_base(q->state.region);
        size = shmq_region_size(q->state.region);
        size_t page = q->geometry.page_size;
        switch (area) {
        case STATE_HEADER: start = 0; length = 64; break;
        /* The wake flag's line and the lossless producer's line. */
        case STATE_WAKE: start = page; length = 2 * SHMQ_LINE; break;
        case STATE_ENTRIES: start = 2 * page; length = size > 2 * page ? size - 2 * page : 0; break;
        default: start = 0; length = size; break;
        }
    }
    if (length < width || start + length > size)
        return;
    size_t at = start + (offset % (length - width + 1));
    at -= at % width; /* aligned, as the atomics reading it expect; every start is */
    memcpy(base + at, &value, width);
}

/* Changes an object's size: never after anyone mapped it (a consumer that
 * touches a page past a shrunken end gets SIGBUS, which RELIABILITY.md puts
 * down to fallocate at creation, not to the reader). */
static void resize(const char *path, int64_t delta)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) == 0) {
        int64_t size = (int64_t)st.st_size + delta;
        if (ftruncate(fd, size < 0 ? 0 : size) != 0)
            FAIL("ftruncate %s: %s", path, strerror(errno));
    }
    close(fd);
}

/* ------------------------------------------------------------ the checks */

static int open_code_ok(int rc)
{
    switch (rc) {
    case 0: case -EPROTO: case -ENODATA: case -EPROTONOSUPPORT: case -EBADMSG:
        return 1;
    default:
        return 0;
    }
}

/* poll and poll_many never report the end of the stream (the blocking calls
 * do), and poll_wait(0) does not wait, so it reports what poll does. */
static int poll_code_ok(int rc)
{
    return rc == 0 || rc == SHMQ_EMPTY || rc == SHMQ_CORRUPT || rc == -EMSGSIZE;
}

/* What a consumer has been seen to do, to check its accounting. */
struct tally {
    uint64_t start_position;
    uint64_t start_lost;
    uint64_t delivered;
    uint64_t position;
    uint64_t lost;
};

static void check_progress(struct shmq_consumer *c, struct tally *t, const char *what)
{
    uint64_t position = shmq_consumer_position(c);
    uint64_t lost = shmq_consumer_lost(c);
    EXPECT((int64_t)(position - t->position) >= 0, "%s moved the position back: %llu -> %llu",
           what, (unsigned long long)t->position, (unsigned long long)position);
    EXPECT(lost >= t->lost, "%s shrank the lost count", what);
    EXPECT(position - t->start_position == t->delivered + (lost - t->start_lost),
           "%s: position advanced %llu but delivered %llu + lost %llu", what,
           (unsigned long long)(position - t->start_position), (unsigned long long)t->delivered,
           (unsigned long long)(lost - t->start_lost));
    t->position = position;
    t->lost = lost;
}

/* A delivered message: its size, and its bytes when they can be known. */
static void check_message(const struct queue *q, struct shmq_consumer *c, uint64_t sequence,
                          const uint8_t *buf, size_t length, uint32_t salt, const char *what)
{
    uint32_t slot_size = shmq_consumer_slot_size(c);
    EXPECT(length <= slot_size, "%s delivered %zu bytes, slot_size %u", what, length, slot_size);
    if (!q->payloads_trusted)
        return;
    /* A sequence before first_sequence is reachable only through a head
     * patched behind it; its slot may still hold the stamp header_init left
     * there ("one lap before", length 0), which reads as an empty message.
     * Garbage in shared memory can't be told from messages; the check is
     * that nothing else comes out. */
    if ((int64_t)(sequence - q->geometry.first_sequence) < 0 && length == 0)
        return;
    size_t want = pattern_length(sequence, salt, slot_size);
    EXPECT(length == want, "%s: sequence %llu has %zu bytes, published %zu", what,
           (unsigned long long)sequence, length, want);
    for (size_t i = 0; i < length; i++)
        EXPECT(buf[i] == pattern_byte(sequence, salt, i), "%s: sequence %llu differs at byte %zu",
               what, (unsigned long long)sequence, i);
}

/* A buffer of exactly the size asked for, so ASan sees one byte too many. */
static uint8_t *buffer_for(uint8_t arg, uint32_t slot_size, size_t *size)
{
    switch (arg & 3) {
    case 0: *size = slot_size; break;
    case 1: *size = 0; return NULL;
    case 2: *size = arg >> 2; break;
    default: *size = (size_t)slot_size + (arg >> 2); break;
    }
    uint8_t *buf = malloc(*size ? *size : 1);
    if (buf == NULL)
        FAIL("out of memory");
    return buf;
}

struct alloc_state {
    uint8_t *buf;
    size_t length;
    uint32_t slot_size;
    int refuse;
};

static void *alloc_message(void *context, size_t length)
{
    struct alloc_state *a = context;
    EXPECT(length <= a->slot_size, "poll_alloc asked for %zu bytes, slot_size %u", length,
           a->slot_size);
    /* The manual: a copy the producer overwrote is dropped and alloc called
     * again; the previous buffer is ours to release. */
    free(a->buf);
    a->buf = NULL;
    if (a->refuse)
        return NULL;
    a->buf = malloc(length ? length : 1);
    a->length = length;
    return a->buf;
}

/* -------------------------------------------------------------- the ops */

struct session {
    const struct prelude *prelude;
    struct queue *queue;
    struct shmq_consumer *consumer;
    struct shmq_producer *producer;
    struct tally tally;
};

static void op_poll(struct session *s, uint8_t op, uint8_t arg)
{
    struct shmq_consumer *c = s->consumer;
    uint32_t slot_size = shmq_consumer_slot_size(c);
    size_t size;
    uint8_t *buf = buffer_for(arg, slot_size, &size);
    uint64_t before = shmq_consumer_position(c);
    size_t length = (size_t)-1;
    int rc = op == 0 ? shmq_consumer_poll(c, buf, size, &length)
                     : shmq_consumer_poll_wait(c, buf, size, &length, 0);
    const char *what = op == 0 ? "poll" : "poll_wait(0)";
    EXPECT(poll_code_ok(rc), "%s returned %d (%s)", what, rc, shmq_strerror(rc));
    if (rc == 0) {
        EXPECT(length <= size, "%s delivered %zu bytes into %zu", what, length, size);
        s->tally.delivered++;
        check_message(s->queue, c, shmq_consumer_position(c) - 1, buf, length,
                      s->prelude->salt, what);
    } else if (rc == -EMSGSIZE) {
        EXPECT(length > size && length <= slot_size,
               "%s: -EMSGSIZE with length %zu, buffer %zu, slot_size %u", what, length, size,
               slot_size);
        EXPECT(shmq_consumer_position(c) - before == shmq_consumer_lost(c) - s->tally.lost,
               "%s: -EMSGSIZE consumed a message", what);
    }
    free(buf);
    check_progress(c, &s->tally, what);
}

static void op_poll_many(struct session *s, uint8_t arg)
{
    struct shmq_consumer *c = s->consumer;
    uint32_t slot_size = shmq_consumer_slot_size(c);
    size_t max = 1 + (arg >> 5);
    size_t size;
    uint8_t *buf = buffer_for(arg, slot_size * (uint32_t)((arg & 16) ? max : 1), &size);
    size_t lengths[8];
    int n = shmq_consumer_poll_many(c, buf, size, lengths, max);
    EXPECT(n >= 0 || n == -EMSGSIZE || n == SHMQ_CORRUPT,
           "poll_many returned %d (%s)", n, shmq_strerror(n));
    EXPECT(n <= (int)max, "poll_many returned %d messages, at most %zu asked", n, max);
    if (n > 0) {
        /* The messages were delivered in order, ending at position - 1, only
         * if nothing was skipped between them; the per-message check needs
         * their sequences, so it runs only when the ring is intact. */
        uint64_t end = shmq_consumer_position(c);
        size_t used = 0;
        for (int i = 0; i < n; i++)
            used += lengths[i];
        EXPECT(used <= size, "poll_many wrote %zu bytes into %zu", used, size);
        s->tally.delivered += (uint64_t)n;
        if (shmq_consumer_lost(c) == s->tally.lost) {
            size_t at = 0;
            for (int i = 0; i < n; i++) {
                /* buf is NULL only with size 0: then every message was empty. */
                check_message(s->queue, c, end - (uint64_t)n + (uint64_t)i, buf ? buf + at : buf,
                              lengths[i], s->prelude->salt, "poll_many");
                at += lengths[i];
            }
        } else {
            for (int i = 0; i < n; i++)
                EXPECT(lengths[i] <= slot_size, "poll_many delivered %zu bytes", lengths[i]);
        }
    }
    free(buf);
    check_progress(c, &s->tally, "poll_many");
}

static void op_poll_alloc(struct session *s, uint8_t arg)
{
    struct shmq_consumer *c = s->consumer;
    struct alloc_state a = {.slot_size = shmq_consumer_slot_size(c), .refuse = arg & 1};
    size_t length = (size_t)-1;
    int rc = shmq_consumer_poll_alloc(c, alloc_message, &a, &length);
    EXPECT(rc == 0 || rc == SHMQ_EMPTY || rc == SHMQ_CORRUPT || (rc == -ENOMEM && a.refuse),
           "poll_alloc returned %d (%s)", rc, shmq_strerror(rc));
    if (rc == 0) {
        EXPECT(a.buf != NULL && length == a.length, "poll_alloc: length %zu, allocated %zu",
               length, a.length);
        s->tally.delivered++;
        check_message(s->queue, c, shmq_consumer_position(c) - 1, a.buf, length,
                      s->prelude->salt, "poll_alloc");
    }
    free(a.buf);
    check_progress(c, &s->tally, "poll_alloc");
}

/* Publishes through the producer: one message (op 5) or a batch (op 6). */
static void op_publish(struct session *s, uint8_t op, uint8_t arg)
{
    struct shmq_producer *p = s->producer;
    if (p == NULL)
        return;
    uint32_t slot_size = shmq_producer_slot_size(p);
    static uint8_t payload[8][SHMQ_DEFAULT_SLOT_SIZE + 1];
    const void *messages[8];
    size_t lengths[8];
    size_t count = op == 5 ? 1 : 1 + arg % 8;
    /* The top bit of arg makes the last message one byte too long: the call
     * must refuse it and publish nothing, the rest of a batch included. */
    int too_long = (arg & 0x80) != 0;
    uint64_t next = shmq_producer_next_sequence(p);
    for (size_t i = 0; i < count; i++) {
        uint64_t sequence = next + i;
        lengths[i] = pattern_length(sequence, s->prelude->salt, slot_size);
        if (too_long && i == count - 1)
            lengths[i] = (size_t)slot_size + 1;
        fill_pattern(payload[i], lengths[i], sequence, s->prelude->salt);
        messages[i] = payload[i];
    }
    uint64_t last = UINT64_MAX;
    int rc = op == 5 ? shmq_producer_publish(p, messages[0], lengths[0], &last)
                     : shmq_producer_publish_many(p, messages, lengths, count, &last);
    uint64_t done = shmq_producer_next_sequence(p) - next;
    if (too_long) {
        EXPECT(rc == -EMSGSIZE, "publishing slot_size + 1 bytes returned %d", rc);
        EXPECT(done == 0, "a refused publish moved the sequence");
        return;
    }
    EXPECT(rc == 0 || (rc == SHMQ_FULL && shmq_producer_lossless(p)),
           "publish returned %d (%s)", rc, shmq_strerror(rc));
    if (rc == 0)
        EXPECT(done == count, "publish of %zu moved the sequence by %llu", count,
               (unsigned long long)done);
    else
        EXPECT(done < count, "a full ring took all %zu messages", count);
    if (done > 0)
        EXPECT(last == next + done - 1, "publish numbered %llu, expected %llu",
               (unsigned long long)last, (unsigned long long)(next + done - 1));
    else
        EXPECT(last == UINT64_MAX, "a publish of nothing set its sequence");
}

/* wait_room(0), or publish_wait(0), which must not wait. */
static void op_room(struct session *s, uint8_t arg)
{
    struct shmq_producer *p = s->producer;
    if (p == NULL)
        return;
    int rc;
    if (arg & 1) {
        rc = shmq_producer_wait_room(p, 0);
        EXPECT(rc == 0 || (rc == SHMQ_FULL && shmq_producer_lossless(p)),
               "wait_room(0) returned %d (%s)", rc, shmq_strerror(rc));
        return;
    }
    uint64_t next = shmq_producer_next_sequence(p);
    uint8_t payload[SHMQ_DEFAULT_SLOT_SIZE];
    size_t length = pattern_length(next, s->prelude->salt, shmq_producer_slot_size(p));
    fill_pattern(payload, length, next, s->prelude->salt);
    rc = shmq_producer_publish_wait(p, payload, length, NULL, 0);
    EXPECT(rc == 0 || (rc == SHMQ_FULL && shmq_producer_lossless(p)),
           "publish_wait(0) returned %d (%s)", rc, shmq_strerror(rc));
    EXPECT(shmq_producer_next_sequence(p) - next == (rc == 0), "publish_wait moved the sequence wrongly");
}

/* The producer's list of consumers: it reads every entry, which consumers
 * write. */
static void op_list(struct session *s, uint8_t arg)
{
    struct shmq_producer *p = s->producer;
    if (p == NULL)
        return;
    struct shmq_consumer_info infos[4];
    size_t max = arg % 5;
    int n = shmq_producer_consumers(p, max ? infos : NULL, max);
    EXPECT(n >= 0 && (size_t)n <= max, "consumers(%zu) returned %d", max, n);
    for (int i = 0; i < n; i++) {
        EXPECT(infos[i].index < SHMQ_CONSUMER_ENTRIES_MAX && (infos[i].registered & ~1) == 0,
               "consumers: entry %u registered %d", infos[i].index, infos[i].registered);
        EXPECT((int64_t)infos[i].lag >= 0, "consumers: lag %llu", (unsigned long long)infos[i].lag);
    }
}

#ifdef SHMQ_OVERWRITTEN /* the zero-copy API */
/* peek, look at every byte lent out, maybe try a poll in between (it must
 * refuse), release. */
static void op_peek(struct session *s, uint8_t arg)
{
    struct shmq_consumer *c = s->consumer;
    const void *data = NULL;
    size_t length = (size_t)-1;
    int rc = shmq_consumer_peek(c, &data, &length);
    EXPECT(rc == 0 || rc == SHMQ_EMPTY || rc == SHMQ_CORRUPT, "peek returned %d (%s)", rc,
           shmq_strerror(rc));
    if (rc != 0) {
        EXPECT(shmq_consumer_release(c) == -EINVAL, "release without a peek succeeded");
        check_progress(c, &s->tally, "peek");
        return;
    }
    uint32_t slot_size = shmq_consumer_slot_size(c);
    EXPECT(length <= slot_size && data != NULL, "peek lent %zu bytes, slot_size %u", length,
           slot_size);
    /* Touch every byte: a pointer or length past the slot faults here. */
    static uint8_t copy[SHMQ_DEFAULT_SLOT_SIZE];
    memcpy(copy, data, length);
    if (arg & 1) {
        uint8_t buf[8];
        size_t ignored;
        int again = shmq_consumer_poll(c, buf, sizeof(buf), &ignored);
        EXPECT(again == -EINPROGRESS, "poll during a peek returned %d", again);
        const void *data2;
        EXPECT(shmq_consumer_peek(c, &data2, &ignored) == -EINPROGRESS, "a second peek succeeded");
    }
    uint64_t sequence = shmq_consumer_position(c);
    rc = shmq_consumer_release(c);
    EXPECT(rc == 0 || rc == SHMQ_OVERWRITTEN, "release returned %d (%s)", rc, shmq_strerror(rc));
    EXPECT(shmq_consumer_position(c) == sequence + 1, "release did not move past the message");
    if (rc == 0) {
        s->tally.delivered++;
        check_message(s->queue, c, sequence, copy, length, s->prelude->salt, "peek");
    }
    check_progress(c, &s->tally, "release");
}

/* claim a loan, fill it with the message its sequence should carry, then
 * commit or abort. */
static void op_claim(struct session *s, uint8_t arg)
{
    struct shmq_producer *p = s->producer;
    if (p == NULL)
        return;
    uint32_t slot_size = shmq_producer_slot_size(p);
    uint64_t next = shmq_producer_next_sequence(p);
    size_t size = (arg & 0x80) ? (size_t)slot_size + 1
                               : pattern_length(next, s->prelude->salt, slot_size);
    void *data = NULL;
    int rc = shmq_producer_claim(p, size, &data);
    if (arg & 0x80) {
        EXPECT(rc == -EMSGSIZE, "claim of slot_size + 1 returned %d", rc);
        return;
    }
    EXPECT(rc == 0 || (rc == SHMQ_FULL && shmq_producer_lossless(p)), "claim returned %d (%s)", rc,
           shmq_strerror(rc));
    if (rc != 0)
        return;
    EXPECT(data != NULL && ((uintptr_t)data & 15) == 0, "claim lent a misaligned loan");
    fill_pattern(data, size, next, s->prelude->salt);
    if (arg & 1) {
        uint8_t one = 0;
        EXPECT(shmq_producer_publish(p, &one, 1, NULL) == -EINPROGRESS,
               "publish during a loan did not refuse");
    }
    if (arg & 2) {
        shmq_producer_abort(p);
        EXPECT(shmq_producer_next_sequence(p) == next, "abort moved the sequence");
        EXPECT(shmq_producer_commit(p) == -EINVAL, "commit after abort succeeded");
        return;
    }
    rc = shmq_producer_commit(p);
    uint64_t sequence = shmq_producer_next_sequence(p) - 1;
    EXPECT(rc == 0 && sequence == next && shmq_producer_next_sequence(p) == next + 1,
           "commit returned %d, sequence %llu, expected %llu", rc, (unsigned long long)sequence,
           (unsigned long long)next);
}
#endif

static void op_misc(struct session *s, uint8_t arg)
{
    struct shmq_consumer *c = s->consumer;
    int rc = shmq_consumer_ended(c);
    EXPECT(rc == 0 || rc == 1, "ended returned %d", rc);
    rc = shmq_consumer_producer_alive(c);
    EXPECT(rc == (s->producer != NULL), "producer_alive returned %d with%s a producer", rc,
           s->producer ? "" : "out");
    rc = shmq_consumer_unlinked(c);
    EXPECT(rc == 0, "unlinked returned %d", rc);
    rc = shmq_consumer_entry(c);
    EXPECT(rc >= -1 && rc < (int)SHMQ_CONSUMER_ENTRIES_MAX, "entry returned %d", rc);
    rc = shmq_consumer_registered(c);
    EXPECT(rc == 0 || (rc == 1 && shmq_consumer_lossless(c) && shmq_consumer_entry(c) >= 0),
           "registered returned %d", rc);
    (void)shmq_consumer_backlog(c);
    shmq_consumer_set_spin(c, arg);
}

/* wait(0) must not wait: 0, -ETIMEDOUT, or the end of the stream. */
static void op_wait(struct session *s, uint8_t arg)
{
    unsigned flags = (arg & 1) ? SHMQ_WAIT_PAST_END : 0;
    int rc = shmq_consumer_wait_flags(s->consumer, 0, flags);
    EXPECT(rc == 0 || rc == -ETIMEDOUT || (rc == SHMQ_ENDED && !(flags & SHMQ_WAIT_PAST_END)),
           "wait(0, %u) returned %d (%s)", flags, rc, shmq_strerror(rc));
    check_progress(s->consumer, &s->tally, "wait");
}

static void run_op(struct session *s, uint8_t op, uint8_t arg)
{
    switch (op % 12) {
    case 0: op_poll(s, 0, arg); break;
    case 1: op_poll_many(s, arg); break;
    case 2: op_poll(s, 2, arg); break;
    case 3: op_poll_alloc(s, arg); break;
    case 4: op_misc(s, arg); break;
    case 5: op_publish(s, 5, arg); break;
    case 6: op_publish(s, 6, arg); break;
    case 7: op_wait(s, arg); break;
#ifdef SHMQ_OVERWRITTEN
    case 8: op_peek(s, arg); break;
    case 9: op_claim(s, arg); break;
#endif
    case 10: op_room(s, arg); break;
    case 11: op_list(s, arg); break;
    default: break;
    }
}

static int attach_producer(struct session *s)
{
    const struct prelude *p = s->prelude;
    struct shmq_config config = {0};
    if (p->more & MORE_PRODUCER_GEOMETRY)
        config.slot_size = s->queue->geometry.slot_size + 1;
    if (p->more & MORE_PRODUCER_DELIVERY)
        config.delivery = (p->more & MORE_LOSSLESS) ? SHMQ_LOSSY : SHMQ_LOSSLESS;
    int rc = shmq_producer_open(&s->producer, queue_name, &config, 0);
    int ok = open_code_ok(rc) || (rc == -EPERM && (p->flags & FLAG_WIDE_MODES)) ||
             (rc == -EMEDIUMTYPE && (p->more & (MORE_PRODUCER_GEOMETRY | MORE_PRODUCER_DELIVERY)));
    EXPECT(ok, "producer_open returned %d (%s)", rc, shmq_strerror(rc));
    if (rc != 0)
        s->producer = NULL;
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Measured per input: libFuzzer's symbolizer may open pipes between inputs. */
    int fd_before = lowest_fd();
    struct reader r = {.data = data, .size = size};
    struct prelude p;
    read_prelude(&r, &p);
    struct queue q;
    struct session s = {.prelude = &p, .queue = &q};
    if (build_queue(&q, &p) < 0) {
        close_queue(&q);
        unlink_queue();
        return 0;
    }

    /* Patches: the ones written now; live ones are kept for later. */
    uint8_t live_where[MAX_PATCHES];
    uint16_t live_offset[MAX_PATCHES];
    uint64_t live_value[MAX_PATCHES];
    uint32_t live = 0;
    for (uint32_t i = 0; i < p.patches; i++) {
        uint8_t where = read_u8(&r);
        uint16_t offset = read_u16(&r);
        uint64_t value = read_u64(&r);
        if (where & 32) {
            live_where[live] = where;
            live_offset[live] = offset;
            live_value[live++] = value;
        } else {
            apply_patch(&q, where, offset, value);
        }
    }
    size_t ops_at = PRELUDE_SIZE + (size_t)p.patches * PATCH_SIZE;
    if (p.flags & FLAG_RESIZE_RING) {
        resize(ring_path, (int64_t)p.ring_delta * 8);
        q.payloads_trusted = 0;
    }
    if ((p.flags & FLAG_RESIZE_CONSUMERS) && q.state.region != NULL)
        resize(state_path, (int64_t)p.state_delta * 512);
    if (p.flags & FLAG_WIDE_MODES) {
        chmod(ring_path, 0644);
        chmod(state_path, 0666);
    }
    /* From here the harness's mappings must not touch pages a resize cut
     * off: only live patches write through them, and only when no resize
     * happened. */
    int may_patch_live = !(p.flags & (FLAG_RESIZE_RING | FLAG_RESIZE_CONSUMERS));
    /* Lossless, undamaged: the registered consumer must lose nothing. */
    int intact = p.patches == 0 && !(p.flags & (FLAG_RESIZE_RING | FLAG_RESIZE_CONSUMERS));

    if ((p.flags & FLAG_PRODUCER) && (p.flags & FLAG_PRODUCER_FIRST))
        attach_producer(&s);

    struct shmq_consumer_options options = {
        .start = (p.more & MORE_START_AT)         ? SHMQ_START_AT
                 : (p.flags & FLAG_START_EARLIEST) ? SHMQ_START_EARLIEST
                                                   : SHMQ_START_LATEST,
        .position = p.config.first_sequence + (uint64_t)(int64_t)p.start_delta,
        .no_entry = (p.flags & FLAG_NO_ENTRY) != 0,
        .check_owner = (p.more & (MORE_CHECK_OWNER | MORE_WRONG_OWNER)) != 0,
        .owner = (p.more & MORE_WRONG_OWNER) ? geteuid() + 1 : geteuid(),
    };
    int rc = shmq_consumer_open_with(&s.consumer, queue_name, &options);
    /* A lossless queue refuses a consumer that cannot register: no usable
     * consumer state (-EBADMSG, -EACCES), or no free entry (-EUSERS). */
    int lossless_refusal = (p.more & MORE_LOSSLESS) && (rc == -EUSERS || rc == -EACCES);
    EXPECT(open_code_ok(rc) || (rc == -EPERM && (p.more & MORE_WRONG_OWNER)) || lossless_refusal,
           "consumer_open returned %d (%s)", rc, shmq_strerror(rc));
    if (rc == 0) {
        EXPECT(!(p.more & MORE_WRONG_OWNER), "consumer_open accepted the wrong owner");
        EXPECT(shmq_consumer_owner_uid(s.consumer) == geteuid(), "owner_uid is not ours");
        if (shmq_consumer_entry(s.consumer) >= 0)
            EXPECT(!(p.flags & FLAG_NO_ENTRY), "no_entry consumer claimed an entry");
        s.tally.start_position = s.tally.position = shmq_consumer_position(s.consumer);
        s.tally.start_lost = s.tally.lost = shmq_consumer_lost(s.consumer);
        if ((p.flags & FLAG_PRODUCER) && !(p.flags & FLAG_PRODUCER_FIRST))
            attach_producer(&s);
        if (may_patch_live)
            for (uint32_t i = 0; i < live; i++)
                apply_patch(&q, live_where[i], live_offset[i], live_value[i]);
        /* Starting at a given sequence may start at one already
         * overwritten, which counts as lost (shmq.h, SHMQ_START_AT). */
        int strict = intact && shmq_consumer_registered(s.consumer) && !(p.more & MORE_START_AT);
        r.at = ops_at;
        for (uint32_t i = 0; i < p.ops; i++) {
            uint8_t op = read_u8(&r);
            uint8_t arg = read_u8(&r);
            run_op(&s, op, arg);
            EXPECT(!strict || shmq_consumer_lost(s.consumer) == s.tally.start_lost,
                   "a registered consumer of a lossless queue lost %llu messages",
                   (unsigned long long)(shmq_consumer_lost(s.consumer) - s.tally.start_lost));
        }
        shmq_consumer_close(s.consumer);
    }
    shmq_producer_close(s.producer);
    close_queue(&q);
    unlink_queue();
    EXPECT(access(ring_path, F_OK) != 0 && access(state_path, F_OK) != 0,
           "a segment of %s is left in /dev/shm", queue_name);
    int fd = lowest_fd();
    EXPECT(fd == fd_before, "descriptor leak: lowest free descriptor %d, was %d", fd, fd_before);
    return 0;
}

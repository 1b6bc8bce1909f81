/*
 * libFuzzer target: consumer groups (csrc/group.c) with a group page whose
 * state comes from the fuzzer's bytes. tests/fuzz/run.sh builds and runs it
 * beside fuzz_attach.c; tests/fuzz/README.md says how to replay a finding.
 *
 * A group page is System V memory that every member of the group can
 * write: a buggy or hostile member can put anything in the cursor, the lost
 * count, the member slots' tokens and claim ranges, member_slots, the name,
 * the tag. Members must survive that (they only mislead their own group),
 * and the producer, which maps the page read-only, must never be made to
 * overwrite what another reader has not read nor to read out of bounds.
 *
 * WHAT ONE INPUT DOES
 *   1. Makes a real queue with the core's own calls (shmq_producer_open:
 *      ring, lock file, wake page), lossy or lossless, of 2..64 slots of
 *      8..128 bytes, with a max_message_size of one slot up to the whole
 *      data area, starting at any first_sequence, and stamps some messages,
 *      of mixed sizes (many spanning several slots, some forcing padding at
 *      the data area's end). Each message carries its sequence in its first
 *      8 bytes and a pattern drawn from it, so a delivered copy tells which
 *      message it is and whether it is whole.
 *   2. Opens 1..3 members of group "fz" (the first creates the group page,
 *      the others join it) and maybe a plain consumer, through
 *      shmq_consumer_open_with; then maps the group page writable, as any
 *      member could, and the ring writable, as its producer does.
 *   3. Runs up to 48 operations: poll, poll_many, peek/release, poll_wait,
 *      wait, batch_begin (or batch_begin_within a byte budget)/batch_end on
 *      a member; publish, publish_many,
 *      wait_room and publish_wait on the producer (a lossless producer
 *      then reads the group page in shmq_group_low, probing liveness);
 *      shmq_group_low called directly over the page with a fuzzed head;
 *      shmq_inspect_groups; a member closed (maybe inside a batch, leaving
 *      its claim behind) and opened again (joining into a free slot, maybe
 *      the dead one's, adopting its claim); a rescue forced now; locks the
 *      harness plants on member bytes (a member slot that looks alive) or
 *      in a member's id range (a second page told for the group, or the
 *      id a joiner of that slot would tell); and
 *      patches: the page's cursor, lost, member_slots, magic, instance,
 *      name, created, ended, a member slot's token, claim_from, claim_to,
 *      pid, received, or any word of the page; an index record's stamp,
 *      length or slot, or a word of the data area. Cursor, claim and stamp
 *      values are raw, or the head plus a small signed offset, so that the
 *      near-head cases the protocol is about are reached at once; lengths
 *      and slots raw, or near max_message and capacity.
 *
 * WHAT IT ASSERTS (a failed check abort()s, so libFuzzer keeps the input)
 *   - Every return code is one csrc/shmq.h documents for that call.
 *   - A delivered length is <= max_message_size and <= the buffer;
 *     -EMSGSIZE names a length > the buffer and <= max_message_size;
 *     poll_many's lengths fit the buffer together; a lent-out payload lies
 *     in the data area and is readable to its end.
 *   - While no index record or data was patched, every delivered message
 *     (copied or lent out and released intact) is whole: exactly the
 *     message published under the sequence it carries, one already
 *     published; a lent-out one stayed so until its release returned 0. An
 *     empty one (a record as a new ring leaves it) only once the page was
 *     patched.
 *   - While the page is intact (not patched, no planted lock, no member
 *     closed holding a claim), no message reaches the group twice; on a
 *     lossless queue, with no record patched, the group loses nothing and a
 *     member's in-place read is never overwritten, unless the group was
 *     made starting below the head (start earliest with messages there: a
 *     producer protects those only from its next listing of the consumers
 *     on, a known bug, see tests/c/test_groups.c,
 *     earliest_member_of_a_lossless_queue_loses_nothing).
 *   - shmq_group_low returns a value in [head - capacity, head] for any
 *     head, whatever the page holds.
 *   - Members of one page report the same lost count.
 *   - Nothing leaks: memory (LeakSanitizer), descriptors, System V
 *     segments (none this process made is left unmarked for removal, and
 *     it maps as many as before the input), files in /dev/shm.
 *   ASan and UBSan (-fno-sanitize-recover) watch every access.
 *
 * NOT FUZZED: poll_wait with a timeout inside a batch whose claim is used
 * up. It spins forever, ignoring its timeout (a known bug, see
 * tests/c/test_groups.c, poll_wait_after_a_used_up_batch): the harness
 * polls inside batches with timeout 0 only.
 *
 * INPUT FORMAT (bytes past the end read as zero; every input is valid)
 *   prelude, 24 bytes:
 *     0  u8   flags (FLAG_* below)
 *     1  u8   capacity: 2 << (v % 6), so 2..64 slots
 *     2  u8   slot_size: 8 + v % 121
 *     3  u8   messages stamped before the members open: v % (2 * capacity + 1)
 *     4  u8   members: 1 + v % 3
 *     5  u8   operations: v % 49
 *     6  u16  salt mixed into every payload
 *     8  u64  first_sequence
 *     16 u8   max_message_size (max_message_choice in fuzz_input.h; at least
 *             8 bytes, the sequence every message carries)
 *     17      reserved, 7 bytes
 *   operations, 2 bytes each: op u8 (op % OPS picks one) | arg u8; a patch
 *   (and group_low) reads 9 more: where u8 | value u64.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ring_internal.h"

#define FUZZ_TARGET "fuzz_groups"
#include "fuzz_input.h"

#define PRELUDE_SIZE 24u
#define MAX_OPS 48u
#define MAX_MEMBERS 3u
/* The largest max_message_size a prelude asks for: 128-byte slots, 64 of
 * them. */
#define MAX_MESSAGE (128u * 64u)
#define GROUP "fz"
#define SHORT_WAIT_NS 1000
/* Sequences tracked for "delivered at most once", from first_sequence. */
#define TRACKED 4096u

enum {
    FLAG_LOSSLESS = 1u << 0,
    FLAG_PLAIN = 1u << 1,    /* a plain consumer beside the members */
    FLAG_EARLIEST = 1u << 2, /* members start at the earliest message, not the latest */
    FLAG_SPIN = 1u << 3,     /* members spin a little before they sleep */
};

/* ------------------------------------------------------------ the input */


/* The message stamped under `sequence`: its sequence, then a pattern. */
static size_t pattern_length(uint64_t sequence, uint32_t salt, uint32_t slot_size,
                             uint64_t max_message)
{
    return pattern_length_in(sequence, salt, 8, slot_size, (size_t)max_message);
}

static void fill_pattern(uint8_t *buf, size_t length, uint64_t sequence, uint32_t salt)
{
    memcpy(buf, &sequence, 8);
    for (size_t i = 8; i < length; i++)
        buf[i] = pattern_byte(sequence, salt, i);
}

/* System V segments this process made that are not marked for removal:
 * they would outlive everyone. (One marked for removal goes with its last
 * mapping; another process may hold that a while, as a fuzz_attach run
 * beside this one does when its garbage wake ids name ours.) */
static int own_segments_left(void)
{
    return own_segments(1);
}

/* System V segments this process maps: a handle that forgets to detach one
 * keeps it alive. */
static int sysv_mappings(void)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (f == NULL)
        return 0;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, "/SYSV") != NULL;
    fclose(f);
    return n;
}

/* ------------------------------------------------------- the seed corpus */

/* op codes (op % OPS) */
enum {
    OP_POLL, OP_POLL_MANY, OP_PEEK, OP_BATCH_BEGIN, OP_BATCH_END, OP_PUBLISH, OP_ROOM,
    OP_WAIT, OP_PATCH_PAGE, OP_PATCH_RECORD, OP_REOPEN, OP_LOCK, OP_GROUP_LOW, OP_INSPECT,
    OP_POLL_WAIT, OP_RESCUE, OPS
};

/* arg: bits 0-1 pick the member (3: the plain consumer, or member 0). */
struct seed {
    uint8_t flags, capacity_log2, slot_size, published, members, max_message;
    uint64_t first_sequence;
    const char *ops; /* variable-length records, as in the input */
    size_t ops_size;
    uint8_t op_count;
};

#define OPS_OF(bytes, n) .ops = bytes, .ops_size = sizeof(bytes) - 1, .op_count = n

/* Patch records: op, arg, where, value (8 bytes, little-endian). where:
 * bits 0-3 field (PAGE_* below), bits 4-5 member slot, bit 6 relative to
 * head (value as a signed 16-bit offset), bit 7 unused. */
#define P_CURSOR_BACK "\x08\0\x40\xf0\xff\0\0\0\0\0\0"          /* cursor = head - 16 */
#define P_CURSOR_AHEAD "\x08\0\x40\x05\0\0\0\0\0\0\0"           /* cursor = head + 5 */
#define P_TOKEN_1 "\x08\0\x13\x77\0\0\0\0\0\0\0"                /* slot 1 token = 0x77 */
#define P_FROM_1_BACK "\x08\0\x54\xfc\xff\0\0\0\0\0\0"          /* slot 1 from = head - 4 */
#define P_TO_1_AHEAD "\x08\0\x55\x02\0\0\0\0\0\0\0"             /* slot 1 to = head + 2 */
#define P_TO_1_HUGE "\x08\0\x15\0\0\0\0\0\0\0\x80"              /* slot 1 to = 2^63 */
#define P_SLOTS_ZERO "\x08\0\x02\0\0\0\0\0\0\0\0"               /* member_slots = 0 */
#define P_SLOTS_HUGE "\x08\0\x02\xff\xff\xff\xff\0\0\0\0"
#define P_LOST "\x08\0\x01\x10\0\0\0\0\0\0\0"
#define P_STAMP "\x09\0\0\x03\0\0\0\0\0\0\0"
/* record 1's length max_message + 1; record 2's slot capacity - 1; a word
 * of the data area */
#define P_LENGTH_PAST_MAX "\x09\0\x41\x01\0\0\0\x01\0\0\0"
#define P_SLOT_AT_END "\x09\0\x42\xff\xff\0\0\x02\0\0\0"
#define P_DATA "\x09\0\x03\x5a\x5a\x5a\x5a\x5a\x5a\x5a\x5a"
#define LOW_HEAD "\x0c\x01\0\x40\0\0\0\0\0\0\0"                 /* group_low(head + 64), probe */
#define LOW_RAW "\x0c\x02\0\x01\0\0\0\0\0\0\x80"
/* poll m0, poll_many m1, peek m0, publish, poll m1, batch m0 of 4, poll m0 x2,
 * batch_end m0, poll_wait m1, wait m0, inspect */
#define OPS_READ "\0\0\1\x21\2\0\5\x03\0\x01\3\x10\0\0\0\0\4\0\x0e\x05\7\x02\x0d\0"
/* a member closed inside a batch, another rescues; one reopened adopts */
#define OPS_DEAD "\3\x20\0\0\x0a\x01\x0f\x01\0\x01\5\x07\x0a\x02\0\0\0\x01\x06\x03"
/* fill a lossless ring, probe, read, probe again */
#define OPS_FILL "\5\x07\5\x07\x06\x03\x06\x02\0\0\1\x71\x06\x03\5\x07"
/* plant a lock on member slot 1's byte and in its id range */
#define OPS_LOCKS "\x0b\x01\x0b\x05\x06\x03\0\0\x0b\x01\x06\x03"
/* large messages: peek m0 with a lap published meanwhile, poll m1 into a
 * buffer of one slot and of two, a batch m0 within two slots' bytes, poll
 * m0 x2, batch_end, poll_many m1 into room for 4, publish 8, peek m1 */
#define OPS_LARGE "\2\x08\0\x19\0\x29\3\xa0\0\0\0\0\4\0\1\x71\5\x07\2\x01"

static const struct seed seeds[] = {
    {.flags = FLAG_EARLIEST, .capacity_log2 = 2, .slot_size = 24, .published = 5, .members = 1,
     OPS_OF(OPS_READ, 12)},
    {.flags = FLAG_EARLIEST | FLAG_PLAIN, .capacity_log2 = 3, .slot_size = 16, .published = 12,
     .members = 2, OPS_OF(OPS_READ P_CURSOR_BACK OPS_READ, 25)},
    {.flags = FLAG_LOSSLESS | FLAG_EARLIEST, .capacity_log2 = 2, .slot_size = 8, .published = 3,
     .members = 2, OPS_OF(OPS_FILL OPS_DEAD OPS_FILL, 26)},
    {.flags = FLAG_LOSSLESS, .capacity_log2 = 1, .slot_size = 40, .members = 2,
     .first_sequence = UINT64_MAX - 3,
     OPS_OF(OPS_FILL P_TOKEN_1 P_FROM_1_BACK P_TO_1_AHEAD OPS_FILL LOW_HEAD LOW_RAW, 21)},
    {.flags = FLAG_EARLIEST, .capacity_log2 = 3, .slot_size = 100, .published = 16, .members = 2,
     OPS_OF(P_TOKEN_1 P_TO_1_HUGE P_SLOTS_HUGE OPS_DEAD P_CURSOR_AHEAD OPS_READ, 26)},
    {.flags = FLAG_LOSSLESS | FLAG_PLAIN, .capacity_log2 = 2, .slot_size = 12, .published = 4,
     .members = 3, OPS_OF(OPS_LOCKS OPS_FILL P_SLOTS_ZERO P_LOST OPS_FILL P_STAMP OPS_READ, 34)},
    /* Large messages (max_message: as in fuzz_attach's prelude byte 32). A
     * message may take the whole data area. */
    {.flags = FLAG_EARLIEST | FLAG_PLAIN, .capacity_log2 = 3, .slot_size = 32, .published = 12,
     .members = 2, .max_message = 0xf0, OPS_OF(OPS_LARGE OPS_READ OPS_LARGE, 32)},
    {.flags = FLAG_LOSSLESS | FLAG_EARLIEST, .capacity_log2 = 2, .slot_size = 24, .published = 6,
     .members = 2, .max_message = 5, OPS_OF(OPS_FILL OPS_LARGE OPS_DEAD OPS_LARGE, 38)},
    {.flags = FLAG_EARLIEST, .capacity_log2 = 5, .slot_size = 128, .published = 30, .members = 3,
     .max_message = 0xff, OPS_OF(OPS_LARGE OPS_DEAD OPS_LARGE, 30)},
    {.flags = FLAG_EARLIEST | FLAG_PLAIN, .capacity_log2 = 2, .slot_size = 40, .published = 6,
     .members = 1, .max_message = 0x43,
     OPS_OF(P_LENGTH_PAST_MAX OPS_READ P_SLOT_AT_END OPS_LARGE P_DATA OPS_READ, 37)},
};

static void write_seeds(const char *dir)
{
    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
        const struct seed *s = &seeds[i];
        uint8_t out[PRELUDE_SIZE + 1024] = {0};
        uint16_t salt = (uint16_t)(29 * i);
        out[0] = s->flags;
        out[1] = s->capacity_log2;
        out[2] = (uint8_t)(s->slot_size - 8);
        out[3] = s->published;
        out[4] = (uint8_t)(s->members - 1);
        out[5] = s->op_count;
        memcpy(out + 6, &salt, 2);
        memcpy(out + 8, &s->first_sequence, 8);
        out[16] = s->max_message;
        if (s->ops_size > sizeof(out) - PRELUDE_SIZE || s->op_count > MAX_OPS) {
            fprintf(stderr, "fuzz_groups: seed %zu is too long\n", i);
            exit(1);
        }
        memcpy(out + PRELUDE_SIZE, s->ops, s->ops_size);
        size_t size = PRELUDE_SIZE + s->ops_size;
        char path[4096];
        snprintf(path, sizeof(path), "%s/seed-%02zu", dir, i);
        FILE *f = fopen(path, "wb");
        if (f == NULL || fwrite(out, 1, size, f) != size || fclose(f) != 0) {
            fprintf(stderr, "fuzz_groups: cannot write %s: %s\n", path, strerror(errno));
            exit(1);
        }
    }
    exit(0);
}

static void at_exit(void)
{
    unlink_queue();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *seed_dir = getenv("SHMQ_FUZZ_WRITE_SEEDS");
    if (seed_dir != NULL)
        write_seeds(seed_dir);
    name_queue("g");
    at_exit();
    atexit(at_exit);
    return 0;
}

/* ------------------------------------------------------------ a session */

struct prelude {
    uint8_t flags;
    uint32_t capacity;
    uint32_t slot_size;
    uint64_t max_message; /* the queue's max_message_size */
    uint32_t published;
    uint32_t members;
    uint32_t ops;
    uint32_t salt;
    uint64_t first_sequence;
};

static void read_prelude(struct reader *r, struct prelude *p)
{
    p->flags = read_u8(r);
    p->capacity = 2u << (read_u8(r) % 6);
    p->slot_size = 8 + read_u8(r) % 121;
    p->published = read_u8(r) % (2 * p->capacity + 1);
    p->members = 1 + read_u8(r) % MAX_MEMBERS;
    p->ops = read_u8(r) % (MAX_OPS + 1);
    p->salt = read_u16(r);
    p->first_sequence = read_u64(r);
    p->max_message = max_message_choice(read_u8(r), p->slot_size, p->capacity);
    if (p->max_message < 8)
        p->max_message = p->slot_size; /* room for the sequence */
    r->at = PRELUDE_SIZE;
}

struct member {
    struct shmq_consumer *c; /* NULL: closed */
    int in_batch;
};

struct session {
    struct prelude pre;
    struct shmq_producer *p;
    struct member m[MAX_MEMBERS];
    struct shmq_consumer *plain;
    struct shmq_region *ring; /* the harness's writable mapping */
    int locks_fd;             /* its own description of NAME.consumers */
    /* The group page as the harness maps it (writable), and its id. */
    struct shmq_group_page *page;
    int page_id;
    int page_patched;   /* the page, or the locks that tell it, were tampered with */
    int slots_patched;  /* an index record or the data area was */
    int claim_abandoned; /* a member closed holding a claim: at-least-once */
    int planted;        /* the harness holds a lock among the group's */
    /* A group was made starting below the head (start earliest, with
     * messages published): a lossless producer protects what lies below
     * the head of its join only from its next listing of the consumers on,
     * so those may be lost (the known bug of test_groups.c,
     * earliest_member_of_a_lossless_queue_loses_nothing). */
    int early;
    uint8_t seen[TRACKED];
};

static uint64_t head_of(const struct session *s)
{
    return shmq_producer_next_sequence(s->p);
}

/* Any member that is open, preferring member `k`; NULL if none is. */
static struct shmq_consumer *member_at(struct session *s, unsigned k, unsigned *index)
{
    for (unsigned i = 0; i < MAX_MEMBERS; i++) {
        unsigned j = (k + i) % MAX_MEMBERS;
        if (s->m[j].c != NULL) {
            *index = j;
            return s->m[j].c;
        }
    }
    return NULL;
}

/* Maps the page of an open member's group (re-maps it when that changed:
 * every member closed and a new one made a new page). */
static void map_page(struct session *s)
{
    unsigned k;
    struct shmq_consumer *c = member_at(s, 0, &k);
    if (c == NULL || c->group == NULL || c->group->shm_id == s->page_id)
        return;
    if (s->page != NULL)
        shmdt(s->page);
    s->page = NULL;
    s->page_id = c->group->shm_id;
    void *base = shmat(s->page_id, NULL, 0);
    EXPECT(base != (void *)-1, "cannot map the group page %d: %s", s->page_id, strerror(errno));
    s->page = base;
}

static int open_member(struct session *s, unsigned k)
{
    struct shmq_consumer_options options = {
        .start = (s->pre.flags & FLAG_EARLIEST) ? SHMQ_START_EARLIEST : SHMQ_START_LATEST,
        .group = GROUP,
        .spin = (s->pre.flags & FLAG_SPIN) ? 100 : 0,
    };
    int rc = shmq_consumer_open_with(&s->m[k].c, queue_name, &options);
    /* -EUSERS: the planted locks took every member slot, or every group
     * number; -ETIMEDOUT never (nobody holds the join lock long). */
    EXPECT(rc == 0 || (rc == -EUSERS && s->planted), "member %u: open returned %d (%s)", k, rc,
           shmq_strerror(rc));
    if (rc != 0) {
        s->m[k].c = NULL;
        return rc;
    }
    s->m[k].in_batch = 0;
    EXPECT(strcmp(shmq_consumer_group(s->m[k].c), GROUP) == 0, "member %u: group name", k);
    if (s->m[k].c->group->shm_id != s->page_id) {
        /* It made a new page: a new group, a new reader of the stream. */
        memset(s->seen, 0, sizeof(s->seen));
        if (shmq_consumer_position(s->m[k].c) != head_of(s))
            s->early = 1; /* with its cursor below the head */
    }
    map_page(s);
    return 0;
}

static void close_member(struct session *s, unsigned k)
{
    struct shmq_consumer *c = s->m[k].c;
    if (c == NULL)
        return;
    if (c->group != NULL && c->group->claimed)
        s->claim_abandoned = 1; /* another member delivers it again */
    shmq_consumer_close(c);
    s->m[k].c = NULL;
    s->m[k].in_batch = 0;
}

/* Whether the group's delivery must be exactly once. */
static int intact(const struct session *s)
{
    return !s->page_patched && !s->slots_patched && !s->claim_abandoned && !s->planted;
}

/* Whether, on a lossless queue, the group must lose nothing. */
static int no_loss(const struct session *s)
{
    return (s->pre.flags & FLAG_LOSSLESS) && intact(s) && !s->early;
}

/* ------------------------------------------------------------ the checks */

/* A delivered message, from member `who` (-1: the plain consumer). */
static void check_message(struct session *s, int who, const uint8_t *buf, size_t length,
                          const char *what)
{
    EXPECT(length <= s->pre.max_message, "%s delivered %zu bytes, max_message_size %llu", what,
           length, (unsigned long long)s->pre.max_message);
    if (s->slots_patched)
        return;
    if (length < 8) {
        /* Only a slot as a new ring leaves it ("a lap before", empty), which
         * only a cursor or claim moved behind first_sequence reaches. */
        EXPECT(length == 0 && s->page_patched && who >= 0, "%s delivered %zu bytes", what, length);
        return;
    }
    uint64_t sequence;
    memcpy(&sequence, buf, 8);
    uint64_t index = sequence - s->pre.first_sequence;
    EXPECT(index < head_of(s) - s->pre.first_sequence,
           "%s delivered sequence %llu, never published (head %llu)", what,
           (unsigned long long)sequence, (unsigned long long)head_of(s));
    size_t want = pattern_length(sequence, s->pre.salt, s->pre.slot_size, s->pre.max_message);
    EXPECT(length == want, "%s: sequence %llu has %zu bytes, published %zu", what,
           (unsigned long long)sequence, length, want);
    for (size_t i = 8; i < length; i++)
        EXPECT(buf[i] == pattern_byte(sequence, s->pre.salt, i),
               "%s: sequence %llu differs at byte %zu", what, (unsigned long long)sequence, i);
    if (who >= 0 && index < TRACKED) {
        EXPECT(s->seen[index] == 0 || !intact(s),
               "%s: sequence %llu reached the group twice", what, (unsigned long long)sequence);
        s->seen[index] = 1;
    }
}

/* What every member says now: one lost count per page; lossless and intact,
 * none. */
static void check_members(struct session *s, const char *what)
{
    uint64_t lost = 0;
    int have = 0, page = -1;
    for (unsigned k = 0; k < MAX_MEMBERS; k++) {
        struct shmq_consumer *c = s->m[k].c;
        if (c == NULL)
            continue;
        uint64_t l = shmq_consumer_lost(c);
        if (have && c->group->shm_id == page)
            EXPECT(l == lost, "%s: members of one page say lost %llu and %llu", what,
                   (unsigned long long)lost, (unsigned long long)l);
        have = 1;
        lost = l;
        page = c->group->shm_id;
        if (no_loss(s))
            EXPECT(l == 0, "%s: a lossless group lost %llu", what, (unsigned long long)l);
        (void)shmq_consumer_backlog(c);
        (void)shmq_consumer_position(c);
    }
}

/* A buffer of exactly the size asked for, so ASan sees one byte too many:
 * of `max` bytes (the largest message, or poll_many's room for several), of
 * none, of arg >> 4 units (bytes; slots where messages span several), or a
 * little more than `max`. */
static uint8_t *buffer_for(const struct session *s, uint8_t arg, size_t max, size_t *size)
{
    size_t unit = s->pre.max_message > s->pre.slot_size ? s->pre.slot_size : 1;
    switch ((arg >> 2) & 3) {
    case 0: *size = max; break;
    case 1: *size = 0; return NULL;
    case 2: *size = (size_t)(arg >> 4) * unit; break;
    default: *size = max + (arg >> 4); break;
    }
    uint8_t *buf = malloc(*size ? *size : 1);
    if (buf == NULL)
        FAIL("out of memory");
    return buf;
}

/* -------------------------------------------------------------- the ops */

/* The consumer an op works on: a member, or with arg & 3 == 3 the plain
 * consumer if there is one; *who is the member's index or -1. */
static struct shmq_consumer *target(struct session *s, uint8_t arg, int *who)
{
    unsigned k = arg & 3;
    if (k == 3 && s->plain != NULL) {
        *who = -1;
        return s->plain;
    }
    unsigned index;
    struct shmq_consumer *c = member_at(s, k % MAX_MEMBERS, &index);
    *who = c != NULL ? (int)index : -1;
    return c;
}

static void op_poll(struct session *s, uint8_t arg, int wait)
{
    int who;
    struct shmq_consumer *c = target(s, arg, &who);
    if (c == NULL)
        return;
    uint64_t max_message = s->pre.max_message;
    size_t size;
    uint8_t *buf = buffer_for(s, arg, (size_t)max_message, &size);
    size_t length = (size_t)-1;
    /* Inside a batch only without waiting: see NOT FUZZED above. */
    int64_t timeout = (arg & 0x10) && !(who >= 0 && s->m[who].in_batch) ? SHORT_WAIT_NS : 0;
    int rc = wait ? shmq_consumer_poll_wait(c, buf, size, &length, timeout)
                  : shmq_consumer_poll(c, buf, size, &length);
    const char *what = wait ? "poll_wait" : "poll";
    EXPECT(rc == 0 || rc == SHMQ_EMPTY || rc == SHMQ_CORRUPT || rc == -EMSGSIZE ||
               (wait && timeout && rc == -ETIMEDOUT),
           "%s returned %d (%s)", what, rc, shmq_strerror(rc));
    if (rc == 0) {
        EXPECT(length <= size, "%s delivered %zu bytes into %zu", what, length, size);
        check_message(s, who, buf, length, what);
    } else if (rc == -EMSGSIZE) {
        EXPECT(length > size && length <= max_message,
               "%s: -EMSGSIZE with length %zu, buffer %zu, max_message_size %llu", what, length,
               size, (unsigned long long)max_message);
    }
    free(buf);
}

static void op_poll_many(struct session *s, uint8_t arg)
{
    int who;
    struct shmq_consumer *c = target(s, arg, &who);
    if (c == NULL)
        return;
    size_t max = 1 + (arg >> 5);
    size_t size;
    uint8_t *buf = buffer_for(s, arg, (size_t)s->pre.max_message * ((arg & 16) ? max : 1), &size);
    size_t lengths[8];
    int n = shmq_consumer_poll_many(c, buf, size, lengths, max);
    EXPECT(n >= 0 || n == -EMSGSIZE || n == SHMQ_CORRUPT, "poll_many returned %d (%s)", n,
           shmq_strerror(n));
    EXPECT(n <= (int)max, "poll_many returned %d messages, at most %zu asked", n, max);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        EXPECT(lengths[i] <= size - at, "poll_many wrote past its buffer");
        check_message(s, who, buf ? buf + at : buf, lengths[i], "poll_many");
        at += lengths[i];
    }
    if (who >= 0)
        s->m[who].in_batch = 0; /* poll_many ends any batch */
    free(buf);
}

static void op_publish(struct session *s, uint8_t arg);

static void op_peek(struct session *s, uint8_t arg)
{
    int who;
    struct shmq_consumer *c = target(s, arg, &who);
    if (c == NULL)
        return;
    const void *data = NULL;
    size_t length = (size_t)-1;
    int rc = shmq_consumer_peek(c, &data, &length);
    EXPECT(rc == 0 || rc == SHMQ_EMPTY || rc == SHMQ_CORRUPT, "peek returned %d (%s)", rc,
           shmq_strerror(rc));
    if (rc != 0) {
        EXPECT(shmq_consumer_release(c) == -EINVAL, "release without a peek succeeded");
        return;
    }
    EXPECT(length <= s->pre.max_message && data != NULL, "peek lent %zu bytes", length);
    expect_in_data_area(&c->geometry, c->data, data, length, "peek");
    static uint8_t copy[MAX_MESSAGE], later[MAX_MESSAGE];
    memcpy(copy, data, length); /* a pointer or length past the mapping faults here */
    if (arg & 4) {
        uint8_t buf[8];
        size_t ignored;
        EXPECT(shmq_consumer_poll(c, buf, sizeof(buf), &ignored) == -EINPROGRESS,
               "poll during a peek did not refuse");
    }
    if (arg & 8) {
        /* A lap of publishing while it is lent: a lossy producer rewrites
         * it (release says so, and it counts lost); a lossless one may not. */
        for (uint32_t i = 0; i <= s->pre.capacity / 8; i++)
            op_publish(s, 7);
    }
    memcpy(later, data, length);
    rc = shmq_consumer_release(c);
    EXPECT(rc == 0 || rc == SHMQ_OVERWRITTEN, "release returned %d (%s)", rc, shmq_strerror(rc));
    /* Lossless and intact: a claimed message is not rewritten under its
     * member (and a registered plain consumer's is not either). */
    EXPECT(rc == 0 || !no_loss(s) || who < 0,
           "an in-place read of a lossless queue was overwritten");
    if (rc == 0) {
        /* The bytes lent out stayed the message until the release: the one
         * delivery check counts the message once, so the later copy must
         * equal the first. */
        check_message(s, who, copy, length, "peek");
        EXPECT(s->slots_patched || memcmp(copy, later, length) == 0,
               "peek: the bytes lent out changed before a release that returned 0");
    }
}

static void op_batch(struct session *s, uint8_t arg, int begin)
{
    int who;
    struct shmq_consumer *c = target(s, arg, &who);
    if (c == NULL)
        return;
    /* With bit 7: within a byte budget of 0..7 slots (at least one message). */
    if (begin && (arg & 0x80))
        shmq_consumer_batch_begin_within(c, (size_t)((arg >> 2) & 31),
                                         (size_t)((arg >> 4) & 7) * s->pre.slot_size);
    else if (begin)
        shmq_consumer_batch_begin(c, (size_t)(arg >> 2));
    else
        shmq_consumer_batch_end(c);
    if (who >= 0)
        s->m[who].in_batch = begin;
}

static void op_publish(struct session *s, uint8_t arg)
{
    static uint8_t payload[8][MAX_MESSAGE];
    const void *messages[8];
    size_t lengths[8];
    size_t count = 1 + arg % 8;
    uint64_t next = head_of(s);
    for (size_t i = 0; i < count; i++) {
        lengths[i] = pattern_length(next + i, s->pre.salt, s->pre.slot_size, s->pre.max_message);
        fill_pattern(payload[i], lengths[i], next + i, s->pre.salt);
        messages[i] = payload[i];
    }
    uint64_t last;
    int rc = shmq_producer_publish_many(s->p, messages, lengths, count, &last);
    EXPECT(rc == 0 || (rc == SHMQ_FULL && (s->pre.flags & FLAG_LOSSLESS)),
           "publish_many returned %d (%s)", rc, shmq_strerror(rc));
    EXPECT(head_of(s) - next <= count, "publish_many moved the head too far");
}

/* wait_room or publish_wait, with timeout 0 or a short one: a lossless
 * producer then looks at the group (shmq_group_low), probing liveness. */
static void op_room(struct session *s, uint8_t arg)
{
    int64_t timeout = (arg & 2) ? SHORT_WAIT_NS : 0;
    int full = timeout == 0 ? SHMQ_FULL : -ETIMEDOUT;
    int lossless = (s->pre.flags & FLAG_LOSSLESS) != 0;
    int rc;
    if (arg & 1) {
        rc = shmq_producer_wait_room(s->p, timeout);
        EXPECT(rc == 0 || (rc == full && lossless), "wait_room returned %d (%s)", rc,
               shmq_strerror(rc));
        return;
    }
    uint64_t next = head_of(s);
    static uint8_t payload[MAX_MESSAGE];
    size_t length = pattern_length(next, s->pre.salt, s->pre.slot_size, s->pre.max_message);
    fill_pattern(payload, length, next, s->pre.salt);
    rc = shmq_producer_publish_wait(s->p, payload, length, NULL, timeout);
    EXPECT(rc == 0 || (rc == full && lossless), "publish_wait returned %d (%s)", rc,
           shmq_strerror(rc));
    EXPECT(head_of(s) - next == (rc == 0), "publish_wait moved the head wrongly");
}

static void op_wait(struct session *s, uint8_t arg)
{
    int who;
    struct shmq_consumer *c = target(s, arg, &who);
    if (c == NULL)
        return;
    int64_t timeout = (arg & 4) ? SHORT_WAIT_NS : 0;
    int rc = shmq_consumer_wait(c, timeout);
    EXPECT(rc == 0 || rc == -ETIMEDOUT, "wait returned %d (%s)", rc, shmq_strerror(rc));
}

/* The head plus a small signed offset, or raw. */
static uint64_t value_of(const struct session *s, uint8_t where, uint64_t value)
{
    if (where & 0x40)
        return head_of(s) + (uint64_t)(int64_t)(int16_t)(uint16_t)value;
    return value;
}

/* Fields of the page (where & 15), of member slot (where >> 4) & 3. */
enum {
    PAGE_CURSOR, PAGE_LOST, PAGE_MEMBER_SLOTS, PAGE_TOKEN, PAGE_FROM, PAGE_TO, PAGE_PID,
    PAGE_RECEIVED, PAGE_MAGIC, PAGE_INSTANCE, PAGE_NAME, PAGE_CREATED, PAGE_ENDED, PAGE_ANYWHERE
};

static void op_patch_page(struct session *s, uint8_t where, uint64_t raw)
{
    struct shmq_group_page *page = s->page;
    if (page == NULL)
        return;
    uint64_t value = value_of(s, where, raw);
    struct shmq_group_member *slot = &page->members[(where >> 4) & 3];
    switch ((where & 15) % (PAGE_ANYWHERE + 1)) {
    case PAGE_CURSOR: atomic_store(&page->cursor, value); break;
    case PAGE_LOST: atomic_store(&page->lost, value); break;
    case PAGE_MEMBER_SLOTS: atomic_store(&page->member_slots, (uint32_t)value); break;
    case PAGE_TOKEN: atomic_store(&slot->token, (uint32_t)value); break;
    case PAGE_FROM: atomic_store(&slot->claim_from, value); break;
    case PAGE_TO: atomic_store(&slot->claim_to, value); break;
    case PAGE_PID: atomic_store(&slot->pid, (uint32_t)value); break;
    case PAGE_RECEIVED: atomic_store(&slot->received, value); break;
    case PAGE_MAGIC: atomic_store(&page->magic, value); break;
    case PAGE_INSTANCE: atomic_store(&page->ring_instance, value); break;
    case PAGE_NAME: atomic_store(&page->name[raw % 4], value); break;
    case PAGE_CREATED: atomic_store(&page->created, value); break;
    case PAGE_ENDED: atomic_store(&page->ended, (uint32_t)value); break;
    default: {
        /* Any aligned word of the page, by the 16 bits of raw's top. */
        size_t words = sizeof(*page) / 8;
        size_t at = (size_t)(raw >> 48) % words;
        uint64_t *word = (uint64_t *)(void *)page + at;
        __atomic_store_n(word, value, __ATOMIC_RELAXED);
        break;
    }
    }
    s->page_patched = 1;
}

/* Fields of an index record, or the data area (where & 3). */
enum { RECORD_STAMP, RECORD_LENGTH, RECORD_SLOT, RECORD_DATA };

/* One field of index record raw >> 32: its stamp (the head plus an offset,
 * or raw), its length (max_message plus an offset, or raw), or its first
 * slot (capacity plus an offset, or raw); or a word of the data area (the
 * one at raw >> 40, set to raw). */
static void op_patch_record(struct session *s, uint8_t where, uint64_t raw)
{
    unsigned char *base = shmq_region_base(s->ring);
    const struct shmq_geometry *g = &s->p->geometry;
    struct shmq_record *record = shmq_record_at(base + g->index_offset, g, raw >> 32);
    int16_t step = (int16_t)(uint16_t)raw;
    switch (where & 3) {
    case RECORD_STAMP: atomic_store(&record->stamp, value_of(s, where, raw)); break;
    case RECORD_LENGTH:
        atomic_store(&record->length,
                     (where & 0x40) ? (uint32_t)(g->max_message + (uint64_t)(int64_t)step)
                                    : (uint32_t)raw);
        break;
    case RECORD_SLOT:
        atomic_store(&record->slot,
                     (where & 0x40) ? (uint32_t)(g->capacity + (int64_t)step) : (uint32_t)raw);
        break;
    default: {
        size_t words = (size_t)(g->total_size - g->data_offset) / 8;
        _Atomic uint64_t *word = (_Atomic uint64_t *)(void *)(base + g->data_offset);
        atomic_store(&word[(size_t)(raw >> 40) % words], raw);
        break;
    }
    }
    s->slots_patched = 1;
}

/* A member closed (maybe inside a batch, with a claim, which it leaves
 * behind), or opened again: a joiner takes the first free member slot. */
static void op_reopen(struct session *s, uint8_t arg)
{
    unsigned k = (arg >> 2) % MAX_MEMBERS;
    if (s->m[k].c == NULL) {
        open_member(s, k);
        return;
    }
    struct shmq_consumer *c = s->m[k].c;
    if ((arg & 1) && !s->m[k].in_batch) {
        shmq_consumer_batch_begin(c, 1 + (arg >> 4));
        static uint8_t buf[MAX_MESSAGE];
        size_t length;
        int rc = shmq_consumer_poll(c, buf, sizeof(buf), &length);
        EXPECT(rc == 0 || rc == SHMQ_EMPTY || rc == SHMQ_CORRUPT, "poll returned %d (%s)", rc,
               shmq_strerror(rc));
        if (rc == 0)
            check_message(s, (int)k, buf, length, "poll before a close");
    }
    close_member(s, k);
    if (arg & 2)
        open_member(s, k);
}

/* Locks the harness takes among the group's, as another process could: a
 * member byte (a member slot that looks alive: rescue leaves its claim
 * alone, joiners skip it); an id lock in a member's id range (a garbage id
 * told for the group, or a second one beside a member's own: the producer
 * and joiners must validate what they map, or wait); or the id a joiner of
 * a free slot would tell (it must take another slot). */
static void op_lock(struct session *s, uint8_t arg)
{
    if (s->locks_fd < 0)
        return;
    unsigned k;
    struct shmq_consumer *c = member_at(s, 0, &k);
    uint32_t group = c != NULL ? c->group->index : 0;
    uint32_t slot = (arg >> 3) % 4;
    struct flock range = {.l_whence = SEEK_SET, .l_len = 1};
    switch (arg & 7) {
    case 1:
        range.l_type = F_WRLCK;
        range.l_start = (off_t)shmq_group_member_byte(group, slot);
        break;
    case 5:
        range.l_type = F_WRLCK;
        range.l_start = (off_t)(shmq_group_id_byte(group, slot) + (uint64_t)(arg >> 5));
        s->page_patched = 1;
        break;
    case 3:
        /* At the id a joiner of that slot would tell: it must take another. */
        if (s->page_id < 0)
            return;
        range.l_type = F_WRLCK;
        range.l_start = (off_t)(shmq_group_id_byte(group, slot) + (uint64_t)s->page_id);
        break;
    default:
        /* Let go of everything the harness planted. */
        range.l_type = F_UNLCK;
        range.l_start = (off_t)SHMQ_GROUP_BASE;
        range.l_len = 0;
        break;
    }
    if (fcntl(s->locks_fd, F_OFD_SETLK, &range) == 0 && range.l_type != F_UNLCK)
        s->planted = 1;
}

/* shmq_group_low over the page as the producer maps it, for a head of the
 * input's choice: never outside [head - capacity, head]. */
static void op_group_low(struct session *s, uint8_t arg, uint8_t where, uint64_t raw)
{
    struct shmq_consumer_state *cs = &s->p->consumers;
    if (cs->locks == NULL)
        return;
    shmq_consumers_discover_groups(cs);
    uint64_t capacity = s->p->geometry.capacity;
    for (uint32_t g = 0; g < SHMQ_GROUPS_MAX; g++) {
        const struct shmq_group_view *v = &cs->groups[g];
        for (int k = 0; k < v->count; k++) {
            uint64_t head = (arg & 2) ? raw : value_of(s, where | 0x40, raw);
            int dead = 0;
            uint64_t low = shmq_group_low(cs, g, v->page[k], head, capacity, arg & 1, &dead);
            EXPECT(head - low <= capacity,
                   "group_low(head %llu) = %llu, outside [head - %llu, head]",
                   (unsigned long long)head, (unsigned long long)low,
                   (unsigned long long)capacity);
            low = shmq_group_low(cs, g, v->page[k], head_of(s), capacity, arg & 1, &dead);
            EXPECT(head_of(s) - low <= capacity, "group_low(head) = %llu, head %llu",
                   (unsigned long long)low, (unsigned long long)head_of(s));
        }
    }
}

static void op_inspect(struct session *s, uint8_t arg)
{
    struct shmq_group_info infos[SHMQ_GROUPS_MAX];
    size_t max = arg % (SHMQ_GROUPS_MAX + 1);
    int n = shmq_inspect_groups(queue_name, max ? infos : NULL, max);
    EXPECT(n >= 0 && n <= (int)SHMQ_GROUPS_MAX, "inspect_groups returned %d (%s)", n,
           shmq_strerror(n));
    for (int i = 0; i < n && (size_t)i < max; i++) {
        EXPECT(infos[i].members >= 1 && infos[i].members <= SHMQ_GROUP_MEMBERS_MAX,
               "inspect_groups: %u members", infos[i].members);
        EXPECT(infos[i].name[SHMQ_GROUP_NAME_MAX] == '\0', "inspect_groups: name unterminated");
        EXPECT(infos[i].claimed <= (uint64_t)SHMQ_GROUP_MEMBERS_MAX * s->pre.capacity,
               "inspect_groups: %llu claimed", (unsigned long long)infos[i].claimed);
    }
    struct shmq_consumer_info consumers[8];
    n = shmq_producer_consumers(s->p, consumers, 8);
    EXPECT(n >= 0, "producer_consumers returned %d", n);
}

/* A rescue now, as a member that finds nothing would make. */
static void op_rescue(struct session *s, uint8_t arg)
{
    int who;
    struct shmq_consumer *c = target(s, arg, &who);
    if (c == NULL || who < 0)
        return;
    c->group->next_rescue_ns = 0;
    shmq_group_rescue(c);
}

static void run_op(struct session *s, struct reader *r)
{
    uint8_t op = read_u8(r);
    uint8_t arg = read_u8(r);
    switch (op % OPS) {
    case OP_POLL: op_poll(s, arg, 0); break;
    case OP_POLL_MANY: op_poll_many(s, arg); break;
    case OP_PEEK: op_peek(s, arg); break;
    case OP_BATCH_BEGIN: op_batch(s, arg, 1); break;
    case OP_BATCH_END: op_batch(s, arg, 0); break;
    case OP_PUBLISH: op_publish(s, arg); break;
    case OP_ROOM: op_room(s, arg); break;
    case OP_WAIT: op_wait(s, arg); break;
    case OP_PATCH_PAGE: {
        uint8_t where = read_u8(r);
        op_patch_page(s, where, read_u64(r));
        break;
    }
    case OP_PATCH_RECORD: {
        uint8_t where = read_u8(r);
        op_patch_record(s, where, read_u64(r));
        break;
    }
    case OP_REOPEN: op_reopen(s, arg); break;
    case OP_LOCK: op_lock(s, arg); break;
    case OP_GROUP_LOW: {
        uint8_t where = read_u8(r);
        op_group_low(s, arg, where, read_u64(r));
        break;
    }
    case OP_INSPECT: op_inspect(s, arg); break;
    case OP_POLL_WAIT: op_poll(s, arg, 1); break;
    default: op_rescue(s, arg); break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd_before = lowest_fd();
    int segments_before = own_segments_left();
    int mappings_before = sysv_mappings();
    struct reader r = {.data = data, .size = size};
    static struct session s;
    memset(&s, 0, sizeof(s));
    s.page_id = -1;
    s.locks_fd = -1;
    read_prelude(&r, &s.pre);

    struct shmq_config config = {
        .slot_size = s.pre.slot_size,
        .capacity = s.pre.capacity,
        .max_message_size = s.pre.max_message,
        .first_sequence = s.pre.first_sequence,
        .max_consumers = 8,
        .delivery = (s.pre.flags & FLAG_LOSSLESS) ? SHMQ_LOSSLESS : SHMQ_LOSSY,
    };
    int rc = shmq_producer_open(&s.p, queue_name, &config, SHMQ_CREATE | SHMQ_EXCL);
    if (rc < 0) {
        /* The host refused (no memory, no System V segments): not a finding. */
        EXPECT(rc == -ENOSPC || rc == -ENOMEM || rc == -EMFILE, "producer_open returned %d (%s)",
               rc, shmq_strerror(rc));
        unlink_queue();
        return 0;
    }
    for (uint32_t i = 0; i < s.pre.published; i++) {
        static uint8_t payload[MAX_MESSAGE];
        uint64_t next = head_of(&s);
        size_t length = pattern_length(next, s.pre.salt, s.pre.slot_size, s.pre.max_message);
        fill_pattern(payload, length, next, s.pre.salt);
        rc = shmq_producer_publish(s.p, payload, length, NULL);
        EXPECT(rc == 0 || (rc == SHMQ_FULL && (s.pre.flags & FLAG_LOSSLESS)),
               "publish returned %d (%s)", rc, shmq_strerror(rc));
    }
    for (unsigned k = 0; k < s.pre.members; k++)
        open_member(&s, k);
    if (s.pre.flags & FLAG_PLAIN) {
        struct shmq_consumer_options options = {.start = SHMQ_START_EARLIEST};
        rc = shmq_consumer_open_with(&s.plain, queue_name, &options);
        EXPECT(rc == 0, "plain consumer: open returned %d (%s)", rc, shmq_strerror(rc));
    }
    rc = shmq_region_open(&s.ring, queue_name, SHMQ_REGION_READ_WRITE);
    EXPECT(rc == 0, "cannot map the ring: %d", rc);
    s.locks_fd = open(locks_path, O_RDWR | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);

    for (uint32_t i = 0; i < s.pre.ops; i++) {
        run_op(&s, &r);
        check_members(&s, "after an op");
    }

    for (unsigned k = 0; k < MAX_MEMBERS; k++)
        close_member(&s, k);
    shmq_consumer_close(s.plain);
    shmq_producer_close(s.p);
    if (s.page != NULL)
        shmdt(s.page);
    if (s.locks_fd >= 0)
        close(s.locks_fd);
    shmq_region_close(s.ring);
    unlink_queue();
    struct stat st;
    EXPECT(lstat(ring_path, &st) != 0 && lstat(locks_path, &st) != 0 &&
               lstat(producer_path, &st) != 0,
           "a file of %s is left in /dev/shm", queue_name);
    int fd = lowest_fd();
    EXPECT(fd == fd_before, "descriptor leak: lowest free descriptor %d, was %d", fd, fd_before);
    int segments = own_segments_left();
    EXPECT(segments == segments_before,
           "System V leak: %d segments made by this process are not marked for removal, %d "
           "before the input", segments, segments_before);
    int mappings = sysv_mappings();
    EXPECT(mappings == mappings_before, "System V leak: %d segments mapped, %d before the input",
           mappings, mappings_before);
    return 0;
}

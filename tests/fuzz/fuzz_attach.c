/*
 * libFuzzer target: attach and header validation, reading records (layout 6:
 * an index of records, each message's payload in one or more slots of the
 * data area), and the consumer state of layout 3, over shared memory built
 * from the fuzzer's bytes. tests/fuzz/run.sh builds and runs it;
 * tests/fuzz/README.md says how to replay a finding.
 *
 * WHAT ONE INPUT DOES
 *   1. Builds a valid queue by hand from the geometry the prelude asks for:
 *      the ring, in /dev/shm, through the core's own header code
 *      (shmq_header_init), with `published` messages stamped through a
 *      producer bound to that mapping (so the index and the data area hold
 *      real, checkable records: lengths up to max_message_size, many
 *      spanning several slots, some pushed past the data area's last slots
 *      to slot 0, leaving padding); and its consumer state through the
 *      core's own producer-side code (shmq_consumers_producer_open): the
 *      empty lock file
 *      NAME.consumers and the wake page, one page of System V memory whose id
 *      it stores in the ring (line 4, wake_shm); and NAME.producer, as a
 *      producer that made the queue and left leaves it. Starting from a
 *      valid queue puts every input past the magic and size checks, so
 *      coverage starts deep instead of waiting for the fuzzer to guess them.
 *   2. Damages it with up to 16 patches, each a 1/2/4/8-byte value written at
 *      an offset inside one area of a target:
 *        ring       identity line, control lines (head, tail, futex word,
 *                   stream state, wake_shm), an index record's bytes,
 *                   anywhere; and, as variant, the identity's data_offset or
 *                   max_message, the tail word, one field of an index record
 *                   (stamp, length or slot, raw or near what matters: the
 *                   head, max_message, a slot count, the data area's end),
 *                   the data area;
 *        wake page  attached by the harness (shmat) by the id the ring names,
 *                   if this process made it: the wake line, the producer's
 *                   line, the tag, anywhere;
 *        entry      the page of the real consumer's entry (its own System V
 *                   page, found from the consumer handle): position, pid and
 *                   state, lost/instance/index, anywhere;
 *        lock file  which nobody maps: its bytes (pwrite), its size
 *                   (ftruncate), its mode (fchmod); locks planted in an
 *                   entry's id range (SHMQ_ENTRY_ID_BASE + i * SPAN + d,
 *                   d a raw number, next to the consumer's own id, the wake
 *                   page's or a decoy's; one byte, two, to the range's end or
 *                   all of it; write or read locks); a lock on an entry's
 *                   live byte i (or a read lock on NAME.producer's byte 0);
 *                   the ring's wake_shm set to a garbage id, a decoy
 *                   segment (two pages or half a page with a good tag, one
 *                   page untagged or tagged for another instance), the
 *                   consumer's entry, -1 or the harness's own wake page.
 *      Flags can also shrink or grow the ring before anyone maps it, fill
 *      the lock file with garbage, widen the modes, leave out the lock file,
 *      the wake page or both, and plant a FIFO, a directory or a symlink
 *      under NAME.consumers or NAME.producer.
 *   3. Opens a consumer (start latest, earliest or at a sequence, with or
 *      without an entry and an owner check) and, if asked, attaches a
 *      producer before or after it. The queue may be lossless, so that the
 *      producer lists the live entries and reads the consumers' positions
 *      (backpressure.c). Entry patches are written once the consumer has
 *      its page; patches marked "live" only once everyone is open, through
 *      the harness's own writable mappings: that is how a field read twice,
 *      or a stamp or length trusted without a check, would show up as an
 *      out-of-bounds access.
 *   4. Runs up to 32 operations: poll, poll_many, poll_wait(0), poll_alloc
 *      (into buffers of the largest message, of none, of some bytes or
 *      slots, or larger), wait (timeout 0 or 1 us, so the consumer sleeps on
 *      the wake page), peek/release (maybe publishing meanwhile), the
 *      accessors, and through the producer publish, publish_many (maybe
 *      one byte past max_message_size), wait_room, wait_room_for and
 *      publish_wait (0 or 1 us, so a lossless producer waits on the wake
 *      page and probes liveness),
 *      claim/commit/abort, the producer's list of consumers and
 *      shmq_inspect; and letting go of the locks the harness planted.
 *
 * WHAT IT ASSERTS (a failed check abort()s, so libFuzzer keeps the input)
 *   - Every return code is one the manual (csrc/shmq.h) documents for that
 *     call and that situation; -ENOMEM or -EMFILE count as failures, since
 *     nothing here should exhaust memory or descriptors.
 *   - A delivered length is <= max_message_size and <= the buffer; -EMSGSIZE
 *     reports a length that is > the buffer and <= max_message_size;
 *     poll_many's lengths fit the buffer together.
 *   - The consumer's position only moves forward, by exactly the messages
 *     delivered plus the growth of its lost count.
 *   - While no patch touched the identity line, the index or the data area
 *     (the control lines, head and tail included, are validated by the
 *     stamps), every delivered message is byte for byte the one published
 *     under its sequence (or, before first_sequence, the empty record a new
 *     ring starts with); a peek whose release returns 0 lent out exactly
 *     those bytes, also when the producer published a lap meanwhile, and
 *     also after a head or tail changed before a producer takes the ring
 *     over (its takeover trusts the index, not those words: the reproducers
 *     takeover-* in crashers/ are what it once got wrong).
 *   - A lent-out payload (peek) and a loan (claim) lie in the data area,
 *     from the start of a slot.
 *   - System V ids are checked before use: a wake page a consumer or
 *     producer attached is one page, the ring owner's, tagged with the
 *     ring's instance (decoys of another size or tag are refused); a sound
 *     wake page the ring names is used, not replaced; a consumer's entry
 *     page is one page writable by its owner and creator alone (0600 plus
 *     the ring's read bits), the owner's, made by this process, told
 *     by a lock at its id byte, and holds the consumer's index and instance.
 *   - Lossless, with nothing a producer trusts patched (wake page, lock
 *     file bytes and size, planted locks and wake_shm ids are not trusted):
 *     the registered consumer loses nothing. Two locks in a live entry's id
 *     range make the producer wait (SHMQ_FULL, -ETIMEDOUT), never crash;
 *     with no registered consumer and no entry a producer could read, it
 *     always has room. The producer lists an entry it can tell, with the
 *     consumer's pid and position.
 *   - A refused publish or claim publishes nothing; a batch cut short by a
 *     full lossless ring published exactly its first messages.
 *   - Nothing leaks: LeakSanitizer checks memory; the lowest free descriptor
 *     is the same after every input; no System V segment made by this
 *     process outlives the input; no file of the queue is left in /dev/shm;
 *     nobody maps the lock file.
 *   ASan and UBSan (-fno-sanitize-recover) watch every access and operation.
 *
 * INPUT FORMAT (bytes past the end of the input read as zero, so every input,
 * the empty one included, is a valid queue plus whatever it asks for)
 *
 *   prelude, 40 bytes:
 *     0  u8   flags (FLAG_* below)
 *     1  u8   capacity: 2 << (v % 6), so 2..64 slots
 *     2  u16  slot_size: v % 257, 0 meaning the default (1024)
 *     4  u8   consumer entries: 1 + v % 4
 *     5  u8   messages stamped before anyone attaches: v % (2 * capacity + 1)
 *     6  s8   ring size change in 8-byte steps (FLAG_RESIZE_RING)
 *     7  u8   lock file filled with v * 97 garbage bytes (FLAG_FILL_LOCK_FILE)
 *     8  u64  first_sequence
 *     16 u64  the ring's instance number (| 1)
 *     24 u8   patches: v % 17
 *     25 u8   operations: v % 33
 *     26 u16  salt mixed into every payload
 *     28 u8   more flags (MORE_* below)
 *     29 s16  start position, relative to first_sequence (MORE_START_AT)
 *     31 u8   odd files: bits 0-1 what sits under NAME.consumers, bits 2-3
 *             under NAME.producer (ODD_*: the normal file, a FIFO, a
 *             directory, a symlink to the ring)
 *     32 u8   max_message_size (max_message_choice in fuzz_input.h: 0 the
 *             default, slot_size * k, or exactly slot_size * capacity)
 *     33 u8   size flags (SIZE_* below)
 *     34      reserved, 6 bytes
 *   patches, 11 bytes each: where u8 | offset u16 | value u64
 *     where bits 0 and 6: target (bit 0 + 2 * bit 6: ring, wake page, entry,
 *     lock file); bits 1-2: width 1 << v; bits 3-4: area; bit 5: live;
 *     bit 7: variant (ring: the areas from RING_SIZES on, where but for the
 *     data area the width bits pick how the value is made; lock file:
 *     truncate or chmod instead of pwrite, read lock instead of write lock)
 *   operations, 2 bytes each: op u8 (op % 13 picks one of run_op's) | arg u8
 *
 * Each fuzzer process uses one queue name, "fuzz-TAG-PID", created and
 * unlinked within every input; TAG comes from $SHMQ_FUZZ_TAG so that run.sh
 * can sweep /dev/shm after a crash, the one exit that skips our unlink. Its
 * System V pages are marked for removal as soon as they are mapped; run.sh
 * looks for any left with the fuzzer's pid as creator.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ring_internal.h"

#define FUZZ_TARGET "fuzz_attach"
#include "fuzz_input.h"

#define PRELUDE_SIZE 40u
#define PATCH_SIZE 11u
#define OP_SIZE 2u
#define MAX_PATCHES 16u
#define MAX_OPS 32u
#define MAX_ENTRIES 4u
/* The largest max_message_size a prelude asks for: the default slot size
 * times the largest capacity. */
#define MAX_MESSAGE (SHMQ_DEFAULT_SLOT_SIZE * 64u)
/* A short wait: long enough to go through a sleep round (the wake page, the
 * futex, a lossless producer's liveness probe), short enough for speed. */
#define SHORT_WAIT_NS 1000

enum {
    FLAG_NO_CONSUMER_STATE = 1u << 0, /* neither the lock file nor the wake page */
    FLAG_START_EARLIEST = 1u << 1,
    FLAG_PRODUCER = 1u << 2,          /* attach a producer too */
    FLAG_PRODUCER_FIRST = 1u << 3,    /* ... before the consumer, not after */
    FLAG_RESIZE_RING = 1u << 4,
    FLAG_FILL_LOCK_FILE = 1u << 5,    /* garbage in the lock file, which nobody maps */
    FLAG_WIDE_MODES = 1u << 6,        /* ring 0644, lock file 0666 */
    FLAG_NO_ENTRY = 1u << 7,          /* the consumer claims no entry */
};

enum {
    MORE_CHECK_OWNER = 1u << 0,       /* require our own uid: must pass */
    MORE_WRONG_OWNER = 1u << 1,       /* require another uid: -EPERM */
    MORE_PRODUCER_GEOMETRY = 1u << 2, /* the producer asks for slot_size + 1: -EMEDIUMTYPE */
    MORE_LOSSLESS = 1u << 3,          /* a lossless queue */
    MORE_START_AT = 1u << 4,          /* the consumer starts at a given sequence */
    MORE_PRODUCER_DELIVERY = 1u << 5, /* the producer asks for the other delivery: -EMEDIUMTYPE */
    MORE_NO_WAKE_PAGE = 1u << 6,      /* the ring names no wake page (wake_shm -1) */
    MORE_NO_LOCK_FILE = 1u << 7,      /* no NAME.consumers (a producer makes one) */
};

/* Size flags (prelude byte 33). */
enum {
    SIZE_PRODUCER_OTHER_MAX = 1u << 0, /* the producer asks for max_message + 1: -EMEDIUMTYPE */
    SIZE_PRODUCER_SAME_MAX = 1u << 1,  /* ... for the queue's own: it attaches */
};

/* What sits under NAME.consumers / NAME.producer (prelude byte 31). */
enum { ODD_NONE, ODD_FIFO, ODD_DIRECTORY, ODD_SYMLINK };

/* Patch targets, and their areas. */
enum { TARGET_RING, TARGET_WAKE, TARGET_ENTRY, TARGET_LOCKS };
/* Ring areas: area + 4 * variant. RING_SIZES (data_offset or max_message),
 * RING_TAIL and RING_RECORD_FIELD write one field, with a value made as the
 * width bits say (patch_ring_field); the others write the value's bytes. */
enum { RING_IDENTITY, RING_CONTROL_LINES, RING_INDEX, RING_ANYWHERE,
       RING_SIZES, RING_TAIL, RING_RECORD_FIELD, RING_DATA };
/* The fields of an index record (RING_RECORD_FIELD). */
enum { FIELD_STAMP, FIELD_LENGTH, FIELD_SLOT };
enum { WAKE_SLEEPERS, WAKE_PRODUCER, WAKE_TAG, WAKE_ANYWHERE };
enum { ENTRY_POSITION, ENTRY_PID_STATE, ENTRY_REST, ENTRY_ANYWHERE };
enum { LOCKS_FILE, LOCKS_ID_RANGE, LOCKS_LIVE_BYTE, LOCKS_WAKE_ID };
/* Where a planted id lock points (value & 3). */
enum { PLANT_RAW, PLANT_NEAR_OWN, PLANT_WAKE, PLANT_DECOY };
/* What LOCKS_WAKE_ID stores (value & 7). */
enum { WAKE_ID_RAW, WAKE_ID_DECOY_0, WAKE_ID_DECOY_1, WAKE_ID_DECOY_2, WAKE_ID_DECOY_3,
       WAKE_ID_ENTRY, WAKE_ID_NONE, WAKE_ID_OURS };
/* Decoy segments, all this process's and one page unless said: two pages
 * with a good tag, untagged, tagged for another instance, half a page with
 * a good tag. */
enum { DECOY_TWO_PAGES, DECOY_UNTAGGED, DECOY_OTHER_INSTANCE, DECOY_HALF_PAGE, DECOYS };


/* What the harness itself planted under the queue's names: a directory is
 * the one thing shmq_unlink cannot remove. */
static void remove_odd_files(void)
{
    rmdir(locks_path);
    rmdir(producer_path);
}

static void at_exit(void)
{
    unlink_queue();
    remove_odd_files();
}

/* The message stamped under `sequence`: its length and its bytes, so that a
 * delivered copy can be checked without keeping what was published. */
static size_t pattern_length(uint64_t sequence, uint32_t salt, uint32_t slot_size,
                             uint64_t max_message)
{
    return pattern_length_in(sequence, salt, 0, slot_size, (size_t)max_message);
}

static void fill_pattern(uint8_t *buf, size_t length, uint64_t sequence, uint32_t salt)
{
    for (size_t i = 0; i < length; i++)
        buf[i] = pattern_byte(sequence, salt, i);
}


/* Whether this process maps anything of `path` (the lock file: nobody may). */
static int mapped_here(const char *path)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (f == NULL)
        return 0;
    char line[512];
    int found = 0;
    size_t n = strlen(path);
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        char *end = strchr(line, '\n');
        if (end != NULL)
            *end = '\0';
        size_t length = strlen(line);
        found = length >= n && strcmp(line + length - n, path) == 0;
    }
    fclose(f);
    return found;
}

/* ------------------------------------------------------- the seed corpus */

/* Seeds, in the format above: valid queues of several geometries, each with
 * a mix of operations, some with the patches that reach the deeper checks
 * (a live stamp that laps the reader, an impossible length, a head far
 * ahead, a foreign layout version, a raised wake flag, a retagged wake
 * page, decoy wake ids, an entry's position or state rewritten, garbage in
 * the lock file, planted locks that stall a lossless producer or leave it
 * room, read locks, odd files). SHMQ_FUZZ_WRITE_SEEDS=DIR writes them to DIR
 * and exits; run.sh does that before every run. */
struct seed {
    uint8_t flags, capacity_log2, published, more, entries, fill, odd, max_message, sizes;
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
/* short waits: the consumer sleeps on the wake page, a lossless producer
 * waits for room and probes; spin, list with shmq_inspect */
#define SEED_OPS_SHORT "\7\x02\6\x07\x0a\x02\x0a\x03\7\x03\4\xff\7\x02\0\0\x0b\x84\5\0\7\x02"
/* fill, let go of the planted locks, wait for room (the producer probes and
 * forgets an entry nobody holds), fill again */
#define SEED_OPS_RELEASE "\6\x07\x0a\x03\x0c\0\x0a\x03\x0a\x02\6\x07\x0b\x84"
/* large messages: peek while 3 are published, poll into the largest
 * buffer, peek while 8 are, publish_many, poll_many into room for 4, peek
 * and poll into buffers of 1 and 2 slots, wait_room_for the next length and
 * for one byte too many, claim, poll into no buffer, inspect */
#define SEED_OPS_LARGE \
    "\x08\x0e\0\0\x08\x22\6\x07\1\x70\x08\x02\0\x06\0\x0a\x0a\x05\x0a\x0d\x09\0\0\x02\x0b\x84"
/* where | offset u16 | value u64; where: target (0x00 ring, 0x01 wake page,
 * 0x40 entry, 0x41 lock file) | width (0x00 1, 0x02 2, 0x04 4, 0x06 8) |
 * area (0x00, 0x08, 0x10, 0x18) | live 0x20 | variant 0x80 */
#define PATCH_LIVE_STAMP "\x36\0\0\xff\xff\xff\xff\xff\xff\xff\x7f"
#define PATCH_LIVE_LENGTH "\x34\x08\0\xff\xff\xff\xff\0\0\0\0"
#define PATCH_LIVE_HEAD "\x2e\0\0\0\x10\0\0\0\0\0\0"
#define PATCH_VERSION "\x04\x08\0\x02\0\0\0\0\0\0\0"
#define PATCH_WAKE_FLAG "\x25\0\0\x01\0\0\0\0\0\0\0"
#define PATCH_PRODUCER_WAITING "\x2d\0\0\x01\0\0\0\0\0\0\0"
#define PATCH_WAKE_AT "\x2d\x08\0\0\0\0\0\0\0\0\x80"
#define PATCH_WAKE_RETAG "\x17\x08\0\x07\0\0\0\0\0\0\0"
#define PATCH_ENTRY_AHEAD "\x46\0\0\0\0\0\0\0\x10\0\0"
#define PATCH_ENTRY_UNREGISTER "\x4c\x04\0\0\0\0\0\0\0\0\0"
#define PATCH_ENTRY_LIVE_BEHIND "\x66\0\0\0\0\0\0\0\0\0\0"
#define PATCH_LOCKS_WRITE_LIVE "\x67\x03\0\xa5\xa5\xa5\xa5\xa5\xa5\xa5\xa5"
#define PATCH_LOCKS_TRUNCATE_LIVE "\xe1\0\0\x88\x13\0\0\0\0\0\0"
#define PATCH_LOCKS_CHMOD "\xc1\0\0\xb6\x01\0\0\0\0\0\x40"
#define PATCH_PLANT_NEXT_TO_OWN "\x69\0\0\x09\0\0\0\0\0\0\0"
#define PATCH_PLANT_WHOLE_RANGE_0 "\x4f\0\0\0\0\0\0\0\0\0\0"
#define PATCH_PLANT_BYTE_0 "\x51\0\0\0\0\0\0\0\0\0\0"
#define PATCH_PLANT_BYTE_1 "\x51\x01\0\0\0\0\0\0\0\0\0"
#define PATCH_PLANT_ID_5_OF_1 "\x49\0\x01\x14\0\0\0\0\0\0\0"
#define PATCH_PLANT_WAKE_ID_OF_1 "\x49\0\x01\x02\0\0\0\0\0\0\0"
#define PATCH_READ_LOCK_PRODUCER "\xf1\0\0\0\0\0\0\0\0\0\0"
#define PATCH_WAKE_ID_TWO_PAGES "\x59\0\0\x01\0\0\0\0\0\0\0"
#define PATCH_WAKE_ID_HALF_PAGE "\x79\0\0\x04\0\0\0\0\0\0\0"
#define PATCH_WAKE_ID_ENTRY "\x79\0\0\x05\0\0\0\0\0\0\0"
#define PATCH_WAKE_ID_GARBAGE "\x59\0\0\x38\x22\0\0\0\0\0\0"
/* Ring fields (variant 0x80; the width bits pick how the value is made):
 * max_message one byte lower (valid: its largest records become corrupt),
 * max_message twice the bound, data_offset a page on; tail at head, and a
 * lap behind head, before the producer attaches and once everyone is open;
 * record 0's length max_message + 1, record 1's slot one past where its
 * slots end at the data area's end, record 2's stamp the sequence it holds
 * in the lap before head; 8 bytes of the data area. */
#define PATCH_MAX_MESSAGE_DOWN "\x80\x01\0\xff\xff\0\0\0\0\0\0"
#define PATCH_MAX_MESSAGE_PAST "\x82\x01\0\x10\0\0\0\0\0\0\0"
#define PATCH_DATA_OFFSET_PAGE "\x82\0\0\x01\0\0\0\0\0\0\0"
#define PATCH_TAIL_AT_HEAD "\x8a\0\0\x01\0\0\0\0\0\0\0"
#define PATCH_TAIL_LAP_BEHIND "\x8a\0\0\0\0\0\0\0\0\0\0"
#define PATCH_LIVE_TAIL_AT_HEAD "\xaa\0\0\x01\0\0\0\0\0\0\0"
#define PATCH_LIVE_TAIL_LAP_BEHIND "\xaa\0\0\0\0\0\0\0\0\0\0"
#define PATCH_LIVE_LENGTH_PAST_MAX "\xb2\0\x01\x03\0\0\0\0\0\0\0"
#define PATCH_LIVE_SLOT_PAST_END "\xb2\x01\x02\x02\0\0\0\0\0\0\0"
#define PATCH_STAMP_OF_LAP "\x92\x02\0\0\0\0\0\0\0\0\0"
#define PATCH_LIVE_DATA "\xbe\x40\0\x5a\x5a\x5a\x5a\x5a\x5a\x5a\x5a"

#define EARLIEST FLAG_START_EARLIEST
#define PRODUCER FLAG_PRODUCER
#define FIRST FLAG_PRODUCER_FIRST
#define LOSSLESS MORE_LOSSLESS
#define ODD(consumers, producer) ((consumers) | (producer) << 2)
static const struct seed seeds[] = {
    {.flags = EARLIEST, .capacity_log2 = 2, .published = 5, .slot_size = 24,
     PATCHES(""), OPS(SEED_OPS_READ)},
    {.flags = EARLIEST, .published = 4, .slot_size = 8, .first_sequence = UINT64_MAX - 2,
     PATCHES(""), OPS(SEED_OPS_READ)},
    {.flags = EARLIEST | PRODUCER, .published = 3, .slot_size = 16,
     PATCHES(""), OPS(SEED_OPS_MIXED)},
    {.flags = PRODUCER | FIRST | FLAG_NO_CONSUMER_STATE, .capacity_log2 = 3,
     .published = 9, .slot_size = 40, .first_sequence = 7, PATCHES(""), OPS(SEED_OPS_MIXED)},
    {.flags = EARLIEST | FLAG_NO_ENTRY, .capacity_log2 = 1, .published = 4,
     .more = MORE_CHECK_OWNER, .slot_size = 200,
     PATCHES(PATCH_LIVE_STAMP PATCH_LIVE_LENGTH), OPS(SEED_OPS_READ)},
    {.flags = EARLIEST | PRODUCER, .capacity_log2 = 2, .published = 8, .slot_size = 33,
     .first_sequence = 100, PATCHES(PATCH_LIVE_HEAD PATCH_WAKE_FLAG), OPS(SEED_OPS_MIXED)},
    {.flags = PRODUCER | FIRST, .capacity_log2 = 1, .published = 2,
     .more = MORE_PRODUCER_GEOMETRY, .slot_size = 64,
     PATCHES(PATCH_WAKE_RETAG), OPS(SEED_OPS_READ)},
    {.flags = PRODUCER | FLAG_WIDE_MODES, .capacity_log2 = 1, .published = 2,
     .slot_size = 64, PATCHES(PATCH_VERSION), OPS(SEED_OPS_READ)},
    {.flags = FLAG_RESIZE_RING | EARLIEST, .capacity_log2 = 1, .published = 2,
     .more = MORE_WRONG_OWNER, .slot_size = 64, PATCHES(""), OPS(SEED_OPS_READ)},
    {.flags = EARLIEST | PRODUCER, .capacity_log2 = 1, .published = 3, .slot_size = 48,
     PATCHES(""), OPS(SEED_OPS_ZERO_COPY)},
    {.flags = PRODUCER, .capacity_log2 = 1, .more = LOSSLESS, .slot_size = 32,
     PATCHES(""), OPS(SEED_OPS_FILL)},
    {.flags = PRODUCER | FIRST, .capacity_log2 = 2, .published = 6,
     .more = LOSSLESS | MORE_START_AT, .slot_size = 20, PATCHES(""), OPS(SEED_OPS_ZERO_COPY)},
    /* A second id lock next to the registered consumer's: the producer waits,
     * until the lock goes. */
    {.flags = PRODUCER, .capacity_log2 = 1, .more = LOSSLESS, .slot_size = 16,
     PATCHES(PATCH_PLANT_NEXT_TO_OWN), OPS(SEED_OPS_FILL SEED_OPS_SHORT SEED_OPS_RELEASE)},
    /* A live byte with one id lock naming no page: the producer has room. */
    {.flags = PRODUCER | FIRST | FLAG_NO_ENTRY, .capacity_log2 = 1, .more = LOSSLESS,
     .entries = 1, .slot_size = 16, PATCHES(PATCH_PLANT_BYTE_1 PATCH_PLANT_ID_5_OF_1),
     OPS(SEED_OPS_FILL)},
    /* The consumer's entry rewritten: ahead, unregistered, then far behind. */
    {.flags = PRODUCER, .capacity_log2 = 2, .published = 3, .more = LOSSLESS, .slot_size = 8,
     PATCHES(PATCH_ENTRY_AHEAD PATCH_ENTRY_UNREGISTER PATCH_ENTRY_LIVE_BEHIND),
     OPS(SEED_OPS_FILL SEED_OPS_SHORT)},
    /* Garbage in the lock file, before and while everyone is open. */
    {.flags = PRODUCER | FLAG_FILL_LOCK_FILE, .capacity_log2 = 1, .more = LOSSLESS,
     .fill = 77, .slot_size = 24, PATCHES(PATCH_LOCKS_WRITE_LIVE PATCH_LOCKS_TRUNCATE_LIVE),
     OPS(SEED_OPS_FILL SEED_OPS_SHORT)},
    /* The ring names decoy wake pages: refused by their size. */
    {.flags = EARLIEST | PRODUCER, .capacity_log2 = 2, .published = 2, .slot_size = 32,
     PATCHES(PATCH_WAKE_ID_TWO_PAGES PATCH_WAKE_ID_HALF_PAGE PATCH_WAKE_ID_ENTRY),
     OPS(SEED_OPS_READ SEED_OPS_SHORT)},
    /* The wake page's words set by a hostile consumer. */
    {.flags = PRODUCER | FIRST, .capacity_log2 = 1, .more = LOSSLESS, .slot_size = 16,
     PATCHES(PATCH_WAKE_FLAG PATCH_PRODUCER_WAITING PATCH_WAKE_AT),
     OPS(SEED_OPS_SHORT SEED_OPS_FILL)},
    /* A FIFO as the lock file, a symlink as the producer lock. */
    {.flags = EARLIEST | PRODUCER, .capacity_log2 = 1, .published = 2, .slot_size = 16,
     .odd = ODD(ODD_FIFO, ODD_SYMLINK), PATCHES(""), OPS(SEED_OPS_READ)},
    {.flags = PRODUCER | FIRST, .capacity_log2 = 1, .published = 2, .slot_size = 16,
     .odd = ODD(ODD_SYMLINK, ODD_FIFO), PATCHES(""), OPS(SEED_OPS_SHORT)},
    /* All of entry 0's id range and its byte taken: the consumer takes entry 1
     * and the producer waits for entry 0. */
    {.flags = PRODUCER, .capacity_log2 = 1, .more = LOSSLESS, .entries = 1, .slot_size = 16,
     PATCHES(PATCH_PLANT_WHOLE_RANGE_0 PATCH_PLANT_BYTE_0), OPS(SEED_OPS_FILL SEED_OPS_RELEASE)},
    /* Read locks fake no producer; garbage and retagged wake ids. */
    {.flags = EARLIEST, .capacity_log2 = 1, .published = 3, .slot_size = 16,
     PATCHES(PATCH_READ_LOCK_PRODUCER PATCH_WAKE_ID_GARBAGE), OPS(SEED_OPS_SHORT)},
    /* No wake page: the consumer picks up the producer's at its next sleep. */
    {.flags = PRODUCER | EARLIEST, .capacity_log2 = 1, .published = 1, .more = MORE_NO_WAKE_PAGE,
     .slot_size = 16, PATCHES(""), OPS(SEED_OPS_SHORT)},
    /* No lock file until the producer makes one; a live byte whose id lock
     * names the wake page; the lock file's mode changed. */
    {.flags = PRODUCER | FIRST, .capacity_log2 = 1, .more = LOSSLESS | MORE_NO_LOCK_FILE,
     .entries = 1, .slot_size = 16,
     PATCHES(PATCH_PLANT_BYTE_1 PATCH_PLANT_WAKE_ID_OF_1 PATCH_LOCKS_CHMOD),
     OPS(SEED_OPS_FILL SEED_OPS_SHORT)},
    /* Large messages (max_message_size: 0xf0 and up the bound, slot_size *
     * capacity; else slot_size * (1 + v % capacity) less v >> 6 bytes). A
     * message may take the whole data area. */
    {.flags = EARLIEST, .capacity_log2 = 3, .published = 20, .slot_size = 32, .max_message = 0xf0,
     PATCHES(""), OPS(SEED_OPS_READ SEED_OPS_LARGE)},
    /* Six slots at most, of 24 bytes in a stride of 32: padding at the end. */
    {.flags = EARLIEST | PRODUCER, .capacity_log2 = 2, .published = 10, .slot_size = 24,
     .max_message = 5, PATCHES(""), OPS(SEED_OPS_LARGE SEED_OPS_MIXED)},
    /* The default slot size and the largest ring: 64 KiB messages. */
    {.flags = EARLIEST | PRODUCER | FIRST, .capacity_log2 = 5, .published = 12,
     .max_message = 0xff, .sizes = SIZE_PRODUCER_SAME_MAX, PATCHES(""), OPS(SEED_OPS_LARGE)},
    /* Lossless, records of up to four slots: the producer waits for the
     * records a large one would overwrite. */
    {.flags = PRODUCER | FIRST, .capacity_log2 = 2, .more = LOSSLESS, .slot_size = 16,
     .max_message = 3, PATCHES(""), OPS(SEED_OPS_FILL SEED_OPS_LARGE)},
    {.flags = PRODUCER, .capacity_log2 = 3, .published = 5, .more = LOSSLESS | MORE_START_AT,
     .slot_size = 20, .max_message = 0x4b, PATCHES(""), OPS(SEED_OPS_ZERO_COPY SEED_OPS_LARGE)},
    /* Index records rewritten under the reader: a length past max_message,
     * a slot whose record runs past the data area, payload bytes. */
    {.flags = EARLIEST | PRODUCER, .capacity_log2 = 3, .published = 12, .slot_size = 40,
     .max_message = 0x47,
     PATCHES(PATCH_LIVE_LENGTH_PAST_MAX PATCH_LIVE_SLOT_PAST_END PATCH_LIVE_DATA
             PATCH_STAMP_OF_LAP),
     OPS(SEED_OPS_READ SEED_OPS_LARGE)},
    /* Tail at head before the producer takes over (it invalidates what lies
     * below), then a lap behind and at head again under it (a hint only). */
    {.flags = EARLIEST | PRODUCER, .capacity_log2 = 2, .published = 9, .slot_size = 64,
     .max_message = 0xf3,
     PATCHES(PATCH_TAIL_AT_HEAD PATCH_LIVE_TAIL_LAP_BEHIND PATCH_LIVE_TAIL_AT_HEAD),
     OPS(SEED_OPS_MIXED SEED_OPS_LARGE)},
    /* Tail a lap behind before the producer takes over (a takeover that
     * trusted it delivered a torn message). */
    {.flags = EARLIEST | PRODUCER, .capacity_log2 = 1, .published = 3, .slot_size = 16,
     .max_message = 3, PATCHES(PATCH_TAIL_LAP_BEHIND), OPS(SEED_OPS_MIXED SEED_OPS_LARGE)},
    /* max_message lowered by a byte; a producer that asks for another. */
    {.flags = EARLIEST | PRODUCER, .capacity_log2 = 1, .published = 3, .slot_size = 16,
     .max_message = 2, .sizes = SIZE_PRODUCER_OTHER_MAX, PATCHES(PATCH_MAX_MESSAGE_DOWN),
     OPS(SEED_OPS_READ)},
    /* Impossible sizes: refused. */
    {.flags = EARLIEST | PRODUCER | FIRST, .capacity_log2 = 2, .published = 3, .slot_size = 16,
     .max_message = 0xf0, PATCHES(PATCH_MAX_MESSAGE_PAST), OPS(SEED_OPS_READ)},
    {.flags = EARLIEST | PRODUCER, .capacity_log2 = 2, .published = 3, .slot_size = 16,
     .max_message = 1, PATCHES(PATCH_DATA_OFFSET_PAGE), OPS(SEED_OPS_READ)},
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
        uint8_t ring_delta = (uint8_t)-8, patches = s->patch_count, ops = s->op_count;
        uint64_t instance = 0x5eed0000u + i;
        uint16_t salt = (uint16_t)(17 * i);
        if (patches > MAX_PATCHES || ops > MAX_OPS) {
            fprintf(stderr, "fuzz_attach: seed %zu is too long\n", i);
            exit(1);
        }
        put(out, 0, &s->flags, 1);
        put(out, 1, &s->capacity_log2, 1);
        put(out, 2, &s->slot_size, 2);
        put(out, 4, &s->entries, 1);
        put(out, 5, &s->published, 1);
        put(out, 6, &ring_delta, 1);
        put(out, 7, &s->fill, 1);
        put(out, 8, &s->first_sequence, 8);
        put(out, 16, &instance, 8);
        put(out, 24, &patches, 1);
        put(out, 25, &ops, 1);
        put(out, 26, &salt, 2);
        put(out, 28, &s->more, 1);
        put(out, 31, &s->odd, 1);
        put(out, 32, &s->max_message, 1);
        put(out, 33, &s->sizes, 1);
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
    name_queue("");
    at_exit();
    atexit(at_exit);
    return 0;
}

/* ------------------------------------------------------------- the queue */

struct prelude {
    uint8_t flags;
    uint8_t more;
    uint8_t odd;
    uint8_t sizes;
    struct shmq_config config;
    uint64_t instance;
    uint32_t published;
    int8_t ring_delta;
    uint8_t fill;
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
    p->config.max_consumers = 1 + read_u8(r) % MAX_ENTRIES;
    p->published = read_u8(r) % (2 * p->config.capacity + 1);
    p->ring_delta = (int8_t)read_u8(r);
    p->fill = read_u8(r);
    p->config.first_sequence = read_u64(r);
    p->instance = read_u64(r) | 1;
    p->patches = read_u8(r) % (MAX_PATCHES + 1);
    p->ops = read_u8(r) % (MAX_OPS + 1);
    p->salt = read_u16(r);
    p->more = read_u8(r);
    p->start_delta = (int16_t)read_u16(r);
    p->odd = read_u8(r);
    uint32_t slot_size = p->config.slot_size ? p->config.slot_size : SHMQ_DEFAULT_SLOT_SIZE;
    p->config.max_message_size = max_message_choice(read_u8(r), slot_size, p->config.capacity);
    p->sizes = read_u8(r);
    if (p->more & MORE_LOSSLESS)
        p->config.delivery = SHMQ_LOSSLESS;
    r->at = PRELUDE_SIZE;
}

/* A System V segment the harness mapped itself, detached after the input. */
struct mapping {
    int id;
    unsigned char *base;
    size_t size;
};

/* A lock the harness holds in an entry's id range: [start, start + length)
 * relative to the range, a write lock or a read lock. */
struct plant {
    uint64_t start;
    uint64_t length;
    int write;
};

/* The harness's own view of the queue: writable mappings, its own lock
 * descriptions, and what it planted. */
struct queue {
    struct shmq_geometry geometry;
    struct shmq_region *ring;
    /* What the core's producer-side code made: the lock file (which the
     * harness then closes or removes as asked) and the wake page. */
    struct shmq_consumer_state state;
    int wake_id;      /* the wake page the harness made, or -1 */
    int locks_fd;     /* the harness's own description of NAME.consumers, or -1 */
    int producer_fd;  /* NAME.producer, read-locked by a patch, or -1 */
    struct mapping maps[12];
    unsigned map_count;
    int decoys[DECOYS]; /* ids, or -1 until made */
    int payloads_trusted; /* no patch touched geometry or slots */
    int intact;           /* no patch touched what a lossless producer trusts */
    int ring_resized;
    int entry_patched;
    int producer_read_locked;
    /* What the harness holds per entry: a write lock on its live byte, and
     * the locks it took in its id range, in order. */
    uint8_t live_planted[MAX_ENTRIES];
    struct plant plants[MAX_ENTRIES][MAX_PATCHES];
    unsigned plant_count[MAX_ENTRIES];
};

static struct shmq_control *control_of(const struct queue *q)
{
    return (struct shmq_control *)shmq_region_base(q->ring);
}

/* The wake page id the ring names now (the harness's own mapping: it never
 * looks past the control page, which survives any resize of the ring). */
static int ring_wake_id(const struct queue *q)
{
    return shmq_load_acquire(&control_of(q)->wake_shm);
}

/* The instance the ring's header states now: patches may have changed it
 * since the harness wrote it, and openers take it from there. */
static uint64_t ring_instance(const struct queue *q)
{
    uint64_t instance;
    const unsigned char *identity = (const unsigned char *)control_of(q);
    memcpy(&instance, identity + offsetof(struct shmq_identity, instance), sizeof(instance));
    return instance;
}

/* Attaches segment `id` writable for patching, only if this process made
 * it: a garbage id must never make the harness write into a stranger's
 * segment. Returns its base (and *size, at most a page), or NULL. */
static unsigned char *harness_attach(struct queue *q, int id, size_t *size)
{
    for (unsigned i = 0; i < q->map_count; i++) {
        if (q->maps[i].id == id) {
            *size = q->maps[i].size;
            return q->maps[i].base;
        }
    }
    struct shmid_ds ds;
    if (id < 0 || q->map_count == sizeof(q->maps) / sizeof(q->maps[0]) ||
        shmctl(id, IPC_STAT, &ds) != 0 || ds.shm_cpid != self)
        return NULL;
    void *base = shmat(id, NULL, 0);
    if (base == (void *)-1)
        return NULL;
    size_t bytes = ds.shm_segsz < q->geometry.page_size ? ds.shm_segsz : q->geometry.page_size;
    q->maps[q->map_count++] = (struct mapping){.id = id, .base = base, .size = bytes};
    *size = bytes;
    return base;
}

/* A segment that is not the queue's wake page, made (once per input) to be
 * named where the ring names its wake page, or where a lock names an
 * entry's page. Marked for removal at once, like the real ones. */
static int decoy(struct queue *q, unsigned kind)
{
    kind %= DECOYS;
    if (q->decoys[kind] >= 0)
        return q->decoys[kind];
    size_t page = q->geometry.page_size;
    size_t size = kind == DECOY_TWO_PAGES ? 2 * page : kind == DECOY_HALF_PAGE ? page / 2 : page;
    int id = shmget(IPC_PRIVATE, size, IPC_CREAT | IPC_EXCL | 0600);
    if (id < 0)
        return -1;
    size_t mapped;
    struct shmq_wake_page *w = (struct shmq_wake_page *)harness_attach(q, id, &mapped);
    shmctl(id, IPC_RMID, NULL);
    if (w == NULL)
        return -1;
    if (kind != DECOY_UNTAGGED) {
        w->magic = SHMQ_WAKE_MAGIC;
        w->ring_instance = kind == DECOY_OTHER_INSTANCE ? ring_instance(q) ^ 2 : ring_instance(q);
    }
    q->decoys[kind] = id;
    return id;
}

/* Whether segment `id` is a wake page anyone should take for this ring:
 * one page, the owner's, made by this process, tagged with the instance
 * the ring states. */
static int good_wake_page(struct queue *q, int id)
{
    struct shmid_ds ds;
    if (id < 0 || shmctl(id, IPC_STAT, &ds) != 0 || ds.shm_segsz != q->geometry.page_size ||
        ds.shm_perm.cuid != geteuid() || ds.shm_perm.uid != geteuid() || ds.shm_cpid != self)
        return 0;
    size_t size;
    const struct shmq_wake_page *w = (const struct shmq_wake_page *)harness_attach(q, id, &size);
    return w != NULL && w->magic == SHMQ_WAKE_MAGIC && w->ring_instance == ring_instance(q);
}

/* Whether a producer would map segment `id` as an entry (consumer_state.c,
 * attach_entry): one page, the owner's, no access for group or others. */
static int sound_entry_page(const struct queue *q, int64_t id)
{
    struct shmid_ds ds;
    return id >= 0 && id <= INT32_MAX && shmctl((int)id, IPC_STAT, &ds) == 0 &&
           ds.shm_segsz == q->geometry.page_size && ds.shm_perm.uid == geteuid() &&
           (ds.shm_perm.mode & 0077) == 0;
}

/* Opens the lock file as a hostile consumer would, for its bytes and its
 * locks: a description of the harness's own, never mapped. */
static void open_locks(struct queue *q)
{
    q->locks_fd = open(locks_path, O_RDWR | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (q->locks_fd >= 0 && (fstat(q->locks_fd, &st) != 0 || !S_ISREG(st.st_mode))) {
        close(q->locks_fd);
        q->locks_fd = -1;
    }
}

/* Puts a FIFO, a directory or a symlink to the ring under `path`. */
static void plant_odd(const char *path, unsigned kind)
{
    if (kind == ODD_NONE)
        return;
    unlink(path);
    switch (kind) {
    case ODD_FIFO: mkfifo(path, 0600); break;
    case ODD_DIRECTORY: mkdir(path, 0700); break;
    default:
        if (symlink(ring_path, path) != 0)
            FAIL("symlink %s: %s", path, strerror(errno));
        break;
    }
}

/* Builds a valid queue from the prelude; 0, or -1 if the host refused. */
static int build_queue(struct queue *q, const struct prelude *p)
{
    memset(q, 0, sizeof(*q));
    q->wake_id = -1;
    q->locks_fd = -1;
    q->producer_fd = -1;
    for (unsigned i = 0; i < DECOYS; i++)
        q->decoys[i] = -1;
    if (shmq_geometry_plan(&q->geometry, &p->config) < 0)
        FAIL("geometry_plan refused capacity %u slot_size %u max_message_size %llu",
             p->config.capacity, p->config.slot_size,
             (unsigned long long)p->config.max_message_size);
    /* The input chooses the instance, so runs are reproducible. */
    q->geometry.instance = p->instance;
    if (shmq_region_create(&q->ring, queue_name, (size_t)q->geometry.total_size, 0600) < 0)
        return -1;
    unsigned char *base = shmq_region_base(q->ring);
    shmq_header_init(base, &q->geometry);
    /* Messages stamped by a producer bound to our mapping: the core's own
     * write path, so the index and the data area hold exactly what a real
     * producer leaves (records of mixed sizes, padding, invalidation marks,
     * tail). */
    struct shmq_producer stamper;
    memset(&stamper, 0, sizeof(stamper));
    shmq_producer_bind(&stamper, base, &q->geometry, NULL);
    static uint8_t payload[MAX_MESSAGE];
    for (uint32_t i = 0; i < p->published; i++) {
        uint64_t s = shmq_producer_next_sequence(&stamper);
        size_t length = pattern_length(s, p->salt, q->geometry.slot_size, q->geometry.max_message);
        fill_pattern(payload, length, s, p->salt);
        if (shmq_producer_publish(&stamper, payload, length, NULL) != 0)
            FAIL("stamping message %u failed", i);
    }
    free(stamper.record_slots); /* what bind allocated: the rest is ours */
    if (!(p->flags & FLAG_NO_CONSUMER_STATE)) {
        /* The lock file and the wake page, as a producer makes them. */
        if (shmq_consumers_producer_open(&q->state, queue_name, &q->geometry,
                                         (struct shmq_control *)base, 0600) < 0)
            return -1;
        q->wake_id = q->state.wake_id;
        if (p->more & MORE_NO_WAKE_PAGE)
            shmq_store_release(&control_of(q)->wake_shm, -1);
        if (p->more & MORE_NO_LOCK_FILE)
            unlink(locks_path);
    }
    /* The harness is nobody's producer: the lock file stays open only for
     * what it plants itself. A producer that made the queue leaves its lock
     * file, NAME.producer, which consumers watch from their open on. */
    shmq_region_close(q->state.locks);
    q->state.locks = NULL;
    struct shmq_region *lock;
    if (shmq_producer_lock_take(&lock, queue_name) < 0)
        return -1;
    shmq_region_close(lock);
    plant_odd(locks_path, p->odd & 3);
    plant_odd(producer_path, (p->odd >> 2) & 3);
    open_locks(q);
    shmq_header_publish(base);
    q->payloads_trusted = 1;
    q->intact = 1;
    return 0;
}

static void close_queue(struct queue *q)
{
    for (unsigned i = 0; i < q->map_count; i++)
        shmdt(q->maps[i].base);
    q->map_count = 0;
    if (q->locks_fd >= 0)
        close(q->locks_fd);
    if (q->producer_fd >= 0)
        close(q->producer_fd);
    q->locks_fd = q->producer_fd = -1;
    shmq_region_close(q->ring);
    shmq_consumers_close(&q->state);
    q->ring = NULL;
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
    uint64_t max = shmq_consumer_max_message_size(c);
    EXPECT(length <= max, "%s delivered %zu bytes, max_message_size %llu", what, length,
           (unsigned long long)max);
    if (!q->payloads_trusted)
        return;
    /* A sequence before first_sequence is reachable only through a head
     * patched behind it; its record may still be as header_init left it
     * ("one lap before", length 0), which reads as an empty message.
     * Garbage in shared memory can't be told from messages; the check is
     * that nothing else comes out. */
    if ((int64_t)(sequence - q->geometry.first_sequence) < 0 && length == 0)
        return;
    size_t want = pattern_length(sequence, salt, shmq_consumer_slot_size(c), max);
    EXPECT(length == want, "%s: sequence %llu has %zu bytes, published %zu", what,
           (unsigned long long)sequence, length, want);
    for (size_t i = 0; i < length; i++)
        EXPECT(buf[i] == pattern_byte(sequence, salt, i), "%s: sequence %llu differs at byte %zu",
               what, (unsigned long long)sequence, i);
}

/* A buffer of exactly the size asked for, so ASan sees one byte too many:
 * of `max` bytes (the largest message, or poll_many's room for several), of
 * none, of arg >> 2 units (bytes; slots where messages span several, so that
 * some fit and some don't), or a little more than `max`. */
static uint8_t *buffer_for(uint8_t arg, size_t max, uint32_t unit, size_t *size)
{
    switch (arg & 3) {
    case 0: *size = max; break;
    case 1: *size = 0; return NULL;
    case 2: *size = (size_t)(arg >> 2) * unit; break;
    default: *size = max + (arg >> 2); break;
    }
    uint8_t *buf = malloc(*size ? *size : 1);
    if (buf == NULL)
        FAIL("out of memory");
    return buf;
}

struct alloc_state {
    uint8_t *buf;
    size_t length;
    uint64_t max_message;
    int refuse;
};

static void *alloc_message(void *context, size_t length)
{
    struct alloc_state *a = context;
    EXPECT(length <= a->max_message, "poll_alloc asked for %zu bytes, max_message_size %llu",
           length, (unsigned long long)a->max_message);
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

/* What a lossless producer must find when it looks for room: either, no
 * room ever (a live entry whose page it cannot tell), or room always (no
 * registered consumer, and no entry page it could read). */
enum room { ROOM_EITHER, ROOM_NEVER, ROOM_ALWAYS };

struct session {
    const struct prelude *prelude;
    struct queue *queue;
    struct shmq_consumer *consumer;
    struct shmq_producer *producer;
    struct tally tally;
    enum room room;
    int listed; /* the entry the producer must list with our pid, or -1 */
};

/* buffer_for's unit for this consumer's messages. */
static uint32_t buffer_unit(struct shmq_consumer *c)
{
    uint32_t slot_size = shmq_consumer_slot_size(c);
    return shmq_consumer_max_message_size(c) > slot_size ? slot_size : 1;
}

static void op_poll(struct session *s, uint8_t op, uint8_t arg)
{
    struct shmq_consumer *c = s->consumer;
    uint64_t max_message = shmq_consumer_max_message_size(c);
    size_t size;
    uint8_t *buf = buffer_for(arg, (size_t)max_message, buffer_unit(c), &size);
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
        EXPECT(length > size && length <= max_message,
               "%s: -EMSGSIZE with length %zu, buffer %zu, max_message_size %llu", what, length,
               size, (unsigned long long)max_message);
        EXPECT(shmq_consumer_position(c) - before == shmq_consumer_lost(c) - s->tally.lost,
               "%s: -EMSGSIZE consumed a message", what);
    }
    free(buf);
    check_progress(c, &s->tally, what);
}

static void op_poll_many(struct session *s, uint8_t arg)
{
    struct shmq_consumer *c = s->consumer;
    uint64_t max_message = shmq_consumer_max_message_size(c);
    size_t max = 1 + (arg >> 5);
    size_t size;
    uint8_t *buf = buffer_for(arg, (size_t)max_message * ((arg & 16) ? max : 1), buffer_unit(c),
                              &size);
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
                EXPECT(lengths[i] <= max_message, "poll_many delivered %zu bytes", lengths[i]);
        }
    }
    free(buf);
    check_progress(c, &s->tally, "poll_many");
}

static void op_poll_alloc(struct session *s, uint8_t arg)
{
    struct shmq_consumer *c = s->consumer;
    struct alloc_state a = {.max_message = shmq_consumer_max_message_size(c), .refuse = arg & 1};
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

/* A lossless producer's answer against what it must find (enum room). */
static void check_room(const struct session *s, int had_room, const char *what)
{
    EXPECT(!(s->room == ROOM_NEVER && had_room),
           "%s found room with a live entry whose page nobody can tell", what);
    EXPECT(!(s->room == ROOM_ALWAYS && !had_room),
           "%s found no room with no registered consumer and no entry page to read", what);
}

/* The producer, if the harness has one whose messages fit its buffers: a
 * header patched to a larger geometry, with the ring resized to match, may
 * allow messages past MAX_MESSAGE, which the harness then does not publish. */
static struct shmq_producer *writer(const struct session *s)
{
    struct shmq_producer *p = s->producer;
    return p != NULL && shmq_producer_max_message_size(p) <= MAX_MESSAGE ? p : NULL;
}

/* Publishes through the producer: one message (op 5) or a batch (op 6). */
static void op_publish(struct session *s, uint8_t op, uint8_t arg)
{
    struct shmq_producer *p = writer(s);
    if (p == NULL)
        return;
    uint32_t slot_size = shmq_producer_slot_size(p);
    uint64_t max_message = shmq_producer_max_message_size(p);
    static uint8_t payload[8][MAX_MESSAGE + 1];
    const void *messages[8];
    size_t lengths[8];
    size_t count = op == 5 ? 1 : 1 + arg % 8;
    /* The top bit of arg makes the last message one byte too long: the call
     * must refuse it and publish nothing, the rest of a batch included. */
    int too_long = (arg & 0x80) != 0;
    uint64_t next = shmq_producer_next_sequence(p);
    for (size_t i = 0; i < count; i++) {
        uint64_t sequence = next + i;
        lengths[i] = pattern_length(sequence, s->prelude->salt, slot_size, max_message);
        if (too_long && i == count - 1)
            lengths[i] = (size_t)max_message + 1;
        fill_pattern(payload[i], lengths[i], sequence, s->prelude->salt);
        messages[i] = payload[i];
    }
    uint64_t last = UINT64_MAX;
    int rc = op == 5 ? shmq_producer_publish(p, messages[0], lengths[0], &last)
                     : shmq_producer_publish_many(p, messages, lengths, count, &last);
    uint64_t done = shmq_producer_next_sequence(p) - next;
    if (too_long) {
        EXPECT(rc == -EMSGSIZE, "publishing max_message_size + 1 bytes returned %d", rc);
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
    check_room(s, done > 0, "publish");
}

/* wait_room or publish_wait, with timeout 0 (which must not wait) or a
 * short one (a lossless producer then raises producer_waiting in the wake
 * page, sleeps, and probes the entries that hold it back). */
static void op_room(struct session *s, uint8_t arg)
{
    struct shmq_producer *p = writer(s);
    if (p == NULL)
        return;
    int64_t timeout = (arg & 2) ? SHORT_WAIT_NS : 0;
    int full = timeout == 0 ? SHMQ_FULL : -ETIMEDOUT;
    uint64_t max_message = shmq_producer_max_message_size(p);
    uint64_t next = shmq_producer_next_sequence(p);
    size_t length = pattern_length(next, s->prelude->salt, shmq_producer_slot_size(p), max_message);
    int rc;
    if (arg & 1) {
        /* Room for one slot, or (bit 2) for the next message's length, or
         * (bits 2 and 3) for one byte too many: -EMSGSIZE. */
        int too_long = (arg & 12) == 12;
        if (arg & 4)
            rc = shmq_producer_wait_room_for(p, too_long ? (size_t)max_message + 1 : length,
                                             timeout);
        else
            rc = shmq_producer_wait_room(p, timeout);
        if (too_long) {
            EXPECT(rc == -EMSGSIZE, "wait_room_for(max_message_size + 1) returned %d", rc);
            return;
        }
        EXPECT(rc == 0 || (rc == full && shmq_producer_lossless(p)),
               "wait_room(%lld) returned %d (%s)", (long long)timeout, rc, shmq_strerror(rc));
        check_room(s, rc == 0, "wait_room");
        EXPECT(shmq_producer_next_sequence(p) == next, "wait_room moved the sequence");
        return;
    }
    static uint8_t payload[MAX_MESSAGE];
    fill_pattern(payload, length, next, s->prelude->salt);
    rc = shmq_producer_publish_wait(p, payload, length, NULL, timeout);
    EXPECT(rc == 0 || (rc == full && shmq_producer_lossless(p)),
           "publish_wait(%lld) returned %d (%s)", (long long)timeout, rc, shmq_strerror(rc));
    EXPECT(shmq_producer_next_sequence(p) - next == (rc == 0),
           "publish_wait moved the sequence wrongly");
    check_room(s, rc == 0, "publish_wait");
}

/* The producer's list of consumers (it maps every live entry's page, which
 * consumers write), and, with the top bit of arg, shmq_inspect (which does
 * the same from outside). */
static void op_list(struct session *s, uint8_t arg)
{
    struct shmq_producer *p = s->producer;
    uint32_t entries = s->queue->geometry.consumer_entries;
    struct shmq_consumer_info infos[MAX_ENTRIES];
    size_t max = (arg & 0x7f) % (MAX_ENTRIES + 1);
    if (p != NULL) {
        int n = shmq_producer_consumers(p, max ? infos : NULL, max);
        EXPECT(n >= 0 && (size_t)n <= max, "consumers(%zu) returned %d", max, n);
        for (int i = 0; i < n; i++) {
            EXPECT(infos[i].index < entries && (infos[i].registered & ~1) == 0,
                   "consumers: entry %u registered %d", infos[i].index, infos[i].registered);
            EXPECT((int64_t)infos[i].lag >= 0, "consumers: lag %llu",
                   (unsigned long long)infos[i].lag);
        }
        if (s->listed >= 0) {
            n = shmq_producer_consumers(p, infos, MAX_ENTRIES);
            int found = 0;
            for (int i = 0; i < n; i++) {
                if (infos[i].index != (uint32_t)s->listed)
                    continue;
                found = 1;
                EXPECT(infos[i].pid == (uint32_t)getpid() && infos[i].uid == geteuid() &&
                           infos[i].registered == shmq_consumer_registered(s->consumer),
                       "consumers: entry %d has pid %u uid %u registered %d", s->listed,
                       infos[i].pid, (unsigned)infos[i].uid, infos[i].registered);
                EXPECT((int64_t)(infos[i].position - shmq_consumer_position(s->consumer)) <= 0,
                       "consumers: entry %d is at %llu, ahead of its consumer at %llu", s->listed,
                       (unsigned long long)infos[i].position,
                       (unsigned long long)shmq_consumer_position(s->consumer));
            }
            EXPECT(found, "consumers: the consumer's entry %d is not listed (%d listed)",
                   s->listed, n);
        }
    }
    if (arg & 0x80) {
        struct shmq_queue_info info;
        int n = shmq_inspect(queue_name, &info, max ? infos : NULL, max);
        EXPECT(n >= 0 || n == -EPROTO || n == -ENODATA || n == -EPROTONOSUPPORT || n == -EBADMSG,
               "inspect returned %d (%s)", n, shmq_strerror(n));
        if (n >= 0) {
            EXPECT((uint32_t)n <= info.max_consumers, "inspect: %d live of %u entries", n,
                   info.max_consumers);
            for (int i = 0; i < n && (size_t)i < max; i++)
                EXPECT(infos[i].index < info.max_consumers, "inspect: entry %u", infos[i].index);
            if (s->queue->payloads_trusted)
                EXPECT(info.capacity == s->queue->geometry.capacity &&
                           info.max_consumers == entries && info.owner_uid == geteuid() &&
                           info.max_message_size == s->queue->geometry.max_message,
                       "inspect: capacity %u, %u entries, owner %u, max_message_size %llu",
                       info.capacity, info.max_consumers, (unsigned)info.owner_uid,
                       (unsigned long long)info.max_message_size);
        }
    }
}

#ifdef SHMQ_OVERWRITTEN /* the zero-copy API */
/* peek, look at every byte lent out, maybe try a poll in between (it must
 * refuse) or publish some messages meanwhile (arg >> 2 of them: a lossy
 * producer may rewrite the record), release. A release that returns 0 says
 * the lent bytes stayed the message: both copies, the one made at once and
 * the one made just before the release, must then be it. */
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
    uint64_t max_message = shmq_consumer_max_message_size(c);
    EXPECT(length <= max_message && data != NULL, "peek lent %zu bytes, max_message_size %llu",
           length, (unsigned long long)max_message);
    expect_in_data_area(&c->geometry, c->data, data, length, "peek");
    /* Touch every byte: a pointer or length past the mapping faults here. */
    uint8_t *copy = malloc(length ? length : 1);
    uint8_t *later = malloc(length ? length : 1);
    if (copy == NULL || later == NULL)
        FAIL("out of memory");
    memcpy(copy, data, length);
    if (arg & 1) {
        uint8_t buf[8];
        size_t ignored;
        int again = shmq_consumer_poll(c, buf, sizeof(buf), &ignored);
        EXPECT(again == -EINPROGRESS, "poll during a peek returned %d", again);
        const void *data2;
        EXPECT(shmq_consumer_peek(c, &data2, &ignored) == -EINPROGRESS, "a second peek succeeded");
    }
    if (arg & 2)
        for (unsigned i = 0; i < (unsigned)(arg >> 2); i++)
            op_publish(s, 5, 0);
    memcpy(later, data, length);
    uint64_t sequence = shmq_consumer_position(c);
    rc = shmq_consumer_release(c);
    EXPECT(rc == 0 || rc == SHMQ_OVERWRITTEN, "release returned %d (%s)", rc, shmq_strerror(rc));
    EXPECT(shmq_consumer_position(c) == sequence + 1, "release did not move past the message");
    if (rc == 0) {
        s->tally.delivered++;
        check_message(s->queue, c, sequence, copy, length, s->prelude->salt, "peek");
        check_message(s->queue, c, sequence, later, length, s->prelude->salt,
                      "peek, the bytes lent out at release");
    }
    free(copy);
    free(later);
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
    uint64_t max_message = shmq_producer_max_message_size(p);
    uint64_t next = shmq_producer_next_sequence(p);
    size_t size = (arg & 0x80) ? (size_t)max_message + 1
                               : pattern_length(next, s->prelude->salt, slot_size, max_message);
    void *data = NULL;
    int rc = shmq_producer_claim(p, size, &data);
    if (arg & 0x80) {
        EXPECT(rc == -EMSGSIZE, "claim of max_message_size + 1 returned %d", rc);
        return;
    }
    EXPECT(rc == 0 || (rc == SHMQ_FULL && shmq_producer_lossless(p)), "claim returned %d (%s)", rc,
           shmq_strerror(rc));
    check_room(s, rc == 0, "claim");
    if (rc != 0)
        return;
    EXPECT(data != NULL && ((uintptr_t)data & 15) == 0, "claim lent a misaligned loan");
    expect_in_data_area(&p->geometry, p->data, data, size, "claim");
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
    /* Read locks on NAME.producer or the ring fake no producer. */
    rc = shmq_consumer_producer_alive(c);
    EXPECT(rc == (s->producer != NULL), "producer_alive returned %d with%s a producer", rc,
           s->producer ? "" : "out");
    rc = shmq_consumer_unlinked(c);
    EXPECT(rc == 0, "unlinked returned %d", rc);
    rc = shmq_consumer_entry(c);
    /* Against the geometry the consumer validated: a patched header may
     * name another (valid) entry count than the one the queue was made with. */
    EXPECT(rc >= -1 && rc < (int)c->geometry.consumer_entries, "entry returned %d", rc);
    rc = shmq_consumer_registered(c);
    EXPECT(rc == 0 || (rc == 1 && shmq_consumer_lossless(c) && shmq_consumer_entry(c) >= 0),
           "registered returned %d", rc);
    uint64_t max_message = shmq_consumer_max_message_size(c);
    EXPECT(max_message <= (uint64_t)shmq_consumer_slot_size(c) * shmq_consumer_capacity(c) &&
               (!s->queue->payloads_trusted || max_message == s->queue->geometry.max_message),
           "max_message_size %llu, slot_size %u, capacity %u", (unsigned long long)max_message,
           shmq_consumer_slot_size(c), shmq_consumer_capacity(c));
    (void)shmq_consumer_backlog(c);
    shmq_consumer_set_spin(c, arg);
    EXPECT(!mapped_here(locks_path), "someone maps the lock file %s", locks_path);
}

/* wait(0) must not wait: 0, -ETIMEDOUT, or the end of the stream; a short
 * wait goes to sleep (wake flag, futex, relay) and says the same. */
static void op_wait(struct session *s, uint8_t arg)
{
    unsigned flags = (arg & 1) ? SHMQ_WAIT_PAST_END : 0;
    int64_t timeout = (arg & 2) ? SHORT_WAIT_NS : 0;
    int rc = shmq_consumer_wait_flags(s->consumer, timeout, flags);
    EXPECT(rc == 0 || rc == -ETIMEDOUT || (rc == SHMQ_ENDED && !(flags & SHMQ_WAIT_PAST_END)),
           "wait(%lld, %u) returned %d (%s)", (long long)timeout, flags, rc, shmq_strerror(rc));
    check_progress(s->consumer, &s->tally, "wait");
}

/* Lets go of every lock the harness planted, as a hostile consumer that
 * exits: a lossless producer that waited for an entry it could not tell
 * notices, at its next probe, that nobody holds it any more. */
static void op_release_plants(struct session *s)
{
    struct queue *q = s->queue;
    if (q->locks_fd < 0)
        return;
    close(q->locks_fd);
    open_locks(q);
    memset(q->live_planted, 0, sizeof(q->live_planted));
    memset(q->plant_count, 0, sizeof(q->plant_count));
    /* The producer may still hold what it last saw until it looks again;
     * none of it can have given it room it must not have. */
    if (s->room == ROOM_NEVER)
        s->room = ROOM_EITHER;
}

static void run_op(struct session *s, uint8_t op, uint8_t arg)
{
    switch (op % 13) {
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
    case 12: op_release_plants(s); break;
    default: break;
    }
}

/* ----------------------------------------------------------- the patches */

struct patch {
    uint8_t where;
    uint16_t offset;
    uint64_t value;
};

static unsigned patch_target(uint8_t where) { return (where & 1) | ((where >> 5) & 2); }
static int patch_live(uint8_t where) { return (where & 32) != 0; }

/* Writes `width` bytes of value inside [start, start + length) of base, at
 * `offset` folded into it, aligned as the atomics reading it expect (every
 * start is). */
static void write_in(unsigned char *base, size_t start, size_t length, size_t width,
                     uint16_t offset, uint64_t value)
{
    if (length < width)
        return;
    size_t at = start + (offset % (length - width + 1));
    at -= at % width;
    memcpy(base + at, &value, width);
}

static int consumer_entry_id(const struct session *s)
{
    if (s->consumer == NULL || shmq_consumer_entry(s->consumer) < 0)
        return -1;
    return s->consumer->consumers.own_id;
}

/* Takes an OFD lock (F_WRLCK or F_RDLCK) on [start, start + length) of fd. */
static int plant_lock(int fd, short type, uint64_t start, uint64_t length)
{
    struct flock range = {.l_type = type, .l_whence = SEEK_SET, .l_start = (off_t)start,
                          .l_len = (off_t)length};
    return fd >= 0 && fcntl(fd, F_OFD_SETLK, &range) == 0;
}

/* A lock in entry i's id range: one byte at the id d, two, from d to the
 * range's end, or all of it; d a raw number, next to the consumer's own id,
 * the wake page's, or a decoy's. */
static void plant_id_lock(struct session *s, size_t width, uint16_t offset, uint64_t value,
                          int read_lock)
{
    struct queue *q = s->queue;
    uint32_t index = (uint32_t)(offset >> 8) % q->geometry.consumer_entries;
    int64_t d;
    switch (value & 3) {
    case PLANT_NEAR_OWN: {
        int own = consumer_entry_id(s);
        d = own >= 0 ? own + (int64_t)((value >> 2) % 3) - 1
                     : (int64_t)((value >> 2) % SHMQ_ENTRY_ID_SPAN);
        break;
    }
    case PLANT_WAKE: d = ring_wake_id(q); break;
    case PLANT_DECOY: d = decoy(q, (unsigned)(value >> 2)); break;
    default: d = (int64_t)((value >> 2) % SHMQ_ENTRY_ID_SPAN); break;
    }
    if (d < 0 || (uint64_t)d >= SHMQ_ENTRY_ID_SPAN)
        return;
    uint64_t length;
    switch (width) {
    case 1: length = 1; break;
    case 2: length = 2; if ((uint64_t)d > SHMQ_ENTRY_ID_SPAN - 2) d = SHMQ_ENTRY_ID_SPAN - 2; break;
    case 4: length = SHMQ_ENTRY_ID_SPAN - (uint64_t)d; break;
    default: d = 0; length = SHMQ_ENTRY_ID_SPAN; break;
    }
    uint64_t from = SHMQ_ENTRY_ID_BASE + (uint64_t)index * SHMQ_ENTRY_ID_SPAN;
    if (!plant_lock(q->locks_fd, read_lock ? F_RDLCK : F_WRLCK, from + (uint64_t)d, length))
        return;
    struct plant *plant = &q->plants[index][q->plant_count[index]++];
    *plant = (struct plant){.start = (uint64_t)d, .length = length, .write = !read_lock};
}

/* A lock on entry i's live byte, as a consumer that claims it holds; or,
 * as variant, read locks (on that byte, the ring's byte 0 and
 * NAME.producer's byte 0), which must count for nothing. */
static void plant_live_lock(struct session *s, uint16_t offset, int read_lock)
{
    struct queue *q = s->queue;
    uint32_t index = offset % q->geometry.consumer_entries;
    if (!read_lock) {
        if (plant_lock(q->locks_fd, F_WRLCK, index, 1))
            q->live_planted[index] = 1;
        return;
    }
    if (plant_lock(q->locks_fd, F_RDLCK, index, 1))
        q->live_planted[index] = 0; /* our own write lock there, if any, became a read lock */
    plant_lock(shmq_region_fd(q->ring), F_RDLCK, 0, 1);
    if (q->producer_fd < 0) {
        q->producer_fd = open(producer_path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
        struct stat st;
        if (q->producer_fd >= 0 && (fstat(q->producer_fd, &st) != 0 || !S_ISREG(st.st_mode))) {
            close(q->producer_fd);
            q->producer_fd = -1;
        }
    }
    if (plant_lock(q->producer_fd, F_RDLCK, 0, 1))
        q->producer_read_locked = 1;
}

/* The ring's wake_shm set to an id of the input's choice. */
static void set_wake_id(struct session *s, uint64_t value)
{
    struct queue *q = s->queue;
    int id;
    switch (value & 7) {
    case WAKE_ID_DECOY_0: case WAKE_ID_DECOY_1: case WAKE_ID_DECOY_2: case WAKE_ID_DECOY_3:
        id = decoy(q, (unsigned)(value & 7) - WAKE_ID_DECOY_0);
        if (id < 0)
            return;
        break;
    case WAKE_ID_ENTRY:
        id = consumer_entry_id(s);
        if (id < 0)
            return;
        break;
    case WAKE_ID_NONE: id = -1; break;
    case WAKE_ID_OURS: id = q->wake_id; break;
    default: id = (int)(uint32_t)(value >> 3); break;
    }
    shmq_store_release(&control_of(q)->wake_shm, id);
}

/* The lock file's bytes, size or mode. Nobody maps it, so bytes and size
 * change nothing; a mode other than the producer's makes the next producer
 * replace the file, which a consumer registered in the old one no longer
 * holds back (so the run is no longer intact). */
static void patch_lock_file(struct session *s, size_t width, uint16_t offset, uint64_t value,
                            int variant)
{
    struct queue *q = s->queue;
    if (q->locks_fd < 0)
        return;
    if (!variant) {
        if (pwrite(q->locks_fd, &value, width, (off_t)offset * 64) != (ssize_t)width)
            FAIL("pwrite %s: %s", locks_path, strerror(errno));
    } else if (value & (UINT64_C(1) << 62)) {
        q->intact = 0;
        fchmod(q->locks_fd, (mode_t)(value & 0777));
    } else if (ftruncate(q->locks_fd, (off_t)(value & 0xffffff)) != 0) {
        FAIL("ftruncate %s: %s", locks_path, strerror(errno));
    }
}

/* A value near `base`: base plus a small signed step. */
static uint64_t near(uint64_t base, uint64_t value)
{
    return base + (uint64_t)(int64_t)(int16_t)value;
}

/* One field of the ring, with a value made from the patch's as its width
 * bits (`how`) say: a small step from what the field holds, a value near
 * what matters to that field, or raw (32 or 64 bits).
 *   RING_SIZES         offset bit 0: data_offset or max_message; near:
 *                      data_offset a page step away, max_message a whole
 *                      number of slots from 0 to twice the bound;
 *   RING_TAIL          near: head plus a step, or inside the lap before
 *                      head (where tail is taken as it is);
 *   RING_RECORD_FIELD  record offset % capacity, field (offset >> 8) % 3:
 *                      stamp (near: the head, or the sequence the record
 *                      would hold in the lap before it, plus a step), length
 *                      (near: max_message, or a whole number of slots, plus
 *                      a step), slot (near: capacity, or where the record's
 *                      slots would end exactly at the data area's end, plus
 *                      a step). */
static void patch_ring_field(struct session *s, unsigned ring_area, unsigned how,
                             uint16_t offset, uint64_t value)
{
    struct queue *q = s->queue;
    const struct shmq_geometry *g = &q->geometry;
    unsigned char *base = shmq_region_base(q->ring);
    struct shmq_control *control = control_of(q);
    uint64_t capacity = g->capacity;
    uint64_t head = shmq_load_relaxed(&control->head);
    if (ring_area == RING_SIZES) {
        size_t at = (offset & 1) ? offsetof(struct shmq_identity, max_message)
                                 : offsetof(struct shmq_identity, data_offset);
        uint64_t field;
        memcpy(&field, base + at, sizeof(field));
        switch (how) {
        case 0: field = near(field, value); break;
        case 1:
            field = (offset & 1) ? (uint64_t)g->slot_size * (value % (2 * capacity + 1))
                                 : field + (uint64_t)(int64_t)(int8_t)value * g->page_size;
            break;
        case 2: field = (uint32_t)value; break;
        default: field = value; break;
        }
        memcpy(base + at, &field, sizeof(field));
        return;
    }
    if (ring_area == RING_TAIL) {
        uint64_t tail = shmq_load_relaxed(&control->tail);
        switch (how) {
        case 0: tail = near(tail, value); break;
        case 1:
            tail = (value & 1) ? near(head, value >> 1)
                               : head - capacity + (value >> 1) % (capacity + 1);
            break;
        case 2: tail = (uint32_t)value; break;
        default: tail = value; break;
        }
        shmq_store_relaxed(&control->tail, tail);
        return;
    }
    uint64_t index = offset % capacity;
    struct shmq_record *record = shmq_record_at(base + g->index_offset, g, index);
    uint32_t length = shmq_load_relaxed(&record->length);
    switch ((offset >> 8) % 3) {
    case FIELD_STAMP: {
        uint64_t stamp = shmq_load_relaxed(&record->stamp);
        /* The sequence of this record in the lap before head. */
        uint64_t lap = head - 1 - ((head - 1 - index) & (capacity - 1));
        switch (how) {
        case 0: stamp = near(stamp, value); break;
        case 1: stamp = near((value & 1) ? head : lap, value >> 1); break;
        case 2: stamp = (uint32_t)value; break;
        default: stamp = value; break;
        }
        shmq_store_relaxed(&record->stamp, stamp);
        break;
    }
    case FIELD_LENGTH:
        switch (how) {
        case 0: length = (uint32_t)near(length, value); break;
        case 1:
            length = (value & 1) ? (uint32_t)near(g->max_message, value >> 1)
                                 : (uint32_t)(g->slot_payload * ((value >> 1) % (capacity + 2)) +
                                              (uint64_t)(int64_t)(int8_t)(value >> 8));
            break;
        default: length = (uint32_t)value; break;
        }
        shmq_store_relaxed(&record->length, length);
        break;
    default: {
        uint32_t slot = shmq_load_relaxed(&record->slot);
        switch (how) {
        case 0: slot = (uint32_t)near(slot, value); break;
        case 1: {
            uint64_t last_fit = capacity - shmq_record_slots(length, g->slot_payload);
            slot = (uint32_t)near((value & 1) ? capacity : last_fit, value >> 1);
            break;
        }
        default: slot = (uint32_t)value; break;
        }
        shmq_store_relaxed(&record->slot, slot);
        break;
    }
    }
}

static void apply_patch(struct session *s, const struct patch *patch)
{
    struct queue *q = s->queue;
    uint8_t where = patch->where;
    size_t width = (size_t)1 << ((where >> 1) & 3);
    unsigned area = (where >> 3) & 3;
    int variant = (where & 0x80) != 0;
    unsigned char *base;
    size_t size, start, length;
    switch (patch_target(where)) {
    case TARGET_RING: {
        /* A resized ring may end before the harness's mapping does: after
         * the resize nothing is written through it but the control page. */
        if (q->ring_resized)
            return;
        const struct shmq_geometry *g = &q->geometry;
        base = shmq_region_base(q->ring);
        size = shmq_region_size(q->ring);
        unsigned ring_area = area + 4 * (unsigned)variant;
        /* Head and tail are validated by the stamps wherever they are used
         * (tail is a hint: consumer.c, producer.c), so a delivered message
         * is still the one published; anything else may change what a
         * record says. */
        if (ring_area != RING_CONTROL_LINES && ring_area != RING_TAIL)
            q->payloads_trusted = 0;
        q->intact = 0;
        switch (ring_area) {
        case RING_IDENTITY: start = 0; length = SHMQ_LINE; break;
        case RING_CONTROL_LINES: start = SHMQ_LINE; length = 4 * SHMQ_LINE; break;
        case RING_INDEX: {
            /* The bytes of one index record: stamp, length, slot. */
            size_t record = patch->offset / SHMQ_RECORD_BYTES % g->capacity;
            start = g->index_offset + record * g->record_stride;
            length = SHMQ_RECORD_BYTES;
            break;
        }
        case RING_DATA:
            /* (Not spanning, the area also holds the records in between.) */
            start = g->data_offset;
            length = (size_t)(g->total_size - g->data_offset);
            break;
        case RING_ANYWHERE: start = 0; length = size; break;
        default: {
            patch_ring_field(s, ring_area, (where >> 1) & 3, patch->offset, patch->value);
            return;
        }
        }
        break;
    }
    case TARGET_WAKE:
        base = harness_attach(q, ring_wake_id(q), &size);
        if (base == NULL)
            return;
        switch (area) {
        case WAKE_SLEEPERS: start = 0; length = SHMQ_LINE; break;
        case WAKE_PRODUCER: start = SHMQ_LINE; length = SHMQ_LINE; break;
        case WAKE_TAG: start = 2 * SHMQ_LINE; length = 16; break;
        default: start = 0; length = size; break;
        }
        break;
    case TARGET_ENTRY:
        base = harness_attach(q, consumer_entry_id(s), &size);
        if (base == NULL)
            return;
        q->intact = 0;
        q->entry_patched = 1;
        switch (area) {
        case ENTRY_POSITION: start = 0; length = 8; break;
        case ENTRY_PID_STATE: start = 8; length = 8; break;
        case ENTRY_REST: start = 16; length = sizeof(struct shmq_consumer_entry) - 16; break;
        default: start = 0; length = size; break;
        }
        break;
    default:
        if (q->locks_fd < 0)
            open_locks(q); /* the lock file a producer made since */
        switch (area) {
        case LOCKS_FILE: patch_lock_file(s, width, patch->offset, patch->value, variant); break;
        case LOCKS_ID_RANGE: plant_id_lock(s, width, patch->offset, patch->value, variant); break;
        case LOCKS_LIVE_BYTE: plant_live_lock(s, patch->offset, variant); break;
        default: set_wake_id(s, patch->value); break;
        }
        return;
    }
    if (start + length > size)
        return;
    write_in(base, start, length, width, patch->offset, patch->value);
}

/* Patches are applied in three phases: before anyone opens (not live, not
 * an entry's), once the consumer has its entry (entry patches not live),
 * and once everyone is open (live). */
enum { PHASE_BUILT, PHASE_CONSUMER_OPEN, PHASE_ALL_OPEN };

static void apply_phase(struct session *s, const struct patch *patches, uint32_t n, int phase)
{
    for (uint32_t i = 0; i < n; i++) {
        int live = patch_live(patches[i].where);
        int entry = patch_target(patches[i].where) == TARGET_ENTRY;
        int when = live ? PHASE_ALL_OPEN : entry ? PHASE_CONSUMER_OPEN : PHASE_BUILT;
        if (when == phase)
            apply_patch(s, &patches[i]);
    }
}

/* ------------------------------------------------------ what must follow */

static int same_file(int a, int b)
{
    struct stat sa, sb;
    return a >= 0 && b >= 0 && fstat(a, &sa) == 0 && fstat(b, &sb) == 0 &&
           sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static int locks_fd_of(const struct shmq_consumer_state *cs)
{
    return cs->locks != NULL ? shmq_region_fd(cs->locks) : -1;
}

/* How many bytes of entry i's id range the harness holds write locks on:
 * 0, 1 (*single gets its id) or 2 (two or more). Its locks are one
 * description's, so a later lock replaces an earlier one where they meet. */
static int planted_ids(const struct queue *q, uint32_t index, int64_t *single)
{
    const struct plant *plants = q->plants[index];
    unsigned n = q->plant_count[index];
    uint64_t points[2 * MAX_PATCHES];
    unsigned count = 0;
    for (unsigned i = 0; i < n; i++) {
        points[count++] = plants[i].start;
        points[count++] = plants[i].start + plants[i].length;
    }
    uint64_t held = 0;
    for (unsigned i = 0; i < count; i++) {
        /* Each elementary piece [a, b): a a point, b the next point above. */
        uint64_t a = points[i], b = UINT64_MAX;
        for (unsigned j = 0; j < count; j++)
            if (points[j] > a && points[j] < b)
                b = points[j];
        if (b == UINT64_MAX)
            continue;
        int write = 0;
        for (unsigned k = 0; k < n; k++)
            if (plants[k].start <= a && plants[k].start + plants[k].length >= b)
                write = plants[k].write;
        if (!write)
            continue;
        int duplicate = 0;
        for (unsigned j = 0; j < i; j++)
            duplicate |= points[j] == a;
        if (duplicate)
            continue;
        if (held == 0 && b - a == 1)
            *single = (int64_t)a;
        held += b - a;
    }
    return held >= 2 ? 2 : (int)held;
}

/* What the producer must find when it looks for room, from what the
 * harness knows the kernel holds (docs/consumer-state.md, consumer_state.c
 * entry_id): an entry is live while its byte is write-locked, and its page
 * can be told only while exactly one byte of its id range is. */
static enum room expected_room(const struct session *s)
{
    const struct queue *q = s->queue;
    struct shmq_producer *p = s->producer;
    if (p == NULL || !shmq_producer_lossless(p) ||
        !same_file(q->locks_fd, locks_fd_of(&p->consumers)))
        return ROOM_EITHER;
    int has_entry = shmq_consumer_entry(s->consumer) >= 0;
    int own = has_entry && same_file(q->locks_fd, locks_fd_of(&s->consumer->consumers))
                  ? shmq_consumer_entry(s->consumer)
                  : -1;
    int never = 0, always = !has_entry;
    for (uint32_t i = 0; i < q->geometry.consumer_entries; i++) {
        int64_t single = -1;
        int ids = planted_ids(q, i, &single) + (own == (int)i);
        int live = q->live_planted[i] || own == (int)i;
        if (live && ids >= 2)
            never = 1;
        if (q->live_planted[i] && own != (int)i && ids == 1 && sound_entry_page(q, single))
            always = 0; /* the producer reads that page, which may say "registered" */
    }
    return never ? ROOM_NEVER : always ? ROOM_ALWAYS : ROOM_EITHER;
}

/* The consumer's view of the consumer state, right after its open. */
static void check_consumer_state(struct session *s, int named_wake, int good_named)
{
    struct queue *q = s->queue;
    struct shmq_consumer *c = s->consumer;
    const struct shmq_consumer_state *cs = &c->consumers;
    if (cs->wake != NULL)
        EXPECT(good_wake_page(q, cs->wake_id) && cs->wake->magic == SHMQ_WAKE_MAGIC &&
                   cs->wake->ring_instance == ring_instance(q),
               "the consumer took segment %d (the ring named %d) as its wake page", cs->wake_id,
               named_wake);
    if (good_named)
        EXPECT(cs->wake != NULL && cs->wake_id == named_wake,
               "the consumer refused the sound wake page %d", named_wake);
    int index = shmq_consumer_entry(c);
    if (index < 0)
        return;
    struct shmid_ds ds;
    int id = cs->own_id;
    EXPECT(id >= 0 && shmctl(id, IPC_STAT, &ds) == 0, "entry %d: its page %d is gone", index, id);
    EXPECT(ds.shm_segsz == q->geometry.page_size && ds.shm_perm.uid == geteuid() &&
               (ds.shm_perm.mode & 0622) == 0600 && (ds.shm_perm.mode & SHM_DEST) &&
               ds.shm_cpid == self,
           "entry %d: page %d has size %zu, uid %u, mode %o, creator %d", index, id,
           (size_t)ds.shm_segsz, (unsigned)ds.shm_perm.uid, (unsigned)ds.shm_perm.mode,
           (int)ds.shm_cpid);
    const struct shmq_consumer_entry *e = cs->own;
    uint32_t registered = shmq_consumer_registered(c) ? SHMQ_ENTRY_REGISTERED : 0;
    EXPECT(e != NULL && e->index == (uint32_t)index && e->ring_instance == ring_instance(q) &&
               e->pid == (uint32_t)getpid() && e->state == (2u | registered),
           "entry %d: its page says index %u, instance %llx, pid %u, state %u", index,
           e ? e->index : 0, e ? (unsigned long long)e->ring_instance : 0ull, e ? e->pid : 0,
           e ? e->state : 0);
    EXPECT(!shmq_consumer_lossless(c) || registered,
           "a lossless consumer with entry %d is not registered", index);
    if (same_file(q->locks_fd, locks_fd_of(cs))) {
        /* Asked from another description, as the producer asks. */
        struct flock live = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = index, .l_len = 1};
        struct flock told = live;
        told.l_start =
            (off_t)(SHMQ_ENTRY_ID_BASE + (uint64_t)index * SHMQ_ENTRY_ID_SPAN + (uint64_t)id);
        EXPECT(fcntl(q->locks_fd, F_OFD_GETLK, &live) == 0 && live.l_type == F_WRLCK &&
                   fcntl(q->locks_fd, F_OFD_GETLK, &told) == 0 && told.l_type == F_WRLCK,
               "entry %d: its byte or its id %d is not write-locked", index, id);
    }
}

/* The producer's view of the wake page, right after its open: a sound one
 * the ring named is kept; otherwise a new one is named. */
static void check_producer_wake(struct session *s, int named_wake, int good_named)
{
    struct queue *q = s->queue;
    const struct shmq_consumer_state *cs = &s->producer->consumers;
    EXPECT(cs->wake != NULL && good_wake_page(q, cs->wake_id) && ring_wake_id(q) == cs->wake_id,
           "the producer's wake page %d (the ring names %d) is not a sound one", cs->wake_id,
           ring_wake_id(q));
    if (good_named)
        EXPECT(cs->wake_id == named_wake, "the producer replaced the sound wake page %d by %d",
               named_wake, cs->wake_id);
}

static int attach_producer(struct session *s)
{
    const struct prelude *p = s->prelude;
    struct queue *q = s->queue;
    struct shmq_config config = {0};
    if (p->more & MORE_PRODUCER_GEOMETRY)
        config.slot_size = q->geometry.slot_size + 1;
    if (p->more & MORE_PRODUCER_DELIVERY)
        config.delivery = (p->more & MORE_LOSSLESS) ? SHMQ_LOSSY : SHMQ_LOSSLESS;
    if (p->sizes & SIZE_PRODUCER_OTHER_MAX)
        config.max_message_size = q->geometry.max_message + 1;
    else if (p->sizes & SIZE_PRODUCER_SAME_MAX)
        config.max_message_size = q->geometry.max_message;
    int named = ring_wake_id(q);
    int good = good_wake_page(q, named);
    int rc = shmq_producer_open(&s->producer, queue_name, &config, 0);
    /* -EPERM: a ring opened wider than asked, or someone else's file (here a
     * FIFO, directory or symlink) under NAME.producer, or, lossless, under
     * NAME.consumers where it cannot be replaced. -EBUSY: the harness holds
     * a read lock on NAME.producer, which only its owner can open (the
     * harness is the owner): it fakes no producer, but blocks a new one. */
    /* -EMEDIUMTYPE: asked for another geometry or delivery, or for the
     * queue's own max_message_size where a patch changed the header's. */
    int other = (p->more & (MORE_PRODUCER_GEOMETRY | MORE_PRODUCER_DELIVERY)) ||
                (p->sizes & SIZE_PRODUCER_OTHER_MAX) ||
                ((p->sizes & SIZE_PRODUCER_SAME_MAX) && !q->payloads_trusted);
    int ok = open_code_ok(rc) || (rc == -EBUSY && q->producer_read_locked) ||
             (rc == -EPERM && ((p->flags & FLAG_WIDE_MODES) || (p->odd & 15) != 0)) ||
             (rc == -EMEDIUMTYPE && other);
    EXPECT(ok, "producer_open returned %d (%s)", rc, shmq_strerror(rc));
    if (rc != 0) {
        s->producer = NULL;
        return rc;
    }
    EXPECT(!(p->sizes & SIZE_PRODUCER_OTHER_MAX) || !q->payloads_trusted,
           "producer_open accepted max_message_size %llu for a queue of %llu",
           (unsigned long long)config.max_message_size,
           (unsigned long long)q->geometry.max_message);
    if (q->payloads_trusted)
        EXPECT(shmq_producer_max_message_size(s->producer) == q->geometry.max_message,
               "the producer's max_message_size is %llu, the queue's %llu",
               (unsigned long long)shmq_producer_max_message_size(s->producer),
               (unsigned long long)q->geometry.max_message);
    check_producer_wake(s, named, good);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Measured per input: libFuzzer's symbolizer may open pipes between inputs. */
    int fd_before = lowest_fd();
    int segments_before = own_segments(0);
    struct reader r = {.data = data, .size = size};
    struct prelude p;
    read_prelude(&r, &p);
    struct queue q;
    struct session s = {.prelude = &p, .queue = &q, .listed = -1};
    if (build_queue(&q, &p) < 0) {
        close_queue(&q);
        unlink_queue();
        remove_odd_files();
        return 0;
    }

    struct patch patches[MAX_PATCHES];
    for (uint32_t i = 0; i < p.patches; i++) {
        patches[i].where = read_u8(&r);
        patches[i].offset = read_u16(&r);
        patches[i].value = read_u64(&r);
    }
    size_t ops_at = r.at;
    apply_phase(&s, patches, p.patches, PHASE_BUILT);
    if (p.flags & FLAG_RESIZE_RING) {
        int fd = open(ring_path, O_RDWR | O_CLOEXEC);
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) == 0 &&
            ftruncate(fd, st.st_size + (off_t)p.ring_delta * 8) != 0)
            FAIL("ftruncate %s: %s", ring_path, strerror(errno));
        if (fd >= 0)
            close(fd);
        q.payloads_trusted = 0;
        q.intact = 0;
        q.ring_resized = 1;
    }
    if ((p.flags & FLAG_FILL_LOCK_FILE) && q.locks_fd >= 0) {
        static uint8_t junk[255 * 97];
        memset(junk, 0xa5 ^ p.fill, sizeof(junk));
        if (pwrite(q.locks_fd, junk, (size_t)p.fill * 97, 0) < 0)
            FAIL("pwrite %s: %s", locks_path, strerror(errno));
    }
    if (p.flags & FLAG_WIDE_MODES) {
        chmod(ring_path, 0644);
        chmod(locks_path, 0666);
    }

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
    int named_wake = ring_wake_id(&q);
    int good_named = good_wake_page(&q, named_wake);
    int rc = shmq_consumer_open_with(&s.consumer, queue_name, &options);
    /* A lossless queue refuses a consumer that cannot register: no usable
     * lock file (-EBADMSG), no free entry (-EUSERS), one it may not use
     * (-EACCES). */
    int lossless_refusal = (p.more & MORE_LOSSLESS) && (rc == -EUSERS || rc == -EACCES);
    EXPECT(open_code_ok(rc) || (rc == -EPERM && (p.more & MORE_WRONG_OWNER)) || lossless_refusal,
           "consumer_open returned %d (%s)", rc, shmq_strerror(rc));
    if (rc == 0) {
        EXPECT(!(p.more & MORE_WRONG_OWNER), "consumer_open accepted the wrong owner");
        EXPECT(shmq_consumer_owner_uid(s.consumer) == geteuid(), "owner_uid is not ours");
        if (shmq_consumer_entry(s.consumer) >= 0)
            EXPECT(!(p.flags & FLAG_NO_ENTRY), "no_entry consumer claimed an entry");
        check_consumer_state(&s, named_wake, good_named);
        s.tally.start_position = s.tally.position = shmq_consumer_position(s.consumer);
        s.tally.start_lost = s.tally.lost = shmq_consumer_lost(s.consumer);
        apply_phase(&s, patches, p.patches, PHASE_CONSUMER_OPEN);
        if ((p.flags & FLAG_PRODUCER) && !(p.flags & FLAG_PRODUCER_FIRST))
            attach_producer(&s);
        apply_phase(&s, patches, p.patches, PHASE_ALL_OPEN);
        s.room = expected_room(&s);
        int index = shmq_consumer_entry(s.consumer);
        int64_t ignored;
        if (s.producer != NULL && index >= 0 && !q.entry_patched &&
            same_file(locks_fd_of(&s.producer->consumers), locks_fd_of(&s.consumer->consumers)) &&
            same_file(q.locks_fd, locks_fd_of(&s.consumer->consumers)) &&
            planted_ids(&q, (uint32_t)index, &ignored) == 0)
            s.listed = index;
        /* Starting at a given sequence may start at one already
         * overwritten, which counts as lost (shmq.h, SHMQ_START_AT). */
        int strict = q.intact && shmq_consumer_registered(s.consumer) && !(p.more & MORE_START_AT);
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
    remove_odd_files();
    struct stat st;
    EXPECT(lstat(ring_path, &st) != 0 && lstat(locks_path, &st) != 0 &&
               lstat(producer_path, &st) != 0,
           "a file of %s is left in /dev/shm", queue_name);
    int fd = lowest_fd();
    EXPECT(fd == fd_before, "descriptor leak: lowest free descriptor %d, was %d", fd, fd_before);
    int segments = own_segments(0);
    EXPECT(segments == segments_before,
           "System V leak: %d segments made by this process live on, %d before the input",
           segments, segments_before);
    return 0;
}

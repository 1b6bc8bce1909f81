/*
 * The on-memory layout of a shmq queue: written down once, here.
 * docs/protocol.md describes the same bytes for other languages, and
 * docs/consumer-state.md explains why the queue is made of these objects.
 *
 * A queue NAME is a ring and two empty lock files in /dev/shm, and pages of
 * System V shared memory.
 *
 * 1. The ring, /dev/shm/shmq-NAME: written by the producer alone. Consumers
 *    open it O_RDONLY and map it PROT_READ.
 *
 *   spanning (SHMQ_FLAG_SPANNING, max_message > slot_size):
 *   offset 0       page_size          data_offset
 *   +--------------+------------------+--------+--------+-----+------------+
 *   | control page | index: capacity  | slot 0 | slot 1 | ... | slot cap-1 |
 *   |              | records, 16 B    |        |        |     |            |
 *   +--------------+------------------+--------+--------+-----+------------+
 *   not spanning (every message one slot, its sequence's): each record in
 *   front of its slot, slot_stride = 16 + round_up(slot_size, 16) apart,
 *   data_offset = index_offset + 16 (layout 5's slots), so that a message's
 *   stamp and payload share a cache line:
 *   +--------------+-----------------+-----------------+-----+
 *   | control page | record 0|slot 0 | record 1|slot 1 | ... |
 *   +--------------+-----------------+-----------------+-----+
 *
 *   A message is a RECORD: its entry in the index (entry s & (capacity-1)
 *   for sequence s) and its payload in one or more consecutive slots of the
 *   data area, never wrapping past the last slot (docs/protocol.md, section
 *   "Records"; the writer's protocol is in producer.c).
 *
 *   Control page, one 128-byte line per job so that fields written at
 *   different rates never share a cache line (128, not 64: adjacent-line
 *   prefetchers pull lines in pairs):
 *
 *   line 0 (  0) identity and geometry, immutable once magic is published:
 *                magic u64 | version u32 | flags u32 | slot_size u32 |
 *                slot_stride u32 | capacity u32 | page_size u32 |
 *                first_sequence u64 | index_offset u64 | total_size u64 |
 *                instance u64 | consumer_entries u32 | reserved u32 |
 *                data_offset u64 | max_message u64
 *   line 1 (128) head u64: the next sequence to publish |
 *                tail u64: the oldest sequence whose record the producer has
 *                not begun to overwrite; both written by the producer alone
 *   line 2 (256) futex_word u32: bumped by the producer to wake sleepers
 *   line 3 (384) stream_state u32: SHMQ_STREAM_ENDED once the producer closed
 *   line 4 (512) wake_shm i32: the System V segment holding the wake page,
 *                written by the producer when it opens
 *   line 5 (640) producer_nonce u64: names the producer's wake socket
 *                (docs/waiting.md); 0: it has none | producer_key u64: the
 *                only payload that socket accepts
 *   rest         zero, reserved
 *
 *   Index record (16 bytes; record s & (capacity-1) describes sequence s):
 *
 *   +0  stamp u64    sequence of the message it describes (see producer.c)
 *   +8  length u32   payload bytes, <= max_message
 *   +12 slot u32     the first slot of its payload, < capacity; the payload
 *                    runs over shmq_record_slots(length) slots, all before
 *                    the end of the data area
 *
 *   Slot: round_up(slot_size, 16) payload bytes (slot_stride apart).
 *
 * 2. The producer lock, /dev/shm/shmq-NAME.producer: an EMPTY file of mode
 *    0600; a producer holds an OFD write lock on its byte 0 while it lives.
 *
 * 3. The consumer state (docs/consumer-state.md has the trust argument):
 *
 *   /dev/shm/shmq-NAME.consumers: an EMPTY file. Consumer entry i is live
 *   exactly while someone holds an OFD write lock on its byte i, and its
 *   page is the System V segment whose id is d where that holder also
 *   locks byte SHMQ_ENTRY_ID_BASE + i * SHMQ_ENTRY_ID_SPAN + d. Nobody maps
 *   the file, so truncating or filling it harms nobody.
 *
 *   The wake page: one page of System V shared memory, created by the
 *   producer (IPC_PRIVATE, marked for removal at once, so the kernel frees
 *   it when the last process detaches), writable by every consumer, never
 *   truncatable:
 *            line 0: wake_flag u32: bits raised by consumers about to
 *                    sleep (SHMQ_WAKE_FUTEX: on futex_word;
 *                    SHMQ_WAKE_DESCRIPTOR: on their wake socket), cleared
 *                    by the producer when it wakes them |
 *                    relay_word u32: the last futex_word value whose wake
 *                    a woken consumer passed on to the other sleepers
 *            line 1: producer_waiting u32 | producer_futex u32 |
 *                    producer_wake_at u64: a lossless producer waiting for
 *                    room raises producer_waiting (SHMQ_WAKE_FUTEX, and
 *                    SHMQ_WAKE_DESCRIPTOR when it waits on its wake socket)
 *                    and sleeps on producer_futex; the consumer whose
 *                    position reaches producer_wake_at clears the flag,
 *                    bumps the word and wakes it
 *            line 2: tag: magic u64 "shmqwake" | ring_instance u64
 *            line 3: joined u64[16]: bit i set by the consumer of entry i
 *                    when it opens a wake socket, so that the producer
 *                    looks at that entry again (docs/waiting.md)
 *
 *   Entry i: one page of System V shared memory, created by the consumer
 *   that holds lock byte i (IPC_PRIVATE, mode 0600), given to the ring's
 *   owner (IPC_SET) and marked for removal once mapped, so that only that
 *   consumer (its creator) and the producer's user can map it, and the
 *   kernel frees it with the last mapping; the producer maps it read-only:
 *            position u64 | pid u32 | state u32 | lost u64 |
 *            ring_instance u64 | index u32 | armed u32 | wake_nonce u64 |
 *            wake_key u64
 *            armed: bumped by the consumer each time it waits on its wake
 *            socket; the producer sends one wake-up per new value, to the
 *            socket named by the page's id and wake_nonce, carrying
 *            wake_key, the only payload that socket accepts (docs/waiting.md)
 *            state: 0 free; otherwise 2 (claimed) and bit
 *            0, SHMQ_ENTRY_REGISTERED: a lossless producer must not
 *            overwrite what this consumer has not read (position).
 *
 * All integers are native-endian: a segment never leaves its host.
 */
#ifndef SHMQ_LAYOUT_H
#define SHMQ_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "shmq_atomic.h"

#define SHMQ_MAGIC UINT64_C(0x676e6972716d6873)          /* "shmqring" in memory order */
#define SHMQ_WAKE_MAGIC UINT64_C(0x656b6177716d6873)      /* "shmqwake" */
#define SHMQ_LAYOUT_VERSION 6u
#define SHMQ_LINE 128u
#define SHMQ_RECORD_BYTES 16u
#define SHMQ_SLOT_ALIGN 16u
#define SHMQ_FLAG_LOSSLESS 1u /* registered consumers hold the producer back */
#define SHMQ_FLAG_SPANNING 2u /* max_message > slot_size: records span slots */
#define SHMQ_KNOWN_FLAGS (SHMQ_FLAG_LOSSLESS | SHMQ_FLAG_SPANNING)
#define SHMQ_ENTRY_REGISTERED 1u
#define SHMQ_STREAM_ENDED 1u
#define SHMQ_WAKE_FUTEX 1u
#define SHMQ_WAKE_DESCRIPTOR 2u
#define SHMQ_CONSUMER_ENTRIES_MAX 1024u
#define SHMQ_CONSUMERS_SUFFIX ".consumers"
#define SHMQ_PRODUCER_SUFFIX ".producer"
/* Where in NAME.consumers an entry's holder tells its page's id. */
#define SHMQ_ENTRY_ID_BASE (UINT64_C(1) << 32)
#define SHMQ_ENTRY_ID_SPAN (UINT64_C(1) << 31)

/* Consumer groups (docs/consumer-state.md, "Groups"). In NAME.consumers:
 * byte SHMQ_GROUP_BASE is the join lock (held while a member creates or
 * joins a group); member m of group g holds byte shmq_group_member_byte(g,
 * m) and tells its group page's id d with a second lock at
 * shmq_group_id_byte(g, m) + d. A group lives while any member byte of it is
 * locked. */
#define SHMQ_GROUPS_MAX 16u
#define SHMQ_GROUP_MEMBERS_MAX 128u
#define SHMQ_GROUP_NAME_MAX 32u
#define SHMQ_GROUP_MAGIC UINT64_C(0x70757267716d6873) /* "shmqgrup" */
#define SHMQ_GROUP_BASE (UINT64_C(1) << 44)
#define SHMQ_GROUP_ID_BASE (UINT64_C(1) << 45)
#define SHMQ_ENTRY_GROUP_MEMBER 4u /* entry state: a group member (display only) */

static inline uint64_t shmq_group_member_byte(uint32_t group, uint32_t member)
{
    return SHMQ_GROUP_BASE + 1 + (uint64_t)group * SHMQ_GROUP_MEMBERS_MAX + member;
}

static inline uint64_t shmq_group_id_byte(uint32_t group, uint32_t member)
{
    return SHMQ_GROUP_ID_BASE +
           ((uint64_t)group * SHMQ_GROUP_MEMBERS_MAX + member) * SHMQ_ENTRY_ID_SPAN;
}

/* Line 0 of the control page; copied whole into private memory and then
 * validated, so no field is read twice. */
struct shmq_identity {
    uint64_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t slot_size;
    uint32_t slot_stride;
    uint32_t capacity;
    uint32_t page_size;
    uint64_t first_sequence;
    uint64_t index_offset;
    uint64_t total_size;
    uint64_t instance;
    uint32_t consumer_entries;
    uint32_t reserved;
    uint64_t data_offset;
    uint64_t max_message;
};

struct shmq_control {
    /* line 0: the identity, but with magic atomic, since it is the field
     * that publishes the rest */
    _Atomic uint64_t magic;
    unsigned char identity_rest[sizeof(struct shmq_identity) - 8];
    unsigned char pad0[SHMQ_LINE - sizeof(struct shmq_identity)];
    /* line 1 */
    _Atomic uint64_t head;
    _Atomic uint64_t tail;
    unsigned char pad1[SHMQ_LINE - 16];
    /* line 2 */
    _Atomic uint32_t futex_word;
    unsigned char pad2[SHMQ_LINE - 4];
    /* line 3 */
    _Atomic uint32_t stream_state;
    unsigned char pad3[SHMQ_LINE - 4];
    /* line 4 */
    _Atomic int32_t wake_shm;
    unsigned char pad4[SHMQ_LINE - 4];
    /* line 5 */
    _Atomic uint64_t producer_nonce;
    _Atomic uint64_t producer_key;
    unsigned char pad5[SHMQ_LINE - 16];
};

struct shmq_record {
    _Atomic uint64_t stamp;
    _Atomic uint32_t length;
    _Atomic uint32_t slot;
};

struct shmq_wake_page {
    _Atomic uint32_t wake_flag;
    _Atomic uint32_t relay_word;
    unsigned char pad0[SHMQ_LINE - 8];
    _Atomic uint32_t producer_waiting;
    _Atomic uint32_t producer_futex;
    _Atomic uint64_t producer_wake_at;
    unsigned char pad1[SHMQ_LINE - 16];
    _Atomic uint64_t magic;
    _Atomic uint64_t ring_instance;
    unsigned char pad2[SHMQ_LINE - 16];
    _Atomic uint64_t joined[SHMQ_CONSUMER_ENTRIES_MAX / 64];
};

struct shmq_consumer_entry {
    _Atomic uint64_t position;
    _Atomic uint32_t pid;
    _Atomic uint32_t state;
    _Atomic uint64_t lost;
    uint64_t ring_instance;
    uint32_t index;
    _Atomic uint32_t armed;
    _Atomic uint64_t wake_nonce;
    _Atomic uint64_t wake_key;
};

/* A member's claim: the sequences [claim_from, claim_to) are its to deliver
 * while token is non-zero (its holder's token; 0: no claim). Only its holder
 * writes it, except that a member that finds the holder dead (its member
 * lock gone) takes the claim over by compare-and-swap of the token. */
struct shmq_group_member {
    _Atomic uint32_t token;
    _Atomic uint32_t pid;
    _Atomic uint64_t claim_from;
    _Atomic uint64_t claim_to;
    _Atomic uint64_t received; /* display: messages this slot's members returned */
    unsigned char pad[SHMQ_LINE - 32];
};

/* A group's page: System V, made by its first member, given to the ring's
 * owner, marked for removal once mapped, so that it lives exactly while a
 * member (or a producer that looks at it) has it mapped. */
struct shmq_group_page {
    /* line 0: identity, written by the creator before its locks tell the id */
    _Atomic uint64_t magic;
    _Atomic uint64_t ring_instance;
    _Atomic uint64_t name[5]; /* SHMQ_GROUP_NAME_MAX bytes, NUL-padded */
    _Atomic uint64_t created; /* CLOCK_REALTIME ns: of two sound pages of one name, the newer is the group */
    _Atomic uint32_t number;  /* the group number it was made in: joined only there */
    unsigned char pad0[SHMQ_LINE - 68];
    /* line 1: the next sequence no member has claimed */
    _Atomic uint64_t cursor;
    unsigned char pad1[SHMQ_LINE - 8];
    /* line 2: messages the group lost (overrun, or overwritten in a claim) */
    _Atomic uint64_t lost;
    unsigned char pad2[SHMQ_LINE - 8];
    /* line 3: member slots ever taken (slots at or past it hold no claim),
     * raised by joiners so that a producer reads only those */
    _Atomic uint32_t member_slots;
    /* set by the last member as it leaves: the group is over, and a
     * producer stops waiting for it at once */
    _Atomic uint32_t ended;
    unsigned char pad3[SHMQ_LINE - 8];
    struct shmq_group_member members[SHMQ_GROUP_MEMBERS_MAX];
};

_Static_assert(offsetof(struct shmq_identity, version) == 8, "layout");
_Static_assert(offsetof(struct shmq_group_member, claim_from) == 8, "layout");
_Static_assert(offsetof(struct shmq_group_member, received) == 24, "layout");
_Static_assert(sizeof(struct shmq_group_member) == SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_group_page, name) == 16, "layout");
_Static_assert(offsetof(struct shmq_group_page, created) == 56, "layout");
_Static_assert(offsetof(struct shmq_group_page, number) == 64, "layout");
_Static_assert(offsetof(struct shmq_group_page, cursor) == SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_group_page, lost) == 2 * SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_group_page, member_slots) == 3 * SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_group_page, ended) == 3 * SHMQ_LINE + 4, "layout");
_Static_assert(offsetof(struct shmq_group_page, members) == 4 * SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_identity, slot_size) == 16, "layout");
_Static_assert(offsetof(struct shmq_identity, capacity) == 24, "layout");
_Static_assert(offsetof(struct shmq_identity, first_sequence) == 32, "layout");
_Static_assert(offsetof(struct shmq_identity, index_offset) == 40, "layout");
_Static_assert(offsetof(struct shmq_identity, total_size) == 48, "layout");
_Static_assert(offsetof(struct shmq_identity, instance) == 56, "layout");
_Static_assert(offsetof(struct shmq_identity, consumer_entries) == 64, "layout");
_Static_assert(offsetof(struct shmq_identity, data_offset) == 72, "layout");
_Static_assert(offsetof(struct shmq_identity, max_message) == 80, "layout");
_Static_assert(sizeof(struct shmq_identity) == 88, "layout");
_Static_assert(offsetof(struct shmq_control, magic) == 0, "layout");
_Static_assert(offsetof(struct shmq_control, head) == 1 * SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_control, tail) == 1 * SHMQ_LINE + 8, "layout");
_Static_assert(offsetof(struct shmq_control, futex_word) == 2 * SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_control, stream_state) == 3 * SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_control, wake_shm) == 4 * SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_control, producer_nonce) == 5 * SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_control, producer_key) == 5 * SHMQ_LINE + 8, "layout");
_Static_assert(sizeof(struct shmq_control) == 6 * SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_record, length) == 8, "layout");
_Static_assert(offsetof(struct shmq_record, slot) == 12, "layout");
_Static_assert(sizeof(struct shmq_record) == SHMQ_RECORD_BYTES, "layout");
_Static_assert(offsetof(struct shmq_wake_page, relay_word) == 4, "layout");
_Static_assert(offsetof(struct shmq_wake_page, producer_waiting) == SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_wake_page, producer_futex) == SHMQ_LINE + 4, "layout");
_Static_assert(offsetof(struct shmq_wake_page, producer_wake_at) == SHMQ_LINE + 8, "layout");
_Static_assert(offsetof(struct shmq_wake_page, magic) == 2 * SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_wake_page, ring_instance) == 2 * SHMQ_LINE + 8, "layout");
_Static_assert(offsetof(struct shmq_wake_page, joined) == 3 * SHMQ_LINE, "layout");
_Static_assert(sizeof(struct shmq_wake_page) == 4 * SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_consumer_entry, pid) == 8, "layout");
_Static_assert(offsetof(struct shmq_consumer_entry, lost) == 16, "layout");
_Static_assert(offsetof(struct shmq_consumer_entry, ring_instance) == 24, "layout");
_Static_assert(offsetof(struct shmq_consumer_entry, index) == 32, "layout");
_Static_assert(offsetof(struct shmq_consumer_entry, armed) == 36, "layout");
_Static_assert(offsetof(struct shmq_consumer_entry, wake_nonce) == 40, "layout");
_Static_assert(offsetof(struct shmq_consumer_entry, wake_key) == 48, "layout");
_Static_assert(sizeof(struct shmq_consumer_entry) == 56, "layout");

/* Bytes of a group's page: whole pages. */
static inline uint64_t shmq_group_page_bytes(uint64_t page_size)
{
    return (sizeof(struct shmq_group_page) + page_size - 1) / page_size * page_size;
}

/* Payload bytes of one slot: slot_size rounded up to 16. */
static inline uint64_t shmq_slot_payload_for(uint64_t slot_size)
{
    return (slot_size + SHMQ_SLOT_ALIGN - 1) & ~(uint64_t)(SHMQ_SLOT_ALIGN - 1);
}

/* Bytes one slot occupies: its payload, and in a ring of one-slot messages
 * (not spanning) the index record of its sequence in front of it. */
static inline uint64_t shmq_slot_stride_for(uint64_t slot_size, int spanning)
{
    return (spanning ? 0 : SHMQ_RECORD_BYTES) + shmq_slot_payload_for(slot_size);
}

/* Slots a record of `length` payload bytes occupies: at least one, so that
 * the index never describes more records than the data area holds. */
static inline uint64_t shmq_record_slots(uint64_t length, uint64_t slot_payload)
{
    return length <= slot_payload ? 1 : (length + slot_payload - 1) / slot_payload;
}

#endif

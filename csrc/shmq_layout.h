/*
 * The on-memory layout of a shmq ring: written down once, here.
 *
 * A ring segment is three parts, each starting on a page boundary so that each
 * can be mapped with its own protection:
 *
 *   offset 0              page_size            2*page_size
 *   +---------------------+--------------------+--------+--------+-----+--------+
 *   | control page        | consumer page      | slot 0 | slot 1 | ... | slot   |
 *   | (producer writes,   | (consumers write:  |        |        |     | cap-1  |
 *   |  consumers read)    |  waiter count,     |        |        |     |        |
 *   |                     |  cursor table)     |        |        |     |        |
 *   +---------------------+--------------------+--------+--------+-----+--------+
 *
 * Control page, one 128-byte line per job so that fields written by different
 * parties never share a cache line (128, not 64: adjacent-line prefetchers pull
 * lines in pairs):
 *
 *   line 0 (  0) identity and geometry, immutable once magic is published:
 *                magic u64 | version u32 | flags u32 | slot_size u32 |
 *                slot_stride u32 | capacity u32 | page_size u32 |
 *                first_sequence u64 | consumer_area_offset u64 |
 *                slots_offset u64 | total_size u64 | cursor_entries u32
 *   line 1 (128) producer: head u64 (next sequence to publish)
 *   line 2 (256) wake-up: futex_word u32 (bumped by the producer to wake sleepers)
 *   rest         zero, reserved
 *
 * Consumer page:
 *
 *   line 0 (  0) waiters u32: consumers inside the sleep protocol
 *   line 1..     cursor table, cursor_entries lines, reserved for the lossless
 *                mode (flags bit SHMQ_FLAG_LOSSLESS); zero and unused in lossy mode
 *
 * Slot (slot_stride bytes, a multiple of 16):
 *
 *   +0  stamp u64    sequence of the message in the slot (see ring.c)
 *   +8  length u32   payload bytes, <= slot_size
 *   +12 reserved u32
 *   +16 payload      slot_size bytes rounded up to 16
 *
 * All integers are native-endian: a segment never leaves its host.
 */
#ifndef SHMQ_LAYOUT_H
#define SHMQ_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "shmq_atomic.h"

#define SHMQ_MAGIC UINT64_C(0x676e6972716d6873) /* "shmqring" in memory order */
#define SHMQ_LAYOUT_VERSION 1u
#define SHMQ_LINE 128u
#define SHMQ_SLOT_HEADER 16u
#define SHMQ_SLOT_ALIGN 16u
#define SHMQ_FLAG_LOSSLESS 1u /* reserved for the lossless mode; never set yet */
#define SHMQ_KNOWN_FLAGS 0u

struct shmq_control {
    /* line 0 */
    _Atomic uint64_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t slot_size;
    uint32_t slot_stride;
    uint32_t capacity;
    uint32_t page_size;
    uint64_t first_sequence;
    uint64_t consumer_area_offset;
    uint64_t slots_offset;
    uint64_t total_size;
    uint32_t cursor_entries;
    uint32_t reserved0;
    unsigned char pad0[SHMQ_LINE - 72];
    /* line 1 */
    _Atomic uint64_t head;
    unsigned char pad1[SHMQ_LINE - 8];
    /* line 2 */
    _Atomic uint32_t futex_word;
    unsigned char pad2[SHMQ_LINE - 4];
};

struct shmq_cursor_entry {
    _Atomic uint64_t position;
    _Atomic uint64_t owner;
    unsigned char pad[SHMQ_LINE - 16];
};

struct shmq_consumer_area {
    _Atomic uint32_t waiters;
    unsigned char pad0[SHMQ_LINE - 4];
    struct shmq_cursor_entry cursors[]; /* cursor_entries of them */
};

struct shmq_slot {
    _Atomic uint64_t stamp;
    _Atomic uint32_t length;
    uint32_t reserved;
    _Atomic uint64_t payload[]; /* copied a word at a time: see ring.c */
};

_Static_assert(offsetof(struct shmq_control, magic) == 0, "layout");
_Static_assert(offsetof(struct shmq_control, version) == 8, "layout");
_Static_assert(offsetof(struct shmq_control, slot_size) == 16, "layout");
_Static_assert(offsetof(struct shmq_control, capacity) == 24, "layout");
_Static_assert(offsetof(struct shmq_control, first_sequence) == 32, "layout");
_Static_assert(offsetof(struct shmq_control, total_size) == 56, "layout");
_Static_assert(offsetof(struct shmq_control, cursor_entries) == 64, "layout");
_Static_assert(offsetof(struct shmq_control, head) == 1 * SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_control, futex_word) == 2 * SHMQ_LINE, "layout");
_Static_assert(sizeof(struct shmq_control) == 3 * SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_consumer_area, cursors) == SHMQ_LINE, "layout");
_Static_assert(sizeof(struct shmq_cursor_entry) == SHMQ_LINE, "layout");
_Static_assert(offsetof(struct shmq_slot, length) == 8, "layout");
_Static_assert(offsetof(struct shmq_slot, payload) == SHMQ_SLOT_HEADER, "layout");

/* Bytes one slot occupies for a given maximum payload. */
static inline uint64_t shmq_slot_stride_for(uint64_t slot_size)
{
    return SHMQ_SLOT_HEADER + ((slot_size + SHMQ_SLOT_ALIGN - 1) & ~(uint64_t)(SHMQ_SLOT_ALIGN - 1));
}

#endif

/* What the fuzz targets share: the input read as a stream, failing, and the
 * queue's names. A target defines FUZZ_TARGET (its name, a string) before
 * it includes this. */
#ifndef SHMQ_FUZZ_INPUT_H
#define SHMQ_FUZZ_INPUT_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/shm.h>
#include <sys/types.h>
#include <unistd.h>

#include "shmq.h"
#include "ring_internal.h"

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

static inline uint8_t read_u8(struct reader *r) { uint8_t v; read_bytes(r, &v, 1); return v; }
static inline uint16_t read_u16(struct reader *r) { uint16_t v; read_bytes(r, &v, 2); return v; }
static inline uint64_t read_u64(struct reader *r) { uint64_t v; read_bytes(r, &v, 8); return v; }

#define FAIL(...)                                                      \
    do {                                                               \
        fprintf(stderr, FUZZ_TARGET ": " __VA_ARGS__);                 \
        fputc('\n', stderr);                                           \
        abort();                                                       \
    } while (0)

#define EXPECT(cond, ...)             \
    do {                              \
        if (!(cond))                  \
            FAIL(__VA_ARGS__);        \
    } while (0)

/* [data, data + length) lies in the data area that starts at `area` (of a
 * ring with geometry g), from the start of a slot: the mapping is not
 * ASan's, so a payload or a loan lent from the index would go unnoticed. */
static inline void expect_in_data_area(const struct shmq_geometry *g, const unsigned char *area,
                                       const void *data, size_t length, const char *what)
{
    size_t from = (size_t)((const unsigned char *)data - area);
    size_t size = (size_t)(g->total_size - g->data_offset);
    EXPECT((const unsigned char *)data >= area && from <= size && length <= size - from &&
               from % g->slot_stride == 0,
           "%s lent %zu bytes at %zu of a data area of %zu", what, length, from, size);
}

static char queue_name[96];
static char ring_path[128];
static char locks_path[160];
static char producer_path[160];
static pid_t self;

static inline void unlink_queue(void)
{
    shmq_unlink(queue_name, SHMQ_UNLINK_FORCE);
}

/* Names this process's queue fuzz-TAG-<infix><pid> (run.sh sweeps fuzz-TAG-*
 * after a crash), TAG from SHMQ_FUZZ_TAG, and its files' paths. */
static inline void name_queue(const char *infix)
{
    const char *tag = getenv("SHMQ_FUZZ_TAG");
    if (tag == NULL || tag[0] == '\0' || strlen(tag) > 32 ||
        strspn(tag, "0123456789abcdefghijklmnopqrstuvwxyz") != strlen(tag))
        tag = "x";
    self = getpid();
    snprintf(queue_name, sizeof(queue_name), "fuzz-%s-%s%d", tag, infix, (int)self);
    snprintf(ring_path, sizeof(ring_path), "/dev/shm/" SHMQ_NAME_PREFIX "%s", queue_name);
    snprintf(locks_path, sizeof(locks_path), "%s" SHMQ_CONSUMERS_SUFFIX, ring_path);
    snprintf(producer_path, sizeof(producer_path), "%s" SHMQ_PRODUCER_SUFFIX, ring_path);
}

/* The byte at i of the payload stamped `sequence` (the targets' pattern). */
static inline uint8_t pattern_byte(uint64_t sequence, uint32_t salt, size_t i)
{
    return (uint8_t)(sequence * 31u + salt + i * 7u);
}

/* The max_message_size a prelude byte v asks for (0: the default, which is
 * slot_size): 0 the default; 0xf0 and up exactly slot_size * capacity, the
 * bound; otherwise slot_size * k, k = 1 + v % capacity, less v >> 6 bytes
 * (0..3), so that the last slot of the largest record is not always full. */
static inline uint64_t max_message_choice(uint8_t v, uint32_t slot_size, uint32_t capacity)
{
    if (v == 0)
        return 0;
    if (v >= 0xf0)
        return (uint64_t)slot_size * capacity;
    uint64_t largest = (uint64_t)slot_size * (1 + v % capacity);
    uint64_t less = v >> 6;
    return less < largest ? largest - less : largest;
}

/* The length of the message stamped under `sequence`, in [low, max]. While
 * max <= slot_size: spread evenly, as before messages could span slots.
 * Otherwise a mix: a quarter fit one slot, a quarter are exactly max (the
 * largest record, which often has to skip the data area's last slots:
 * padding), and half are spread evenly up to max, most of them spanning
 * several slots. */
static inline size_t pattern_length_in(uint64_t sequence, uint32_t salt, size_t low,
                                       size_t slot_size, size_t max)
{
    uint64_t x = sequence * 7u + salt;
    if (max <= slot_size)
        return low + (size_t)(x % ((uint64_t)(max - low) + 1));
    uint64_t h = (sequence + salt) * UINT64_C(0x9E3779B97F4A7C15);
    h ^= h >> 29;
    switch (h & 3) {
    case 0: return low + (size_t)(x % ((uint64_t)(slot_size - low) + 1));
    case 1: return max;
    default: return low + (size_t)((h >> 8) % ((uint64_t)(max - low) + 1));
    }
}

/* The lowest free descriptor: what a leak would raise. */
static inline int lowest_fd(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0)
        close(fd);
    return fd;
}

/* System V segments this process made that still exist; only_unremoved:
 * only those not yet marked for removal (which would outlive everyone). */
static inline int own_segments(int only_unremoved)
{
    struct shm_info info;
    int highest = shmctl(0, SHM_INFO, (struct shmid_ds *)(void *)&info);
    int n = 0;
    for (int index = 0; index <= highest; index++) {
        struct shmid_ds ds;
        if (shmctl(index, SHM_STAT, &ds) >= 0 && ds.shm_cpid == self &&
            !(only_unremoved && (ds.shm_perm.mode & SHM_DEST)))
            n++;
    }
    return n;
}

#endif

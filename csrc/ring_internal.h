/* Declarations shared by the ring's source files; not part of the API. */
#ifndef SHMQ_RING_INTERNAL_H
#define SHMQ_RING_INTERNAL_H

#include <stdint.h>
#include <time.h>

#include "shmq.h"
#include "shmq_layout.h"

/* A private, validated copy of the header's immutable fields. Everything the
 * ring does is computed from this copy, never from shared memory again. */
struct shmq_geometry {
    uint32_t slot_size;
    uint32_t slot_stride;
    uint32_t capacity;
    uint32_t page_size;
    uint64_t first_sequence;
    uint64_t consumer_area_offset;
    uint64_t slots_offset;
    uint64_t total_size;
};

struct shmq_producer {
    struct shmq_region *region; /* NULL when bound to a caller's mapping */
    struct shmq_control *control;
    struct shmq_consumer_area *consumers;
    unsigned char *slots;
    struct shmq_geometry geometry;
    uint64_t next; /* private copy of head: only this producer writes head */
    unsigned fork_generation;
    struct shmq_producer *next_open; /* list of open producers, for fork() */
};

struct shmq_consumer {
    struct shmq_region *region; /* NULL when bound to a caller's mapping */
    struct shmq_control *control; /* mapped read-only */
    struct shmq_consumer_area *consumers; /* the one writable page */
    unsigned char *slots; /* mapped read-only */
    struct shmq_geometry geometry;
    uint64_t position;
    uint64_t lost;
    uint32_t spin;
};

/* Point a handle at a mapped, validated ring. shmq_*_open use these; the
 * ThreadSanitizer test uses them to put every thread on one mapping, since
 * TSan tracks addresses and two mappings of one object look unrelated. */
void shmq_producer_bind(struct shmq_producer *producer, unsigned char *base,
                        const struct shmq_geometry *geometry);
void shmq_consumer_bind(struct shmq_consumer *consumer, unsigned char *base,
                        const struct shmq_geometry *geometry, enum shmq_start start);

/* header.c */
int shmq_geometry_plan(struct shmq_geometry *geometry, const struct shmq_config *config);
void shmq_header_init(void *base, const struct shmq_geometry *geometry);
int shmq_header_read(const void *base, size_t mapped_size, struct shmq_geometry *geometry);

/* wait.c */
int shmq_futex_wait(_Atomic uint32_t *word, uint32_t expected, const struct timespec *deadline);
void shmq_futex_wake_all(_Atomic uint32_t *word);

static inline struct shmq_slot *shmq_slot_at(unsigned char *slots, const struct shmq_geometry *g,
                                             uint64_t sequence)
{
    return (struct shmq_slot *)(slots + (size_t)(sequence & (g->capacity - 1)) * g->slot_stride);
}

#endif

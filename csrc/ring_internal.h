/* Declarations shared by the ring's source files; not part of the API. */
#ifndef SHMQ_RING_INTERNAL_H
#define SHMQ_RING_INTERNAL_H

#include <stdint.h>

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

/* Region functions for objects whose name carries a suffix of ours after the
 * caller's name (the queue's ".consumers" object); not part of the API. A
 * NULL suffix is the plain name, as in shmq_region.h. */
#ifndef SHMQ_REGION_INTERNAL_H
#define SHMQ_REGION_INTERNAL_H

#include "shmq_region.h"

int shmq_region_create_object(struct shmq_region **out, const char *name, const char *suffix,
                              size_t size, mode_t mode);
int shmq_region_open_object(struct shmq_region **out, const char *name, const char *suffix,
                            enum shmq_region_access access);
int shmq_region_unlink_object(const char *name, const char *suffix);
/* Whether anyone holds a write lock on any byte of [offset, offset+length). */
int shmq_region_lock_held_in(const struct shmq_region *region, uint64_t offset, uint64_t length);
/* As shmq_region_lock_held_in, and where: 1 with *start the first byte of
 * one such lock, 0 none, or a negative errno. */
int shmq_region_lock_find(const struct shmq_region *region, uint64_t offset, uint64_t length,
                          uint64_t *start);
/* As shmq_region_lock_find, with the lock's length (0: to the end of the file). */
int shmq_region_lock_span(const struct shmq_region *region, uint64_t offset, uint64_t length,
                          uint64_t *start, uint64_t *lock_length);
/* Turns the mapping into a private copy-on-write one at the same address,
 * so that stores through pointers into it (a loan a forked child inherited)
 * never reach the object again. Async-signal-safe. */
void shmq_region_detach_writes(struct shmq_region *region);
/* Releases the lock this region holds on one byte, keeping the others. */
void shmq_region_unlock_byte(struct shmq_region *region, uint64_t offset);

#endif

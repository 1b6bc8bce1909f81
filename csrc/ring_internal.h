/* Declarations shared by the queue's source files; not part of the API. */
#ifndef SHMQ_RING_INTERNAL_H
#define SHMQ_RING_INTERNAL_H

#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "shmq.h"
#include "region_internal.h"
#include "shmq_layout.h"

/* A private, validated copy of the ring header's immutable fields.
 * Everything the ring does is computed from this copy, never from shared
 * memory again. */
struct shmq_geometry {
    uint32_t slot_size;
    uint32_t slot_stride;
    uint32_t capacity;
    uint32_t page_size;
    uint64_t first_sequence;
    uint64_t slots_offset;
    uint64_t total_size;
    uint64_t instance;
    uint32_t consumer_entries;
    int lossless;
};

/* fork(): every open handle is on one list; in a child, right after fork(),
 * each one's in_child runs (single-threaded, async-signal-safe work only). */
struct shmq_fork_link {
    struct shmq_fork_link *next;
    void (*in_child)(struct shmq_fork_link *link);
};
void shmq_fork_track(struct shmq_fork_link *link);
void shmq_fork_untrack(struct shmq_fork_link *link);

/* What ends a handle's waits early (wait.c): shmq_*_interrupt bumps
 * interrupt_word; a wait that sees it moved past `answered` returns
 * SHMQ_INTERRUPTED and catches up. `check` runs between slices. */
struct shmq_waiter {
    _Atomic uint32_t interrupt_word;
    uint32_t answered;
    int (*check)(void *context);
    void *context;
};

/* The consumer-state object as one side sees it (consumer_state.c). */
struct shmq_consumer_state {
    struct shmq_region *region; /* NULL: none (see docs/consumer-state.md) */
    struct shmq_wake_page *wake;
    unsigned char *entries;
    uint32_t entry_count;
    uint32_t page_size;
};

struct shmq_producer {
    struct shmq_region *region; /* NULL when bound to a caller's mapping */
    struct shmq_control *control;
    unsigned char *slots;
    struct shmq_consumer_state consumers;
    struct shmq_geometry geometry;
    uint64_t next; /* private copy of head: only this producer writes head */
    uint64_t wakeups;
    /* Lossless: sequences below `limit` have room (every registered consumer
     * has read what they overwrite); recomputed when publishing reaches it. */
    uint64_t limit;
    uint32_t *dead_state; /* per entry: the state it had when found dead, or 0 */
    int64_t next_probe_ns; /* when to ask the kernel about laggards again */
    int forked; /* set in a child after fork(): the handle is dead there */
    int claimed; /* a slot is loaned out (shmq_producer_claim) */
    int refusal; /* what publishing returns now: -ECHILD, -EINPROGRESS or 0 */
    uint32_t claim_size;
    unsigned flags;
    char name[SHMQ_NAME_MAX + 1];
    struct shmq_fork_link fork_link;
    struct shmq_waiter waiter;
};

struct shmq_consumer {
    struct shmq_region *region; /* NULL when bound to a caller's mapping */
    struct shmq_control *control; /* mapped read-only */
    unsigned char *slots; /* mapped read-only */
    struct shmq_consumer_state consumers;
    struct shmq_consumer_entry *entry; /* ours, or &private_entry */
    struct shmq_consumer_entry private_entry;
    int entry_index; /* -1: none */
    int registered; /* lossless, and the producer waits for us */
    int peeked; /* the message at position is lent out (shmq_consumer_peek) */
    struct shmq_geometry geometry;
    uint64_t position;
    uint64_t lost;
    uint32_t spin;
    uid_t owner_uid;
    struct shmq_fork_link fork_link;
    struct shmq_waiter waiter;
};

/* Point a handle at a mapped, validated ring. shmq_*_open use these; the
 * ThreadSanitizer test uses them to put every thread on one mapping, since
 * TSan tracks addresses and two mappings of one object look unrelated.
 * `wake` may be NULL (no wake page: sleepers poll in short slices). */
void shmq_producer_bind(struct shmq_producer *producer, unsigned char *base,
                        const struct shmq_geometry *geometry, struct shmq_wake_page *wake);
void shmq_consumer_bind(struct shmq_consumer *consumer, unsigned char *base,
                        const struct shmq_geometry *geometry, enum shmq_start start,
                        struct shmq_wake_page *wake);

/* header.c */
int shmq_geometry_plan(struct shmq_geometry *geometry, const struct shmq_config *config);
void shmq_header_init(void *base, const struct shmq_geometry *geometry);
void shmq_header_publish(void *base);
int shmq_header_read(const void *base, size_t mapped_size, struct shmq_geometry *geometry);

/* consumer_state.c */
int shmq_consumers_create(struct shmq_consumer_state *state, const char *name,
                          const struct shmq_geometry *geometry, mode_t ring_mode);
int shmq_consumers_attach_producer(struct shmq_consumer_state *state, const char *name,
                                   const struct shmq_geometry *geometry, mode_t ring_mode);
int shmq_consumers_attach_consumer(struct shmq_consumer_state *state, const char *name,
                                   const struct shmq_geometry *geometry, uid_t ring_owner);
int shmq_consumers_claim(struct shmq_consumer_state *state, struct shmq_consumer_entry **entry);
struct shmq_consumer_entry *shmq_consumers_entry(const struct shmq_consumer_state *state,
                                                 uint32_t index);
int shmq_consumers_entry_live(const struct shmq_consumer_state *state, uint32_t index);
void shmq_consumers_close(struct shmq_consumer_state *state);

/* A queue name: a region name that does not end in SHMQ_CONSUMERS_SUFFIX. */
int shmq_queue_name_validate(const char *name);

/* backpressure.c: the lossless mode */
int shmq_backpressure_has_room(struct shmq_producer *producer, int probe_liveness);
int shmq_backpressure_wait(struct shmq_producer *producer, int64_t deadline_ns);
void shmq_backpressure_register(struct shmq_consumer *consumer, enum shmq_start start);
void shmq_backpressure_release(struct shmq_consumer *consumer);
void shmq_backpressure_unregister(struct shmq_consumer *consumer);
int64_t shmq_now_ns(void);

/* wait.c */
int shmq_futex_wait(_Atomic uint32_t *word, uint32_t expected, const struct timespec *deadline);
void shmq_futex_wake_all(_Atomic uint32_t *word);
void shmq_futex_wake_one(_Atomic uint32_t *word);
/* Bumps and wakes the interrupt word, and (where futex_waitv is missing)
 * the shared word the handle may sleep on. Async-signal-safe. */
void shmq_waiter_interrupt(struct shmq_waiter *waiter, _Atomic uint32_t *shared);
/* SHMQ_INTERRUPTED (once per interrupt) or 0. */
int shmq_waiter_take_interrupt(struct shmq_waiter *waiter);
/* Sleeps while *shared == expected and no interrupt is pending, until the
 * absolute CLOCK_MONOTONIC deadline: 0 (woken, or a word differed),
 * -ETIMEDOUT or -EINTR. */
int shmq_waiter_sleep(struct shmq_waiter *waiter, _Atomic uint32_t *shared, uint32_t expected,
                      const struct timespec *deadline);
/* Between two slices of a wait (signalled: a signal ended the last one):
 * 0 to go on, SHMQ_INTERRUPTED, or -EINTR (the check said stop, or a signal
 * arrived and there is no check). */
int shmq_waiter_between(struct shmq_waiter *waiter, int signalled);

static inline struct shmq_slot *shmq_slot_at(unsigned char *slots, const struct shmq_geometry *g,
                                             uint64_t sequence)
{
    return (struct shmq_slot *)(slots + (size_t)(sequence & (g->capacity - 1)) * g->slot_stride);
}

#endif

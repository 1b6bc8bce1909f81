/*
 * The producer side of the broadcast ring.
 *
 * PROTOCOL (one producer; the reader side is in consumer.c)
 *   Sequence s lives in slot s & (capacity-1). The slot's stamp says which
 *   sequence its payload belongs to. To publish s into a slot that held
 *   s - capacity, the producer:
 *     1. stores stamp = s - 1 ("being rewritten"), then a release fence;
 *     2. stores the length and payload, a word at a time, relaxed;
 *     3. stores stamp = s with release;
 *     4. stores head = s + 1 with release;
 *     5. if any consumer is asleep, bumps the futex word and wakes them.
 *
 *   Why s - 1 as the "in progress" mark: readers compare stamps with wrap-safe
 *   signed differences. A reader that wants s sees s - 1 < s: "not yet". A
 *   reader that wants s - capacity (a lapped one) sees s - 1 > s - capacity:
 *   "overrun". No other sequence maps to this slot in between, so the mark is
 *   unambiguous without spending a bit of the 64-bit sequence on it.
 *
 *   The payload is copied with relaxed atomic word stores, not memcpy: a
 *   lapped reader may read the slot while it is being rewritten, and in C11
 *   that is only defined behaviour if both sides use atomics. The reader
 *   discards such a copy (its re-check of the stamp fails), but the race
 *   itself must still be one the language allows.
 *
 *   Only one producer may exist: it holds an flock on the segment, which the
 *   kernel drops when it dies. A new producer continues from head, so a
 *   producer killed half-way through step 2 leaves a slot stamped s - 1 that
 *   readers treat as not yet written, and its successor writes s there; one
 *   killed between steps 3 and 4 left message s whole, and its successor
 *   starts at s + 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ring_internal.h"

/*
 * fork(). A child shares its parent's open file descriptions, and with them
 * the producer's flock: if the child kept its copy, a parent that dies would
 * leave the queue locked for as long as the child lives. So in the child,
 * right after fork(), every open producer drops its lock descriptor (the lock
 * stays with the parent alone) and its handle refuses to publish (-ECHILD),
 * since two processes publishing through one handle would corrupt the ring.
 * fork_generation lets publish detect that without a getpid() syscall.
 */
static _Atomic unsigned fork_generation;
static struct shmq_producer *open_producers;
static pthread_mutex_t open_producers_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t fork_hook_once = PTHREAD_ONCE_INIT;

static void before_fork(void) { pthread_mutex_lock(&open_producers_lock); }
static void after_fork_in_parent(void) { pthread_mutex_unlock(&open_producers_lock); }

static void after_fork_in_child(void)
{
    /* Relaxed: the child is single-threaded when this runs. */
    atomic_fetch_add_explicit(&fork_generation, 1, memory_order_relaxed);
    for (struct shmq_producer *p = open_producers; p != NULL; p = p->next_open)
        if (p->region != NULL)
            shmq_region_drop_lock(p->region);
    pthread_mutex_unlock(&open_producers_lock);
}

static void install_fork_hook(void)
{
    pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}

static void track_open(struct shmq_producer *p)
{
    pthread_mutex_lock(&open_producers_lock);
    p->next_open = open_producers;
    open_producers = p;
    pthread_mutex_unlock(&open_producers_lock);
}

static void untrack_open(struct shmq_producer *p)
{
    pthread_mutex_lock(&open_producers_lock);
    for (struct shmq_producer **link = &open_producers; *link != NULL; link = &(*link)->next_open) {
        if (*link == p) {
            *link = p->next_open;
            break;
        }
    }
    pthread_mutex_unlock(&open_producers_lock);
}

static int geometry_matches(const struct shmq_geometry *g, const struct shmq_config *config)
{
    if (config == NULL)
        return 1;
    if (config->slot_size != 0 && config->slot_size != g->slot_size)
        return 0;
    if (config->capacity != 0 && config->capacity != g->capacity)
        return 0;
    return 1;
}

static int create_queue(struct shmq_region **region, const char *name,
                        const struct shmq_config *config, struct shmq_geometry *g)
{
    int rc = shmq_geometry_plan(g, config);
    if (rc < 0)
        return rc;
    mode_t mode = config && config->mode ? config->mode : 0600;
    rc = shmq_region_create(region, name, (size_t)g->total_size, mode);
    if (rc < 0)
        return rc;
    /* Nobody else can hold the lock of an object we just created, bar one who
     * opened it in the instant since; that one sees -ENODATA or -EBUSY. */
    rc = shmq_region_lock(*region);
    if (rc < 0) {
        shmq_region_close(*region);
        return rc;
    }
    shmq_header_init(shmq_region_base(*region), g);
    return 0;
}

static int attach_queue(struct shmq_region **region, const char *name,
                        const struct shmq_config *config, struct shmq_geometry *g)
{
    int rc = shmq_region_open(region, name, SHMQ_REGION_READ_WRITE);
    if (rc < 0)
        return rc;
    /* Lock first, so a header being initialised by its creator reads as
     * busy, not as damaged; but a geometry mismatch is the more useful answer
     * even when the queue is busy. */
    int locked = shmq_region_lock(*region);
    rc = shmq_header_read(shmq_region_base(*region), shmq_region_size(*region), g);
    if (rc == 0 && !geometry_matches(g, config))
        rc = -EMEDIUMTYPE;
    else if (locked < 0)
        rc = locked;
    if (rc < 0)
        shmq_region_close(*region);
    return rc;
}

void shmq_producer_bind(struct shmq_producer *p, unsigned char *base,
                        const struct shmq_geometry *geometry)
{
    pthread_once(&fork_hook_once, install_fork_hook);
    p->geometry = *geometry;
    p->control = (struct shmq_control *)base;
    p->consumers = (struct shmq_consumer_area *)(base + p->geometry.consumer_area_offset);
    p->slots = base + p->geometry.slots_offset;
    /* Relaxed: we hold the producer lock, and the last writer of head released
     * it by closing or dying, which the kernel orders before our flock. */
    p->next = shmq_load_relaxed(&p->control->head);
    /* A producer that died between stamping message `next` and advancing head
     * left a complete message behind; keep it, or readers past it would never
     * see the message we would write under the same number. */
    /* Relaxed: ordered after the dead producer's stores by the lock, as for
     * head just above. */
    if (shmq_load_relaxed(&shmq_slot_at(p->slots, &p->geometry, p->next)->stamp) == p->next)
        /* Release: pairs with the consumers' acquire loads of head, as in
         * finish_publish. */
        shmq_store_release(&p->control->head, ++p->next);
    /* Relaxed: only this thread's own view of the counter matters. */
    p->fork_generation = atomic_load_explicit(&fork_generation, memory_order_relaxed);
}

int shmq_producer_open(struct shmq_producer **out, const char *name,
                       const struct shmq_config *config, unsigned flags)
{
    if (out == NULL)
        return -EINVAL;
    int rc = shmq_name_validate(name);
    if (rc < 0)
        return rc;
    struct shmq_producer *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return -ENOMEM;
    if ((flags & SHMQ_CREATE) && (flags & SHMQ_EXCL)) {
        rc = create_queue(&p->region, name, config, &p->geometry);
    } else {
        rc = attach_queue(&p->region, name, config, &p->geometry);
        /* Two producers may race to create; the loser attaches. */
        if (rc == -ENOENT && (flags & SHMQ_CREATE)) {
            rc = create_queue(&p->region, name, config, &p->geometry);
            if (rc == -EEXIST)
                rc = attach_queue(&p->region, name, config, &p->geometry);
        }
    }
    if (rc < 0) {
        free(p);
        return rc;
    }
    shmq_producer_bind(p, shmq_region_base(p->region), &p->geometry);
    track_open(p);
    *out = p;
    return 0;
}

/* Copies length bytes into the slot's payload words. The last word is
 * assembled in a register so we never read past the caller's buffer. */
static void store_payload(struct shmq_slot *slot, const unsigned char *data, size_t length)
{
    size_t words = length / 8;
    for (size_t i = 0; i < words; i++) {
        uint64_t word;
        memcpy(&word, data + i * 8, 8);
        /* Relaxed: ordered after the "in progress" stamp by the release fence
         * in write_slot, and before the final stamp by its release store. */
        shmq_store_relaxed(&slot->payload[i], word);
    }
    size_t tail = length % 8;
    if (tail) {
        uint64_t word = 0;
        memcpy(&word, data + words * 8, tail);
        /* Relaxed: as above. */
        shmq_store_relaxed(&slot->payload[words], word);
    }
}

static void write_slot(struct shmq_producer *p, uint64_t sequence, const void *data, size_t length)
{
    struct shmq_slot *slot = shmq_slot_at(p->slots, &p->geometry, sequence);
    /* Relaxed store + release fence: the fence orders this "in progress" mark
     * before every payload store below. It pairs with the acquire fence in the
     * consumer's copy_slot: a reader that saw any new payload word also sees
     * this mark when it re-checks the stamp, and discards its copy. */
    shmq_store_relaxed(&slot->stamp, sequence - 1);
    shmq_fence_release();
    /* Relaxed: published by the release store of the stamp just below. */
    shmq_store_relaxed(&slot->length, (uint32_t)length);
    store_payload(slot, data, length);
    /* Release: pairs with the consumer's acquire load of the stamp in
     * copy_slot; a reader that sees stamp == sequence sees the whole payload. */
    shmq_store_release(&slot->stamp, sequence);
}

/* After publishing up to p->next - 1: make head current and wake sleepers. */
static void finish_publish(struct shmq_producer *p)
{
    /* Release: pairs with the consumer's acquire loads of head (start position
     * and overrun recovery), which then see every slot written before. */
    shmq_store_release(&p->control->head, p->next);
    /* Seq_cst fence: the producer half of a Dekker handshake. Either this load
     * sees the sleeper's seq_cst increment of waiters (in consumer.c's
     * sleep), or that sleeper's seq_cst load of the stamp, which comes after
     * its increment, sees our stamp store. Without it both could miss. */
    shmq_fence_seq_cst();
    if (shmq_load_relaxed(&p->consumers->waiters) != 0) {
        /* Seq_cst RMW: a sleeper that reads the new value (its seq_cst load
         * of futex_word) also sees every stamp stored above. */
        atomic_fetch_add_explicit(&p->control->futex_word, 1, memory_order_seq_cst);
        shmq_futex_wake_all(&p->control->futex_word);
    }
}

static int check_owner(const struct shmq_producer *p)
{
    /* Relaxed: the generation only changes in a child after fork(), before
     * that child runs any code of its own. */
    if (atomic_load_explicit(&fork_generation, memory_order_relaxed) != p->fork_generation)
        return -ECHILD;
    return 0;
}

int shmq_producer_publish(struct shmq_producer *p, const void *data, size_t length,
                          uint64_t *sequence)
{
    if (length > p->geometry.slot_size)
        return -EMSGSIZE;
    if (data == NULL && length != 0)
        return -EINVAL;
    int rc = check_owner(p);
    if (rc < 0)
        return rc;
    uint64_t s = p->next;
    write_slot(p, s, data, length);
    p->next = s + 1;
    finish_publish(p);
    if (sequence)
        *sequence = s;
    return 0;
}

int shmq_producer_publish_many(struct shmq_producer *p, const void *const *messages,
                               const size_t *lengths, size_t count, uint64_t *last_sequence)
{
    if (count == 0)
        return 0;
    if (messages == NULL || lengths == NULL)
        return -EINVAL;
    for (size_t i = 0; i < count; i++) {
        if (lengths[i] > p->geometry.slot_size)
            return -EMSGSIZE;
        if (messages[i] == NULL && lengths[i] != 0)
            return -EINVAL;
    }
    int rc = check_owner(p);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < count; i++)
        write_slot(p, p->next++, messages[i], lengths[i]);
    finish_publish(p);
    if (last_sequence)
        *last_sequence = p->next - 1;
    return 0;
}

uint64_t shmq_producer_next_sequence(const struct shmq_producer *p) { return p->next; }
uint32_t shmq_producer_slot_size(const struct shmq_producer *p) { return p->geometry.slot_size; }
uint32_t shmq_producer_capacity(const struct shmq_producer *p) { return p->geometry.capacity; }

void shmq_producer_close(struct shmq_producer *p)
{
    if (p == NULL)
        return;
    untrack_open(p);
    shmq_region_close(p->region);
    free(p);
}

int shmq_unlink(const char *name)
{
    return shmq_region_unlink(name);
}

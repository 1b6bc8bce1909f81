/*
 * The consumer side of the broadcast ring.
 *
 * PROTOCOL (the writer side, and the stamp values, are described in
 * producer.c). To read sequence s from its slot, a consumer:
 *   1. loads the stamp with acquire; stamp == s means the message is there,
 *      stamp "before" s means not yet, stamp "after" s means overrun;
 *   2. loads the length and copies the payload, a word at a time, relaxed;
 *   3. issues an acquire fence and loads the stamp again;
 *   4. delivers the copy only if the stamp is still s. Otherwise the producer
 *      started rewriting the slot during the copy: the copy may be torn, and
 *      is thrown away and counted as lost with the rest of the overrun.
 *   "Before" and "after" are wrap-safe: (int64_t)(stamp - s) < 0 or > 0, so
 *   the 64-bit sequence may wrap.
 *
 * OVERRUN: the consumer moves to head - capacity/2 and adds the distance it
 * skipped to its lost count. Every sequence from its start is therefore
 * either delivered once or counted once: delivered + lost == published.
 *
 * SLEEPING (Dekker handshake with finish_publish in producer.c): a consumer
 * that wants to sleep increments `waiters`, reads the futex word, checks the
 * ring once more, and only then sleeps on the futex word with the value it
 * read. The producer stores the stamp, fences, and reads `waiters`; if it is
 * non-zero it bumps the futex word and wakes everyone. All four of those
 * accesses are sequentially consistent, so either the consumer's last check
 * sees the message, or the producer sees the sleeper and its bump makes the
 * futex wait return at once. Wake-ups are never trusted: the loop re-checks
 * the ring after every one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ring_internal.h"

enum copy_result { COPY_OK, COPY_EMPTY, COPY_OVERRUN, COPY_TOO_SMALL, COPY_CORRUPT, COPY_NO_MEMORY };

/* A lapped reader is normally resynchronised once; more laps within one call
 * mean the stamps or head are garbage, and we stop instead of looping. */
#define MAX_RESYNCS 64

static uint64_t load_head(const struct shmq_consumer *c)
{
    /* Acquire: pairs with the release store of head in finish_publish, so the
     * slots before head are written by the time we read them. */
    return shmq_load_acquire(&c->control->head);
}

void shmq_consumer_bind(struct shmq_consumer *c, unsigned char *base,
                        const struct shmq_geometry *geometry, enum shmq_start start)
{
    c->geometry = *geometry;
    c->control = (struct shmq_control *)base;
    c->consumers = (struct shmq_consumer_area *)(base + c->geometry.consumer_area_offset);
    c->slots = base + c->geometry.slots_offset;
    uint64_t head = load_head(c);
    c->position = head;
    if (start == SHMQ_START_EARLIEST) {
        uint64_t published = head - c->geometry.first_sequence;
        c->position = published >= c->geometry.capacity ? head - c->geometry.capacity
                                                         : c->geometry.first_sequence;
    }
}

int shmq_consumer_open(struct shmq_consumer **out, const char *name, enum shmq_start start)
{
    if (out == NULL || (start != SHMQ_START_LATEST && start != SHMQ_START_EARLIEST))
        return -EINVAL;
    struct shmq_consumer *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    int rc = shmq_region_open(&c->region, name, SHMQ_REGION_MOSTLY_READ);
    if (rc < 0)
        goto fail_free;
    unsigned char *base = shmq_region_base(c->region);
    rc = shmq_header_read(base, shmq_region_size(c->region), &c->geometry);
    if (rc < 0)
        goto fail_close;
    rc = shmq_region_make_writable(c->region, c->geometry.consumer_area_offset,
                                   c->geometry.page_size);
    if (rc < 0)
        goto fail_close;
    shmq_consumer_bind(c, base, &c->geometry, start);
    *out = c;
    return 0;
fail_close:
    shmq_region_close(c->region);
fail_free:
    free(c);
    return rc;
}

static void load_payload(const struct shmq_slot *slot, unsigned char *buf, size_t length)
{
    size_t words = length / 8;
    for (size_t i = 0; i < words; i++) {
        /* Relaxed: validated afterwards by the acquire fence and stamp
         * re-check in copy_slot; a torn word is never delivered. */
        uint64_t word = shmq_load_relaxed(&((struct shmq_slot *)slot)->payload[i]);
        memcpy(buf + i * 8, &word, 8);
    }
    size_t tail = length % 8;
    if (tail) {
        /* The payload area is a whole number of words, so this stays inside
         * the slot; only the message's bytes reach the caller's buffer.
         * Relaxed: validated afterwards, as above. */
        uint64_t word = shmq_load_relaxed(&((struct shmq_slot *)slot)->payload[words]);
        memcpy(buf + words * 8, &word, tail);
    }
}

static int stamp_unchanged(struct shmq_slot *slot, uint64_t sequence)
{
    /* Acquire fence: pairs with the release fence after the "in progress"
     * stamp in write_slot. If any load before this fence saw a word of a newer
     * message, the stamp load after it sees that newer stamp. */
    shmq_fence_acquire();
    /* Relaxed: ordered by the fence just above. */
    return shmq_load_relaxed(&slot->stamp) == sequence;
}

/* Where a message goes: a fixed buffer, or memory from the caller's allocator,
 * asked for once the length is known. */
struct destination {
    unsigned char *buf;
    size_t size;
    void *(*alloc)(void *context, size_t length);
    void *context;
};

static enum copy_result copy_slot(struct shmq_consumer *c, const struct destination *d,
                                  size_t *length)
{
    uint64_t s = c->position;
    struct shmq_slot *slot = shmq_slot_at(c->slots, &c->geometry, s);
    /* Acquire: pairs with the release store of the final stamp in write_slot;
     * seeing stamp == s means seeing all of message s. */
    uint64_t stamp = shmq_load_acquire(&slot->stamp);
    if (stamp != s)
        return (int64_t)(stamp - s) < 0 ? COPY_EMPTY : COPY_OVERRUN;
    /* Relaxed: covered by the acquire above, and re-validated below. */
    uint32_t len = shmq_load_relaxed(&slot->length);
    if (len > c->geometry.slot_size || (d->alloc == NULL && len > d->size)) {
        if (!stamp_unchanged(slot, s))
            return COPY_OVERRUN;
        *length = len;
        return len > c->geometry.slot_size ? COPY_CORRUPT : COPY_TOO_SMALL;
    }
    unsigned char *buf = d->alloc ? d->alloc(d->context, len) : d->buf;
    if (buf == NULL)
        return COPY_NO_MEMORY;
    load_payload(slot, buf, len);
    if (!stamp_unchanged(slot, s))
        return COPY_OVERRUN;
    *length = len;
    return COPY_OK;
}

static void resync_after_overrun(struct shmq_consumer *c)
{
    uint64_t target = load_head(c) - c->geometry.capacity / 2;
    /* A stale head could point at or before us; never move backwards. */
    if ((int64_t)(target - c->position) <= 0)
        target = c->position + 1;
    c->lost += target - c->position;
    c->position = target;
}

static int poll_into(struct shmq_consumer *c, const struct destination *d, size_t *length)
{
    size_t ignored;
    if (length == NULL)
        length = &ignored;
    for (int attempt = 0; attempt < MAX_RESYNCS; attempt++) {
        switch (copy_slot(c, d, length)) {
        case COPY_OK:
            c->position++;
            return 0;
        case COPY_EMPTY:
            return SHMQ_EMPTY;
        case COPY_TOO_SMALL:
            return -EMSGSIZE;
        case COPY_NO_MEMORY:
            return -ENOMEM;
        case COPY_CORRUPT:
            c->position++;
            c->lost++;
            return -EBADMSG;
        case COPY_OVERRUN:
            resync_after_overrun(c);
            break;
        }
    }
    return SHMQ_EMPTY;
}

int shmq_consumer_poll(struct shmq_consumer *c, void *buf, size_t buf_size, size_t *length)
{
    if (buf == NULL && buf_size != 0)
        return -EINVAL;
    struct destination d = {.buf = buf, .size = buf_size};
    return poll_into(c, &d, length);
}

int shmq_consumer_poll_alloc(struct shmq_consumer *c, void *(*alloc)(void *context, size_t length),
                             void *context, size_t *length)
{
    if (alloc == NULL)
        return -EINVAL;
    struct destination d = {.alloc = alloc, .context = context};
    return poll_into(c, &d, length);
}

int shmq_consumer_poll_many(struct shmq_consumer *c, void *buf, size_t buf_size, size_t *lengths,
                            size_t max_messages)
{
    if ((buf == NULL && buf_size != 0) || (lengths == NULL && max_messages != 0))
        return -EINVAL;
    if (max_messages > INT32_MAX)
        max_messages = INT32_MAX;
    unsigned char *out = buf;
    size_t used = 0, n = 0;
    while (n < max_messages) {
        int rc = shmq_consumer_poll(c, out + used, buf_size - used, &lengths[n]);
        if (rc == SHMQ_EMPTY || (rc == -EMSGSIZE && n > 0))
            break;
        if (rc < 0)
            return n > 0 && rc == -EBADMSG ? (int)n : rc;
        used += lengths[n];
        n++;
    }
    return (int)n;
}

/* Whether the slot at our position holds anything but "not yet": a message,
 * or a later lap (an overrun to report). */
static int something_to_read(struct shmq_consumer *c, memory_order order)
{
    /* The order is the caller's: relaxed for hints, seq_cst in the sleep
     * handshake; each call site says why. */
    struct shmq_slot *slot = shmq_slot_at(c->slots, &c->geometry, c->position);
    return (int64_t)(atomic_load_explicit(&slot->stamp, order) - c->position) >= 0;
}

static void deadline_after(struct timespec *deadline, int64_t timeout_ns)
{
    clock_gettime(CLOCK_MONOTONIC, deadline);
    int64_t ns = deadline->tv_nsec + timeout_ns % 1000000000;
    deadline->tv_sec += (time_t)(timeout_ns / 1000000000 + ns / 1000000000);
    deadline->tv_nsec = (long)(ns % 1000000000);
}

static int deadline_passed(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline->tv_sec ||
           (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

/* One round of the sleep protocol; returns 0, -ETIMEDOUT or -EINTR. */
static int sleep_until_published(struct shmq_consumer *c, const struct timespec *deadline)
{
    /* Seq_cst: pairs with the seq_cst fence in finish_publish (see top). */
    atomic_fetch_add_explicit(&c->consumers->waiters, 1, memory_order_seq_cst);
    /* Seq_cst: pairs with the producer's seq_cst increment of futex_word; if
     * we read the bumped value we also see the stamps stored before it. */
    uint32_t word = shmq_load_seq_cst(&c->control->futex_word);
    int rc = 0;
    /* Seq_cst: the consumer half of the Dekker handshake with finish_publish. */
    if (!something_to_read(c, memory_order_seq_cst))
        rc = shmq_futex_wait(&c->control->futex_word, word, deadline);
    /* Relaxed: a stale non-zero count only costs the producer one spare wake. */
    atomic_fetch_sub_explicit(&c->consumers->waiters, 1, memory_order_relaxed);
    return rc;
}

/* Waits until the slot at our position holds something to report; returns 0,
 * -ETIMEDOUT (deadline NULL: never) or -EINTR. */
static int wait_until(struct shmq_consumer *c, const struct timespec *deadline)
{
    for (;;) {
        /* Relaxed: a hint; the caller's poll re-reads the stamp with acquire. */
        if (something_to_read(c, memory_order_relaxed))
            return 0;
        if (deadline != NULL && deadline_passed(deadline))
            return -ETIMEDOUT;
        for (uint32_t i = 0; i < c->spin; i++) {
            /* Relaxed: as above. */
            if (something_to_read(c, memory_order_relaxed))
                return 0;
            shmq_cpu_relax();
        }
        int slept = sleep_until_published(c, deadline);
        if (slept < 0)
            return slept;
    }
}

int shmq_consumer_wait(struct shmq_consumer *c, int64_t timeout_ns)
{
    struct timespec deadline;
    if (timeout_ns >= 0)
        deadline_after(&deadline, timeout_ns);
    return wait_until(c, timeout_ns >= 0 ? &deadline : NULL);
}

int shmq_consumer_poll_wait(struct shmq_consumer *c, void *buf, size_t buf_size, size_t *length,
                            int64_t timeout_ns)
{
    int rc = shmq_consumer_poll(c, buf, buf_size, length);
    if (rc != SHMQ_EMPTY || timeout_ns == 0)
        return rc;
    struct timespec deadline;
    if (timeout_ns > 0)
        deadline_after(&deadline, timeout_ns);
    for (;;) {
        int waited = wait_until(c, timeout_ns > 0 ? &deadline : NULL);
        rc = shmq_consumer_poll(c, buf, buf_size, length);
        if (rc != SHMQ_EMPTY)
            return rc;
        if (waited < 0)
            return waited;
    }
}

void shmq_consumer_set_spin(struct shmq_consumer *c, uint32_t iterations) { c->spin = iterations; }
uint64_t shmq_consumer_position(const struct shmq_consumer *c) { return c->position; }
uint64_t shmq_consumer_lost(const struct shmq_consumer *c) { return c->lost; }
uint32_t shmq_consumer_slot_size(const struct shmq_consumer *c) { return c->geometry.slot_size; }
uint32_t shmq_consumer_capacity(const struct shmq_consumer *c) { return c->geometry.capacity; }

void shmq_consumer_close(struct shmq_consumer *c)
{
    if (c == NULL)
        return;
    shmq_region_close(c->region);
    free(c);
}

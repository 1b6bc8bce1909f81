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
 *     5. if a consumer raised the wake flag, clears it, bumps the futex word
 *        and wakes the sleepers (docs/consumer-state.md).
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
 *   Only one producer may exist: it holds an OFD lock on NAME.producer
 *   (producer_lock.c), which the kernel drops when it dies. A new producer continues after the last
 *   message stamped whole: a producer killed half-way through step 2 leaves
 *   a slot stamped s - 1 that readers treat as not yet written, and its
 *   successor writes s there; one killed between steps 3 and 4 left a whole
 *   message past head, which readers may already have delivered, so its
 *   successor walks forward over such messages rather than reuse their
 *   numbers for other payloads. (A batch stores head after every message,
 *   so that is at most one; a ring written by an older version, or by hand,
 *   may hold more, and the walk takes up to a lap.)
 *
 *   Closing marks the stream ended (stream_state, release) after the last
 *   head store, and wakes sleepers so that they see it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ring_internal.h"

static void producer_in_child(struct shmq_fork_link *link)
{
    struct shmq_producer *p = (struct shmq_producer *)((char *)link - offsetof(struct shmq_producer, fork_link));
    /* The child may neither publish through this handle (two processes
     * publishing through one handle would corrupt the ring) nor keep the
     * parent's producer lock alive. */
    p->forked = 1;
    p->refusal = -ECHILD;
    if (p->lock != NULL)
        shmq_region_drop_lock(p->lock);
    /* A loan open at the fork left the child a pointer into the ring; its
     * stores must never reach a slot the parent publishes. */
    if (p->region != NULL)
        shmq_region_detach_writes(p->region);
    shmq_consumers_in_child(&p->consumers);
    /* Ours to close: the parent keeps its own. close() is async-signal-safe. */
    if (p->wake_sender >= 0)
        close(p->wake_sender);
    if (p->wake_fd >= 0)
        close(p->wake_fd);
    p->wake_sender = p->wake_fd = -1;
}

static int geometry_matches(const struct shmq_geometry *g, const struct shmq_config *config)
{
    if (config == NULL)
        return 1;
    if (config->slot_size != 0 && config->slot_size != g->slot_size)
        return 0;
    if (config->capacity != 0 && config->capacity != g->capacity)
        return 0;
    if ((config->delivery == SHMQ_LOSSY && g->lossless) ||
        (config->delivery == SHMQ_LOSSLESS && !g->lossless))
        return 0;
    return 1;
}

static mode_t requested_mode(const struct shmq_config *config)
{
    return config && config->mode ? config->mode & 0777 : 0600;
}

/* A producer adopts an existing ring only if it is its own: a ring planted
 * by another user, or opened up wider than asked, would let that user read
 * or steer what we publish. */
static int check_ownership(const struct shmq_region *region, mode_t mode)
{
    struct stat st;
    int rc = shmq_region_stat(region, &st);
    if (rc < 0)
        return rc;
    if (st.st_uid != geteuid() || (st.st_mode & 0777 & ~mode) != 0)
        return -EPERM;
    return 0;
}

static int create_queue(struct shmq_producer *p, const char *name, const struct shmq_config *config)
{
    struct shmq_geometry *g = &p->geometry;
    int rc = shmq_geometry_plan(g, config);
    if (rc < 0)
        return rc;
    mode_t mode = requested_mode(config);
    rc = shmq_region_create(&p->region, name, (size_t)g->total_size, mode);
    if (rc < 0)
        return rc;
    p->control = shmq_region_base(p->region);
    shmq_header_init(p->control, g);
    rc = shmq_producer_lock_take(&p->lock, name);
    if (rc == 0)
        rc = shmq_consumers_producer_open(&p->consumers, name, g, p->control, mode);
    if (rc < 0) {
        shmq_region_close(p->lock);
        p->lock = NULL;
        shmq_region_unlink(name);
        shmq_region_close(p->region);
        p->region = NULL;
        return rc;
    }
    /* Last: a consumer that sees the ring valid finds its consumer state. */
    shmq_header_publish(p->control);
    return 0;
}

/* A creator publishes the header only once it is complete: an attacher that
 * finds it unpublished waits a little for it before calling it damaged. */
#define HEADER_WAIT_NS (200LL * 1000 * 1000)

static int attach_queue(struct shmq_producer *p, const char *name, const struct shmq_config *config)
{
    mode_t mode = requested_mode(config);
    int rc = shmq_region_open(&p->region, name, SHMQ_REGION_READ_WRITE);
    if (rc < 0)
        return rc;
    rc = check_ownership(p->region, mode);
    int64_t give_up = shmq_now_ns() + HEADER_WAIT_NS;
    while (rc == 0) {
        rc = shmq_header_read(shmq_region_base(p->region), shmq_region_size(p->region),
                              &p->geometry);
        if (rc != -ENODATA || shmq_now_ns() >= give_up)
            break;
        struct timespec pause = {0, 1000 * 1000};
        nanosleep(&pause, NULL);
        rc = 0;
    }
    if (rc == 0 && !geometry_matches(&p->geometry, config))
        rc = -EMEDIUMTYPE;
    if (rc == 0) {
        p->control = shmq_region_base(p->region);
        rc = shmq_producer_lock_take(&p->lock, name);
    }
    /* Only now, holding the lock, is what we find ours to repair; a failure
     * from here on leaves it as it was. */
    if (rc == 0) {
        rc = shmq_consumers_producer_open(&p->consumers, name, &p->geometry, p->control, mode);
        if (rc < 0) {
            shmq_region_close(p->lock);
            p->lock = NULL;
        }
    }
    if (rc < 0) {
        shmq_region_close(p->region);
        p->region = NULL;
    }
    return rc;
}

void shmq_producer_bind(struct shmq_producer *p, unsigned char *base,
                        const struct shmq_geometry *geometry, struct shmq_wake_page *wake)
{
    p->geometry = *geometry;
    p->control = (struct shmq_control *)base;
    p->slots = base + p->geometry.slots_offset;
    p->consumers.wake = wake;
    p->next_probe_ns = 0;
    p->wake_sender = p->wake_fd = -1;
    /* Relaxed: we hold the producer lock, and the last writer of head released
     * it by closing or dying, which the kernel orders before our lock. */
    p->next = shmq_load_relaxed(&p->control->head);
    /* A producer that died after stamping messages but before advancing head
     * over them left whole messages behind, which
     * readers may have delivered: walk over them, so that no sequence number
     * is ever reused for another payload. At most one lap: anything longer
     * is garbage, not messages. */
    for (uint32_t walked = 0; walked < p->geometry.capacity; walked++) {
        /* Relaxed: ordered after the dead producer's stores by the lock, as
         * for head just above. */
        if (shmq_load_relaxed(&shmq_slot_at(p->slots, &p->geometry, p->next)->stamp) != p->next)
            break;
        p->next++;
    }
    /* Release: pairs with the consumers' acquire loads of head, as in
     * finish_publish. */
    shmq_store_release(&p->control->head, p->next);
    p->limit = p->next; /* look (lossless: at the consumers) before publishing */
    p->discovered_at = p->next - p->geometry.capacity; /* list them at the first look */
    /* Release: pairs with the consumers' acquire load of stream_state; a new
     * producer reopens the stream its predecessor may have ended. */
    shmq_store_release(&p->control->stream_state, 0);
}

int shmq_producer_open(struct shmq_producer **out, const char *name,
                       const struct shmq_config *config, unsigned flags)
{
    if (out == NULL)
        return -EINVAL;
    int rc = shmq_queue_name_validate(name);
    if (rc < 0)
        return rc;
    struct shmq_producer *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return -ENOMEM;
    p->consumers.wake_id = -1;
    p->consumers.own_id = -1;
    p->consumers.own_index = -1;
    p->wake_sender = p->wake_fd = -1;
    /* Tracked before anything is taken, so a fork() from another thread
     * while we open finds the handle (fork.c). */
    p->fork_link.in_child = producer_in_child;
    shmq_fork_track(&p->fork_link);
    if ((flags & SHMQ_CREATE) && (flags & SHMQ_EXCL)) {
        rc = create_queue(p, name, config);
    } else {
        rc = attach_queue(p, name, config);
        /* Two producers may race to create; the loser attaches. */
        if (rc == -ENOENT && (flags & SHMQ_CREATE)) {
            rc = create_queue(p, name, config);
            if (rc == -EEXIST)
                rc = attach_queue(p, name, config);
        }
    }
    if (rc < 0) {
        shmq_fork_untrack(&p->fork_link);
        free(p);
        return rc;
    }
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->flags = flags;
    shmq_producer_bind(p, shmq_region_base(p->region), &p->geometry, p->consumers.wake);
    /* Descriptor waiters armed under an earlier producer (or none) wait for
     * a wake-up that only we can send (descriptor.c). */
    shmq_producer_wake_descriptors(p, 1);
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
     * consumer's shmq_copy_at: a reader that saw any new payload word also sees
     * this mark when it re-checks the stamp, and discards its copy. */
    shmq_store_relaxed(&slot->stamp, sequence - 1);
    shmq_fence_release();
    /* Relaxed: published by the release store of the stamp just below. */
    shmq_store_relaxed(&slot->length, (uint32_t)length);
    store_payload(slot, data, length);
    /* Release: pairs with the consumer's acquire load of the stamp in
     * shmq_copy_at; a reader that sees stamp == sequence sees the whole payload. */
    shmq_store_release(&slot->stamp, sequence);
}

/* Wakes one sleeper, which passes the wake on to the others (consumer.c,
 * shmq_consumer_relay): waking all of them here would make the producer walk every
 * sleeper inside its syscall and hand them its CPU, once per wake. */
static void wake_sleepers(struct shmq_producer *p)
{
    /* Seq_cst RMW: a sleeper that reads the new value (its seq_cst load of
     * futex_word) also sees every stamp stored before. */
    shmq_fetch_add_seq_cst(&p->control->futex_word, 1);
    shmq_futex_wake_one(&p->control->futex_word);
    p->wakeups++;
}

void shmq_producer_kick(struct shmq_producer *p)
{
    wake_sleepers(p);
    shmq_producer_wake_descriptors(p, 1);
}

/* After publishing up to p->next - 1: make head current and wake sleepers. */
static void finish_publish(struct shmq_producer *p)
{
    /* Release: pairs with the consumer's acquire loads of head (start position
     * and overrun recovery), which then see every slot written before. */
    shmq_store_release(&p->control->head, p->next);
    struct shmq_wake_page *wake = p->consumers.wake;
    if (wake == NULL)
        return;
    /* Seq_cst fence: the producer half of a Dekker handshake with the
     * sleeper's seq_cst store of wake_flag and load of the stamp (consumer.c,
     * sleep_until_published). Either this load sees the flag, or the
     * sleeper's load sees our stamp. Without it both could miss. */
    shmq_fence_seq_cst();
    /* Relaxed: ordered by the fence just above. */
    if (shmq_load_relaxed(&wake->wake_flag) != 0) {
        /* Seq_cst: a sleeper that raises the flag after this exchange is
         * ordered after our fence, so its check of the ring sees our stamp;
         * one that raised it before is woken below. One wake per episode.
         * Any bit but SHMQ_WAKE_DESCRIPTOR counts as a futex sleeper. */
        uint32_t raised = shmq_exchange_seq_cst(&wake->wake_flag, 0);
        if (raised & ~SHMQ_WAKE_DESCRIPTOR)
            wake_sleepers(p);
        if (raised & SHMQ_WAKE_DESCRIPTOR)
            shmq_producer_wake_descriptors(p, 0);
    }
}

/* Lossless: whether p->next fits, looking at the consumers only when it
 * reaches the limit of the last look, and asking the kernel about the ones
 * holding it back at most once per wait slice. */
static __attribute__((noinline)) int look_for_room(struct shmq_producer *p)
{
    if (!p->geometry.lossless) {
        p->limit = p->next + (UINT64_C(1) << 62);
        return 1;
    }
    /* Listing the live consumers costs a few syscalls: do it twice a lap,
     * which is as often as the registration handshake needs
     * (backpressure.c), and only re-read the known entries otherwise. */
    int discover = p->next - p->discovered_at >= p->geometry.capacity / 2;
    return shmq_backpressure_has_room(p, discover, 0);
}

/* One compare on the hot path: a lossy producer keeps its limit half the
 * sequence space ahead (look_for_room moves it on), so it never fails. */
static inline int has_room(struct shmq_producer *p)
{
    if ((int64_t)(p->next - p->limit) < 0)
        return 1;
    return look_for_room(p);
}

static int64_t deadline_after(int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return -1;
    int64_t now = shmq_now_ns();
    return timeout_ns > INT64_MAX - now ? -1 : now + timeout_ns;
}

int shmq_producer_publish(struct shmq_producer *p, const void *data, size_t length,
                          uint64_t *sequence)
{
    if (length > p->geometry.slot_size)
        return -EMSGSIZE;
    if (data == NULL && length != 0)
        return -EINVAL;
    /* One check for both reasons to refuse (fork, open loan): the hot path. */
    if (p->refusal)
        return p->refusal;
    if (!has_room(p))
        return SHMQ_FULL;
    uint64_t s = p->next;
    write_slot(p, s, data, length);
    p->next = s + 1;
    finish_publish(p);
    if (sequence)
        *sequence = s;
    return 0;
}

int shmq_producer_wait_room(struct shmq_producer *p, int64_t timeout_ns)
{
    if (p->forked)
        return -ECHILD;
    if (has_room(p))
        return 0;
    if (timeout_ns == 0)
        return p->wake_fd >= 0 && shmq_backpressure_arm(p) == 0 ? 0 : SHMQ_FULL;
    return shmq_backpressure_wait(p, deadline_after(timeout_ns));
}

int shmq_producer_publish_wait(struct shmq_producer *p, const void *data, size_t length,
                               uint64_t *sequence, int64_t timeout_ns)
{
    int64_t deadline = deadline_after(timeout_ns);
    for (;;) {
        int rc = shmq_producer_publish(p, data, length, sequence);
        if (rc != SHMQ_FULL || timeout_ns == 0)
            return rc;
        rc = shmq_backpressure_wait(p, deadline);
        if (rc < 0)
            return rc;
    }
}

static int check_batch(const struct shmq_producer *p, const void *const *messages,
                       const size_t *lengths, size_t count)
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
    return p->refusal;
}

/* Publishes from messages[*done] on while there is room; returns 0 when all
 * are out, else SHMQ_FULL. */
static int publish_batch(struct shmq_producer *p, const void *const *messages,
                         const size_t *lengths, size_t count, size_t *done)
{
    int rc = 0;
    size_t before = *done;
    for (; *done < count; (*done)++) {
        if (!has_room(p)) {
            rc = SHMQ_FULL;
            break;
        }
        write_slot(p, p->next++, messages[*done], lengths[*done]);
        /* Release: as in finish_publish. Head follows every message, not
         * only the batch's end, so a reader lapped during a long batch
         * resynchronises to where the producer really is. */
        shmq_store_release(&p->control->head, p->next);
    }
    if (*done > before)
        finish_publish(p);
    return rc;
}

int shmq_producer_publish_many(struct shmq_producer *p, const void *const *messages,
                               const size_t *lengths, size_t count, uint64_t *last_sequence)
{
    int rc = check_batch(p, messages, lengths, count);
    if (rc < 0 || count == 0)
        return rc;
    size_t done = 0;
    rc = publish_batch(p, messages, lengths, count, &done);
    if (last_sequence && done > 0)
        *last_sequence = p->next - 1;
    return rc;
}

int shmq_producer_publish_many_wait(struct shmq_producer *p, const void *const *messages,
                                    const size_t *lengths, size_t count, size_t *published,
                                    int64_t timeout_ns)
{
    size_t ignored = 0;
    if (published == NULL)
        published = &ignored;
    *published = 0;
    int rc = check_batch(p, messages, lengths, count);
    if (rc < 0 || count == 0)
        return rc;
    int64_t deadline = deadline_after(timeout_ns);
    for (;;) {
        rc = publish_batch(p, messages, lengths, count, published);
        if (rc != SHMQ_FULL || timeout_ns == 0)
            return rc;
        rc = shmq_backpressure_wait(p, deadline);
        if (rc < 0)
            return rc;
    }
}

/*
 * LOANS. claim does step 1 of the protocol (the "in progress" mark and its
 * release fence) and hands out the payload area; the caller's stores into it
 * are step 2; commit does steps 3 to 5. Until commit, readers of sequence
 * next see "not yet"; lapped readers of the slot's old message see it
 * overwritten, as with any publish. The caller writes with plain stores, so
 * a lapped reader's copy races with them: the reader's re-check of the stamp
 * (whose "in progress" value was stored before the fence) discards whatever
 * it read. An abandoned or crashed loan leaves the mark, which reads as "not
 * yet", and the next publish takes the same sequence.
 */
int shmq_producer_claim(struct shmq_producer *p, size_t size, void **data)
{
    if (size > p->geometry.slot_size)
        return -EMSGSIZE;
    if (data == NULL)
        return -EINVAL;
    if (p->forked)
        return -ECHILD;
    if (p->claimed)
        return -EINPROGRESS;
    if (!has_room(p))
        return SHMQ_FULL;
    struct shmq_slot *slot = shmq_slot_at(p->slots, &p->geometry, p->next);
    /* Relaxed store + release fence: as in write_slot. */
    shmq_store_relaxed(&slot->stamp, p->next - 1);
    shmq_fence_release();
    p->claimed = 1;
    p->refusal = -EINPROGRESS;
    p->claim_size = (uint32_t)size;
    *data = (void *)slot->payload;
    return 0;
}

int shmq_producer_claim_wait(struct shmq_producer *p, size_t size, void **data, int64_t timeout_ns)
{
    int64_t deadline = deadline_after(timeout_ns);
    for (;;) {
        int rc = shmq_producer_claim(p, size, data);
        if (rc != SHMQ_FULL || timeout_ns == 0)
            return rc;
        rc = shmq_backpressure_wait(p, deadline);
        if (rc < 0)
            return rc;
    }
}

int shmq_producer_commit(struct shmq_producer *p)
{
    if (!p->claimed)
        return -EINVAL;
    if (p->forked)
        return -ECHILD;
    struct shmq_slot *slot = shmq_slot_at(p->slots, &p->geometry, p->next);
    /* Relaxed: published by the release store of the stamp just below. */
    shmq_store_relaxed(&slot->length, p->claim_size);
    /* Release: as in write_slot; a reader that sees the stamp sees every
     * store the caller made into the loan. */
    shmq_store_release(&slot->stamp, p->next);
    p->claimed = 0;
    p->refusal = 0;
    p->next++;
    finish_publish(p);
    return 0;
}

void shmq_producer_abort(struct shmq_producer *p)
{
    /* The slot keeps its "in progress" mark, which reads as "not yet". */
    p->claimed = 0;
    p->refusal = p->forked ? -ECHILD : 0;
}

void shmq_producer_interrupt(struct shmq_producer *p)
{
    shmq_waiter_interrupt(&p->waiter, p->consumers.wake ? &p->consumers.wake->producer_futex : NULL);
}

void shmq_producer_set_wait_check(struct shmq_producer *p, int (*check)(void *context),
                                  void *context)
{
    p->waiter.check = check;
    p->waiter.context = context;
}

uint64_t shmq_producer_next_sequence(const struct shmq_producer *p) { return p->next; }
uint32_t shmq_producer_slot_size(const struct shmq_producer *p) { return p->geometry.slot_size; }
uint32_t shmq_producer_capacity(const struct shmq_producer *p) { return p->geometry.capacity; }
uint64_t shmq_producer_wakeups(const struct shmq_producer *p) { return p->wakeups; }
uint64_t shmq_producer_descriptor_wakeups(const struct shmq_producer *p)
{
    return p->descriptor_wakeups;
}
int shmq_producer_lossless(const struct shmq_producer *p) { return p->geometry.lossless; }

int shmq_producer_consumers(const struct shmq_producer *p, struct shmq_consumer_info *out,
                            size_t max)
{
    const struct shmq_consumer_state *cs = &p->consumers;
    if (out == NULL && max != 0)
        return -EINVAL;
    if (cs->locks == NULL)
        return 0;
    size_t n = 0;
    for (uint32_t i = 0; i < cs->entry_count && n < max; i++) {
        if (shmq_consumers_entry_live(cs, i) != 1)
            continue;
        if (shmq_consumers_snapshot(cs, i, &out[n], p->next, &p->geometry) == 0 ||
            out[n].unclear)
            n++;
    }
    return (int)n;
}

/* How many consumers wait_consumers counts now (see shmq.h). */
static uint32_t attached_consumers(struct shmq_producer *p)
{
    struct shmq_consumer_state *cs = &p->consumers;
    shmq_consumers_discover(cs);
    uint32_t n = 0;
    for (uint32_t i = 0; cs->views != NULL && i < cs->entry_count; i++) {
        struct shmq_consumer_entry *e = cs->views[i].entry;
        if (e == NULL)
            continue;
        /* Acquire: pairs with the consumer's seq_cst store of its state in
         * shmq_backpressure_register. */
        uint32_t state = shmq_load_acquire(&e->state);
        /* Group members count: the producer waits for their group. */
        n += !p->geometry.lossless ||
             (state & (SHMQ_ENTRY_REGISTERED | SHMQ_ENTRY_GROUP_MEMBER));
    }
    return n;
}

#define ATTACH_LOOK_NS (1000LL * 1000)

int shmq_producer_wait_consumers(struct shmq_producer *p, uint32_t n, int64_t timeout_ns)
{
    if (p == NULL)
        return -EINVAL;
    if (p->forked)
        return -ECHILD;
    if (n > p->geometry.consumer_entries)
        return -ERANGE; /* more than can ever attach */
    int64_t deadline = deadline_after(timeout_ns);
    for (;;) {
        int rc = shmq_waiter_take_interrupt(&p->waiter);
        if (rc < 0)
            return rc;
        uint32_t attached = attached_consumers(p);
        if (attached >= n)
            return attached > INT32_MAX ? INT32_MAX : (int)attached;
        int64_t now = shmq_now_ns();
        if (deadline >= 0 && now >= deadline)
            return -ETIMEDOUT;
        int64_t until = now + ATTACH_LOOK_NS;
        if (deadline >= 0 && deadline < until)
            until = deadline;
        struct timespec ts = {.tv_sec = (time_t)(until / 1000000000),
                              .tv_nsec = (long)(until % 1000000000)};
        /* Sleeps on our own interrupt word: only an interrupt ends it early. */
        rc = shmq_waiter_sleep(&p->waiter, &p->waiter.interrupt_word,
                               shmq_load_seq_cst(&p->waiter.interrupt_word), &ts);
        if (rc == -EINTR || (rc == -ETIMEDOUT && shmq_now_ns() >= until)) {
            rc = shmq_waiter_between(&p->waiter, rc == -EINTR);
            if (rc < 0)
                return rc;
        }
    }
}

void shmq_producer_close(struct shmq_producer *p)
{
    if (p == NULL)
        return;
    if (!p->forked) {
        /* Release: pairs with the consumers' acquire load of stream_state;
         * whoever sees the mark sees every message published before it. */
        shmq_store_release(&p->control->stream_state, SHMQ_STREAM_ENDED);
        wake_sleepers(p);
        shmq_producer_wake_descriptors(p, 0);
        if (p->wake_fd >= 0)
            /* Relaxed: consumers that still read it send to a closed name. */
            shmq_store_relaxed(&p->control->producer_nonce, 0);
        if (p->flags & SHMQ_UNLINK_ON_CLOSE)
            shmq_unlink(p->name, SHMQ_UNLINK_FORCE);
    }
    /* The lock goes while fork() is held off and the handle is still on the
     * fork list, so a child forked meanwhile finds it held or gone, never
     * half-closed; the handle leaves the list before any of it is freed. */
    shmq_fork_guard(1);
    if (p->lock != NULL)
        shmq_region_drop_lock(p->lock);
    shmq_fork_guard(0);
    shmq_fork_untrack(&p->fork_link);
    if (p->wake_sender >= 0)
        close(p->wake_sender);
    if (p->wake_fd >= 0)
        close(p->wake_fd);
    shmq_consumers_close(&p->consumers);
    shmq_region_close(p->lock);
    shmq_region_close(p->region);
    free(p);
}

int shmq_exists(const char *name)
{
    int rc = shmq_queue_name_validate(name);
    return rc < 0 ? rc : shmq_region_exists(name);
}

int shmq_unlink(const char *name, unsigned flags)
{
    int rc = shmq_queue_name_validate(name);
    if (rc < 0)
        return rc;
    if (!(flags & SHMQ_UNLINK_FORCE) && shmq_producer_lock_held(name, geteuid()) == 1)
        return -EBUSY;
    rc = shmq_region_unlink(name);
    int consumers = shmq_region_unlink_object(name, SHMQ_CONSUMERS_SUFFIX);
    int lock = shmq_producer_lock_unlink(name);
    /* The System V pages need nothing: they go with their last mapping. A
     * leftover file whose ring is gone still counts as removed. */
    return rc == -ENOENT && (consumers == 0 || lock == 0) ? 0 : rc;
}

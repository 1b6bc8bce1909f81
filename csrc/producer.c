/*
 * The producer side of the broadcast ring.
 *
 * PROTOCOL (one producer; the reader side is in consumer.c)
 *   Message s is a RECORD: index record s & (capacity-1), whose stamp says
 *   which sequence it describes, and a payload in consecutive slots of the
 *   data area (its length and first slot are in the index record). Records
 *   take the data area's slots in order, as many as each needs; one that
 *   would run past the last slot starts at slot 0 instead (the slots skipped
 *   are padding), so every payload is contiguous. To publish s, the producer:
 *     0. plans it (plan_record): its first slot, and the records whose slots
 *        it is about to rewrite: every record from tail on that starts less
 *        than a lap before the new record's end;
 *     1. INVALIDATES those: stores stamp = r + capacity - 1 into each such
 *        record r, stores tail = the first record it leaves alone, and
 *        stores stamp = s - 1 into record s ("being written"), then a
 *        release fence;
 *     2. stores the length, first slot and payload, a word at a time, relaxed;
 *     3. stores stamp = s with release;
 *     4. stores head = s + 1 with release;
 *     5. if a consumer raised the wake flag, clears it, bumps the futex word
 *        and wakes the sleepers (docs/consumer-state.md).
 *   A reader validates a copy by loading its record's stamp again after an
 *   acquire fence (consumer.c): had any slot of it been rewritten, step 1's
 *   mark is what it loads. So the seqlock covers the whole record, however
 *   many slots it spans, and a lapped reader learns it from the stamp alone.
 *   Each record takes at least one slot, so at most `capacity` records are
 *   intact at once and record s - capacity is always among those step 1
 *   invalidates: its mark is s - 1, the same store.
 *
 *   Why r + capacity - 1 as the mark: readers compare stamps with wrap-safe
 *   signed differences. A reader that wants r sees a value above r:
 *   "overrun". One that wants r + capacity, the next sequence of that index
 *   record, sees a value below it: "not yet". So the mark is unambiguous
 *   without spending a bit of the 64-bit sequence on it.
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

/* Closes a region of a handle that fork() may be copying from another
 * thread: the child's handler (producer_in_child) must find it whole or
 * not at all, never freed. */
static void forget_region(struct shmq_region **slot)
{
    shmq_fork_guard(1);
    struct shmq_region *region = *slot;
    *slot = NULL;
    shmq_fork_guard(0);
    shmq_region_close(region);
}

static int geometry_matches(const struct shmq_geometry *g, const struct shmq_config *config)
{
    if (config == NULL)
        return 1;
    if (config->max_message_size != 0 && config->max_message_size != g->max_message)
        return 0;
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

/* The producer's copy of the records' first slots (capacity of them), or
 * -ENOMEM; freed with the handle. */
static int allocate_record_slots(struct shmq_producer *p)
{
    free(p->record_slots);
    p->record_slots = NULL;
    if (!p->geometry.spanning)
        return 0; /* each record's slot is its sequence's */
    p->record_slots = calloc(p->geometry.capacity, sizeof(*p->record_slots));
    return p->record_slots != NULL ? 0 : -ENOMEM;
}

static int create_queue(struct shmq_producer *p, const char *name, const struct shmq_config *config)
{
    struct shmq_geometry *g = &p->geometry;
    int rc = shmq_geometry_plan(g, config);
    if (rc < 0)
        return rc;
    rc = allocate_record_slots(p);
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
        forget_region(&p->lock);
        shmq_region_unlink(name);
        forget_region(&p->region);
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
    if (rc == 0)
        rc = allocate_record_slots(p);
    if (rc == 0) {
        p->control = shmq_region_base(p->region);
        rc = shmq_producer_lock_take(&p->lock, name);
    }
    /* Only now, holding the lock, is what we find ours to repair; a failure
     * from here on leaves it as it was. */
    if (rc == 0) {
        rc = shmq_consumers_producer_open(&p->consumers, name, &p->geometry, p->control, mode);
        if (rc < 0) {
            forget_region(&p->lock);
        }
    }
    if (rc < 0) {
        forget_region(&p->region);
    }
    return rc;
}

/* Where a record that the index says starts at `slot` begins, counted as
 * next_slot is: live records begin less than a lap before next_slot. */
static inline uint64_t record_start(const struct shmq_producer *p, uint64_t record)
{
    uint64_t mask = p->geometry.capacity - 1;
    uint32_t slot = p->record_slots[record & mask];
    uint64_t back = (p->next_slot - slot) & mask;
    return p->next_slot - (back ? back : mask + 1);
}

/* A record as the index shows it, if whole and sound: its first slot and its
 * slot count. */
static int record_extent(const struct shmq_producer *p, uint64_t sequence, uint64_t *slot,
                         uint64_t *slots)
{
    const struct shmq_geometry *g = &p->geometry;
    struct shmq_record *record = shmq_record_at(p->index, g, sequence);
    /* Relaxed: ordered after a dead predecessor's stores by the lock. */
    if (shmq_load_relaxed(&record->stamp) != sequence)
        return 0;
    uint64_t length = shmq_load_relaxed(&record->length);
    /* One-slot records' slot is their sequence's: the field is not kept. */
    *slot = g->spanning ? shmq_load_relaxed(&record->slot) : (sequence & (g->capacity - 1));
    *slots = shmq_record_slots(length, g->slot_payload);
    return length <= g->max_message && *slot < g->capacity && *slots <= g->capacity - *slot;
}

/* On taking over a ring (RECORDS at the top): where the next record goes,
 * which records are intact, and how far a predecessor got. */
static void find_records(struct shmq_producer *p)
{
    const struct shmq_geometry *g = &p->geometry;
    uint64_t capacity = g->capacity, slot, slots;
    /* The last record before head places the next one; without one (a new
     * ring, or one whose last publish was overwriting it) nothing before
     * head is intact, and any place will do. */
    int anchored = p->next != g->first_sequence && record_extent(p, p->next - 1, &slot, &slots);
    /* (Where a record's slot is its sequence's, in a ring of one-slot
     * records with the index in front of each slot, next_slot must follow
     * next: so it starts at next.) */
    p->next_slot = anchored ? slot + slots : p->next;
    /* A producer that died after stamping messages but before advancing
     * head over them left whole messages behind, which readers may have
     * delivered: walk over them, so that no sequence number is ever reused
     * for another payload. Each starts where the last ended or at slot 0
     * (padding); at most one lap: anything else is garbage, not messages. */
    for (uint32_t walked = 0; walked < capacity; walked++) {
        if (!record_extent(p, p->next, &slot, &slots) ||
            (anchored && slot != (p->next_slot & (capacity - 1)) && slot != 0))
            break;
        anchored = 1;
        p->next_slot = slot + slots;
        p->next++;
    }
    /* Relaxed: ordered after the dead producer's stores by the lock, as for
     * head. A hint only: clamped into the lap before head. */
    uint64_t tail = shmq_load_relaxed(&p->control->tail);
    /* No record before the first message ever existed. */
    uint64_t from = p->next - g->first_sequence < capacity ? g->first_sequence : p->next - capacity;
    if (!anchored || (int64_t)(tail - p->next) > 0)
        tail = p->next;
    if ((int64_t)(tail - from) < 0)
        tail = from;
    /* The intact records: the longest run back from head, no further than
     * tail, of records stamped whole whose slots end where the next one
     * begins or earlier, all within the lap before next_slot. Head and tail
     * are the predecessor's word, which a crash or a scribbling owner may
     * have left wrong: the index itself decides. */
    uint64_t live = p->next, end = p->next_slot;
    while (live != tail) {
        if (!record_extent(p, live - 1, &slot, &slots) || slots > end - (p->next_slot - capacity))
            break;
        /* The last position of its slot whose record ends by `end`. */
        uint64_t start = end - slots - ((end - slots - slot) & (capacity - 1));
        if ((int64_t)(start - (p->next_slot - capacity)) < 0)
            break;
        end = start;
        live--;
    }
    /* Every other record of the lap is marked overwritten (and one that a
     * stale head leaves "from the future", stamped whole for a sequence
     * past head, is marked with it: each index record belongs to exactly
     * one sequence of the lap), since its slots may be the next ones
     * rewritten. (A new ring's records already hold that mark for the
     * sequences before the first: header.c.) */
    for (uint64_t r = p->next - capacity; r != live; r++) {
        struct shmq_record *record = shmq_record_at(p->index, g, r);
        uint64_t mark = r + capacity - 1;
        /* Relaxed, both: ours now; ordered before any payload store by the
         * release fence of the next publish. */
        if (shmq_load_relaxed(&record->stamp) != mark)
            shmq_store_relaxed(&record->stamp, mark);
    }
    p->oldest = live;
    /* Relaxed: read by consumers as a hint only (consumer.c); the next
     * publish's release fence orders it anyway. */
    shmq_store_relaxed(&p->control->tail, p->oldest);
    /* Our copy of the intact records' slots (validated just above). */
    for (uint64_t r = live; g->spanning && r != p->next; r++)
        /* Relaxed: ordered after the dead producer's stores by the lock. */
        p->record_slots[r & (capacity - 1)] =
            shmq_load_relaxed(&shmq_record_at(p->index, g, r)->slot);
}

void shmq_producer_bind(struct shmq_producer *p, unsigned char *base,
                        const struct shmq_geometry *geometry, struct shmq_wake_page *wake)
{
    p->geometry = *geometry;
    p->control = (struct shmq_control *)base;
    p->index = base + p->geometry.index_offset;
    p->data = base + p->geometry.data_offset;
    p->consumers.wake = wake;
    p->next_probe_ns = 0;
    p->wake_sender = p->wake_fd = -1;
    /* shmq_producer_open allocates it before it takes anything (-ENOMEM);
     * only a test's handle bound to its own mapping gets it here. */
    if (p->record_slots == NULL && p->geometry.spanning)
        p->record_slots = calloc(p->geometry.capacity, sizeof(*p->record_slots));
    /* Relaxed: we hold the producer lock, and the last writer of head released
     * it by closing or dying, which the kernel orders before our lock. */
    p->next = shmq_load_relaxed(&p->control->head);
    find_records(p);
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
        free(p->record_slots);
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

/* Copies length bytes into payload words. The last word is assembled in a
 * register so we never read past the caller's buffer. */
static inline __attribute__((always_inline)) void store_payload(_Atomic uint64_t *payload, const unsigned char *data, size_t length)
{
    size_t words = length / 8;
    for (size_t i = 0; i < words; i++) {
        uint64_t word;
        memcpy(&word, data + i * 8, 8);
        /* Relaxed: ordered after the marks of step 1 by the release fence in
         * begin_record, and before the final stamp by its release store. */
        shmq_store_relaxed(&payload[i], word);
    }
    size_t tail = length % 8;
    if (tail) {
        uint64_t word = 0;
        memcpy(&word, data + words * 8, tail);
        /* Relaxed: as above. */
        shmq_store_relaxed(&payload[words], word);
    }
}

/* Step 0: where a record of `length` bytes goes and what it overwrites
 * (p->plan_*), and what it needs of a lossless queue's consumers (p->need:
 * every record it overwrites read). Changes nothing shared. */
static inline void plan_record(struct shmq_producer *p, size_t length)
{
    uint64_t capacity = p->geometry.capacity;
    if (!p->geometry.spanning) {
        /* Every record is one slot, its sequence's (the index record in
         * front of it): it overwrites record next - capacity, nothing else,
         * and its "being written" mark is what invalidates that one. So
         * nothing but the room check needs planning (and no tail). */
        p->need = p->next;
        return;
    }
    if (length <= p->geometry.slot_payload) {
        /* The hot path, one slot (which never needs padding): it rewrites
         * the slot a lap before next_slot, so it overwrites the oldest
         * intact record if, and only if, that record starts there (intact
         * records start at or after it, in order). */
        uint64_t survivor = p->oldest;
        if (survivor != p->next &&
            p->record_slots[survivor & (capacity - 1)] == (uint32_t)(p->next_slot & (capacity - 1)))
            survivor++;
        p->plan_slot = p->next_slot;
        p->plan_end = p->next_slot + 1;
        p->plan_survivor = survivor;
        p->need = survivor + capacity - 1;
        return;
    }
    uint64_t slots = shmq_record_slots(length, p->geometry.slot_payload);
    uint64_t at = p->next_slot;
    uint64_t offset = at & (capacity - 1);
    if (offset + slots > capacity)
        at += capacity - offset; /* padding: a record never wraps */
    /* Slots a lap before [at, at + slots) are rewritten, and the padding's;
     * a record starting before the end of those is overwritten. */
    uint64_t end = at + slots - capacity;
    uint64_t survivor = p->oldest;
    while (survivor != p->next && (int64_t)(record_start(p, survivor) - end) < 0)
        survivor++;
    p->plan_slot = at;
    p->plan_end = at + slots;
    p->plan_survivor = survivor;
    p->need = survivor + capacity - 1;
}

/* Step 1 for the planned record `sequence`; returns where its payload goes. */
static inline _Atomic uint64_t *begin_record(struct shmq_producer *p, uint64_t sequence,
                                            size_t length)
{
    const struct shmq_geometry *g = &p->geometry;
    uint64_t capacity = g->capacity;
    if (g->spanning && p->oldest != p->plan_survivor) {
        /* Record sequence - capacity shares the index record of `sequence`:
         * the "being written" mark below invalidates it. */
        for (uint64_t r = p->oldest; r != p->plan_survivor; r++)
            if (r != sequence - capacity)
                /* Relaxed: ordered before every payload store by the
                 * release fence below. */
                shmq_store_relaxed(&shmq_record_at(p->index, g, r)->stamp, r + capacity - 1);
        p->oldest = p->plan_survivor;
        /* Relaxed: a hint for readers that resynchronise (consumer.c).
         * (Where records are one slot each, readers work it out without:
         * head - capacity + 1 once the ring is full.) */
        shmq_store_relaxed(&p->control->tail, p->oldest);
    }
    /* Relaxed store + release fence: the fence orders every mark of step 1
     * before every payload store of step 2. It pairs with the acquire fence
     * in the consumer's shmq_record_unchanged: a reader that saw any new
     * payload word also sees its record's mark when it re-checks the stamp,
     * and discards its copy. */
    struct shmq_record *record = shmq_record_at(p->index, g, sequence);
    shmq_store_relaxed(&record->stamp, sequence - 1);
    shmq_fence_release();
    uint32_t slot = (uint32_t)((g->spanning ? p->plan_slot : sequence) & (capacity - 1));
    /* Relaxed: published by the release store of the final stamp
     * (end_record); stored before the payload, as one visit to the line
     * that holds them and the payload's first bytes. */
    shmq_store_relaxed(&record->length, (uint32_t)length);
    if (g->spanning)
        shmq_store_relaxed(&record->slot, slot);
    return shmq_payload_at(p->data, g, slot);
}

/* Steps 2 (what is left of it) and 3. */
static inline void end_record(struct shmq_producer *p, uint64_t sequence)
{
    const struct shmq_geometry *g = &p->geometry;
    struct shmq_record *record = shmq_record_at(p->index, g, sequence);
    /* Release: pairs with the consumer's acquire load of the stamp in
     * shmq_record_find; a reader that sees stamp == sequence sees the whole
     * record. */
    shmq_store_release(&record->stamp, sequence);
    if (g->spanning) {
        p->record_slots[sequence & (g->capacity - 1)] = (uint32_t)(p->plan_slot & (g->capacity - 1));
        p->next_slot = p->plan_end;
    }
}

static inline void write_record(struct shmq_producer *p, uint64_t sequence, const void *data,
                                size_t length)
{
    store_payload(begin_record(p, sequence, length), data, length);
    end_record(p, sequence);
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
    /* Listing the live consumers costs a few syscalls: do it when the
     * planned record needs half a lap past the last listing's head (twice a
     * lap of one-slot records, once a record when each takes a quarter of
     * the ring), which is as often as the registration handshake needs
     * (backpressure.c: no record at or past that head is overwritten before
     * the next listing), and only re-read the known entries otherwise. */
    int discover = (int64_t)(p->need - p->discovered_at) >= (int64_t)(p->geometry.capacity / 2);
    return shmq_backpressure_has_room(p, discover, 0);
}

/* One compare on the hot path (after plan_record): a lossy producer keeps
 * its limit half the sequence space ahead (look_for_room moves it on), so it
 * never fails. */
static inline int has_room(struct shmq_producer *p)
{
    if ((int64_t)(p->need - p->limit) < 0)
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
    if (length > p->geometry.max_message)
        return -EMSGSIZE;
    if (data == NULL && length != 0)
        return -EINVAL;
    /* One check for both reasons to refuse (fork, open loan): the hot path. */
    if (p->refusal)
        return p->refusal;
    plan_record(p, length);
    if (!has_room(p))
        return SHMQ_FULL;
    uint64_t s = p->next;
    write_record(p, s, data, length);
    p->next = s + 1;
    finish_publish(p);
    if (sequence)
        *sequence = s;
    return 0;
}

int shmq_producer_wait_room_for(struct shmq_producer *p, size_t length, int64_t timeout_ns)
{
    if (p->forked)
        return -ECHILD;
    if (length > p->geometry.max_message)
        return -EMSGSIZE;
    plan_record(p, length);
    if (has_room(p))
        return 0;
    if (timeout_ns == 0)
        return p->wake_fd >= 0 && shmq_backpressure_arm(p) == 0 ? 0 : SHMQ_FULL;
    return shmq_backpressure_wait(p, deadline_after(timeout_ns));
}

int shmq_producer_wait_room(struct shmq_producer *p, int64_t timeout_ns)
{
    return shmq_producer_wait_room_for(p, 0, timeout_ns);
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
        if (lengths[i] > p->geometry.max_message)
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
        plan_record(p, lengths[*done]);
        if (!has_room(p)) {
            rc = SHMQ_FULL;
            break;
        }
        write_record(p, p->next++, messages[*done], lengths[*done]);
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
    if (size > p->geometry.max_message)
        return -EMSGSIZE;
    if (data == NULL)
        return -EINVAL;
    if (p->forked)
        return -ECHILD;
    if (p->claimed)
        return -EINPROGRESS;
    plan_record(p, size);
    if (!has_room(p))
        return SHMQ_FULL;
    *data = (void *)begin_record(p, p->next, size);
    p->claimed = 1;
    p->refusal = -EINPROGRESS;
    p->claim_size = (uint32_t)size;
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
    /* A reader that sees the stamp sees every store the caller made into
     * the loan (end_record's release). */
    end_record(p, p->next);
    p->claimed = 0;
    p->refusal = 0;
    p->next++;
    finish_publish(p);
    return 0;
}

void shmq_producer_abort(struct shmq_producer *p)
{
    /* The record keeps its "being written" mark, which reads as "not yet";
     * what step 1 invalidated stays invalidated, and the next publish plans
     * from where this one would have gone. */
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
uint64_t shmq_producer_max_message_size(const struct shmq_producer *p)
{
    return p->geometry.max_message;
}
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
    free(p->record_slots);
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

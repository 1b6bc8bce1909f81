/*
 * The consumer side of the broadcast ring.
 *
 * PROTOCOL (the writer side, and the stamp values, are described in
 * producer.c). To read sequence s, a consumer:
 *   1. loads the stamp of index record s with acquire; stamp == s means the
 *      message is there, stamp "before" s means not yet, stamp "after" s
 *      means overrun;
 *   2. loads the record's length and first slot, checks that they describe
 *      a payload inside the data area and no longer than max_message (a
 *      record that does not, while its stamp stays s, is corrupt), and
 *      copies the payload, a word at a time, relaxed;
 *   3. issues an acquire fence and loads the stamp again;
 *   4. delivers the copy only if the stamp is still s. Otherwise the producer
 *      started rewriting some slot of the record during the copy (it marks
 *      the record first): the copy may be torn, and is thrown away and
 *      counted as lost with the rest of the overrun.
 *   "Before" and "after" are wrap-safe: (int64_t)(stamp - s) < 0 or > 0, so
 *   the 64-bit sequence may wrap.
 *
 * OVERRUN: the consumer moves halfway from the oldest intact record (tail)
 * to the producer (head, or the stamp that lapped it if that is ahead of
 * head by at most a lap), never backwards, and adds the distance it skipped
 * to its lost count. Every sequence from its start is therefore
 * either delivered once or counted once: delivered + lost == published.
 * Stamps or a head that keep the reader lapping within one call are
 * garbage, not a fast producer: after MAX_RESYNCS the poll reports the ring
 * corrupt (-EUCLEAN) instead of looping.
 *
 * END OF STREAM: a wait that finds the slot empty checks stream_state; if
 * the producer closed the stream, it checks the slot once more (the last
 * message may have landed between the two loads) and reports SHMQ_ENDED.
 * A plain poll never looks: it reports SHMQ_EMPTY, and costs no extra load.
 *
 * SLEEPING (docs/consumer-state.md): a consumer that wants to sleep reads
 * the futex word, raises the wake flag, checks the ring once more, and only
 * then sleeps on the futex word with the value it read, for at most
 * SLEEP_SLICE_NS. The producer stores the stamp, fences, and reads the flag;
 * if it is raised it clears it, bumps the futex word and wakes one sleeper,
 * which passes the wake on to the others (shmq_consumer_relay). The
 * flag store, the fence and both loads are sequentially consistent, so
 * either the consumer's last check sees the message, or the producer sees
 * the flag and its bump makes the futex wait return at once. Wake-ups are
 * never trusted: the loop re-checks the ring after every one, and the slice
 * bounds how long anyone who clears the flag wrongly can strand a sleeper.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ring_internal.h"

/* A lapped reader is normally resynchronised once. Laps that head explains
 * (the producer really is ahead) are a fast producer on a small ring: a call
 * gives up after MAX_LAPS of them with SHMQ_EMPTY, every skipped message
 * counted, so that it returns. Laps head does not explain mean the stamps
 * or head are garbage: after MAX_RESYNCS of those the poll reports the ring
 * corrupt instead of looping. */
#define MAX_RESYNCS 64
#define MAX_LAPS 4096

/* Longest sleep before re-checking the ring: with the wake page, and
 * without it (nobody will wake us then). */
#define SLEEP_SLICE_NS (100LL * 1000 * 1000)
#define UNWOKEN_SLICE_NS (1LL * 1000 * 1000)

/* How often an open that waits for its queue looks again. */
#define OPEN_RETRY_NS (10LL * 1000 * 1000)

/* Spinning checks the clock and the end of stream this often. */
#define SPIN_CHECK_EVERY 1024u

static int64_t now_ns(void);
static struct timespec timespec_of(int64_t ns);
static int64_t deadline_after(int64_t timeout_ns);

static uint64_t load_head(const struct shmq_consumer *c)
{
    /* Acquire: pairs with the release store of head in finish_publish, so the
     * slots before head are written by the time we read them. */
    return shmq_load_acquire(&c->control->head);
}

uint64_t shmq_oldest_intact(const struct shmq_consumer *c, uint64_t head, int waited_for)
{
    uint64_t capacity = c->geometry.capacity;
    /* Relaxed: a hint (producer.c stores it before overwriting); whatever
     * it says is validated by the stamps when read. */
    uint64_t tail = shmq_load_relaxed(&c->control->tail);
    uint64_t published = head - c->geometry.first_sequence;
    /* Never before the first message, never past head, never more than a
     * lap behind it; and in a full ring of one-slot records, one past the
     * record the next publish rewrites, so that it costs us nothing, unless
     * the producer waits for us (`waited_for`): then that record stays. */
    uint64_t low = published >= capacity ? head - capacity + (waited_for ? 0 : 1)
                                          : c->geometry.first_sequence;
    if ((int64_t)(tail - low) < 0 || (int64_t)(tail - head) > 0)
        tail = low;
    return tail;
}

void shmq_consumer_bind(struct shmq_consumer *c, unsigned char *base,
                        const struct shmq_geometry *geometry, enum shmq_start start,
                        struct shmq_wake_page *wake)
{
    c->geometry = *geometry;
    c->control = (struct shmq_control *)base;
    c->index = base + c->geometry.index_offset;
    c->data = base + c->geometry.data_offset;
    c->consumers.wake = wake;
    /* Before the handle is anyone's: no descriptor yet (descriptor.c). */
    c->wake_fd = c->wake_sender = -1;
    if (c->entry == NULL)
        c->entry = &c->private_entry;
    uint64_t head = load_head(c);
    uint64_t earliest = shmq_oldest_intact(c, head, 0);
    if (start == SHMQ_START_EARLIEST) {
        c->position = earliest;
    } else if (start != SHMQ_START_AT || (int64_t)(c->position - head) > 0) {
        /* SHMQ_START_AT in the future starts at head, as "latest". */
        c->position = head;
    } else if ((int64_t)(c->position - earliest) < 0) {
        /* Already overwritten: those messages are lost, and counted, when
         * the distance is one a producer could have published; a start
         * 2^62 or more behind is garbage (a corrupt pickle, say), and
         * counting it would make the position ambiguous in wrap-safe
         * arithmetic: it is clamped without a count. */
        uint64_t skipped = earliest - c->position;
        if (skipped < (UINT64_C(1) << 62))
            c->lost += skipped;
        c->position = earliest;
    }
    /* Relaxed: the entry is ours; readers of it (shmq stat, a lossless
     * producer) treat its fields as a snapshot. */
    shmq_store_relaxed(&c->entry->position, c->position);
}

static void consumer_in_child(struct shmq_fork_link *link)
{
    struct shmq_consumer *c =
        (struct shmq_consumer *)((char *)link - offsetof(struct shmq_consumer, fork_link));
    /* The entry belongs to the parent: the child neither keeps its lock
     * alive nor writes its position. It reads on from where the parent was. */
    shmq_consumers_in_child(&c->consumers);
    c->private_entry.position = c->position;
    c->entry = &c->private_entry;
    c->entry_index = -1;
    c->registered = 0;
    /* The descriptor is the parent's too: draining it here would steal its
     * wake-ups. close() is async-signal-safe. */
    if (c->wake_fd >= 0)
        close(c->wake_fd);
    if (c->wake_sender >= 0)
        close(c->wake_sender);
    c->wake_fd = -1;
    c->wake_sender = -1;
}

/* Takes a consumer entry; returns its index, or a negative errno. */
static int claim_entry(struct shmq_consumer *c)
{
    struct shmq_consumer_entry *entry;
    int index = shmq_consumers_claim(&c->consumers, &entry);
    if (index < 0)
        return index;
    c->entry = entry;
    c->entry_index = index;
    /* Relaxed: display only, as for position in bind. */
    shmq_store_relaxed(&entry->pid, (uint32_t)getpid());
    shmq_store_relaxed(&entry->lost, 0);
    /* Relaxed: a fresh page; published by the registration's seq_cst store,
     * if any; otherwise display only. */
    shmq_store_relaxed(&entry->state, 2u);
    return index;
}

int shmq_consumer_claim_late(struct shmq_consumer *c)
{
    if (c->entry_index >= 0)
        return 0;
    if (c->consumers.forked)
        return -ECHILD;
    uint64_t lost = c->lost;
    int index = claim_entry(c);
    if (index < 0)
        return index;
    /* Relaxed: a snapshot for readers, as in bind. */
    shmq_store_relaxed(&c->entry->position, c->position);
    shmq_store_relaxed(&c->entry->lost, lost);
    return 0;
}

static int open_once(struct shmq_consumer **out, const char *name,
                     const struct shmq_consumer_options *options)
{
    int rc;
    struct shmq_consumer *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->entry_index = -1;
    c->wake_fd = -1;
    c->wake_sender = -1;
    c->consumers.wake_id = -1;
    c->consumers.own_id = -1;
    c->consumers.own_index = -1;
    c->position = options->position; /* used by SHMQ_START_AT only */
    /* Tracked before anything is taken, so a fork() from another thread
     * while we open finds the handle (fork.c). */
    c->fork_link.in_child = consumer_in_child;
    shmq_fork_track(&c->fork_link);
    rc = shmq_region_open(&c->region, name, SHMQ_REGION_READ_ONLY);
    if (rc < 0)
        goto fail_free;
    struct stat st;
    rc = shmq_region_stat(c->region, &st);
    if (rc < 0)
        goto fail_close;
    c->owner_uid = st.st_uid;
    if (options->check_owner && st.st_uid != options->owner) {
        rc = -EPERM;
        goto fail_close;
    }
    unsigned char *base = shmq_region_base(c->region);
    rc = shmq_header_read(base, shmq_region_size(c->region), &c->geometry);
    if (rc < 0)
        goto fail_close;
    c->control = (struct shmq_control *)base;
    rc = shmq_producer_watch_open(&c->producer, name, st.st_uid);
    if (rc < 0)
        goto fail_close;
    /* Lossy: a consumer that cannot use the consumer state still reads,
     * unless what stopped it is a shortage of ours to report. */
    int usable = shmq_consumers_consumer_open(&c->consumers, name, &c->geometry, c->control,
                                              st.st_uid, st.st_mode);
    if (usable == -EMFILE || usable == -ENFILE || usable == -ENOMEM) {
        rc = usable;
        goto fail_state;
    }
    if (!options->no_entry) {
        int index = usable < 0 ? usable : claim_entry(c);
        if (index == -EMFILE || index == -ENFILE || index == -ENOMEM) {
            rc = index;
            goto fail_state;
        }
        /* A lossless queue's producer must know every consumer it is to
         * wait for: no entry, no registration. */
        if (index < 0 && c->geometry.lossless) {
            rc = index == -EUSERS || index == -EACCES || index == -EMFILE || index == -ENFILE ||
                 index == -ENOMEM || index == -ENOSPC ? index : -EBADMSG;
            goto fail_state;
        }
    }
    shmq_consumer_bind(c, base, &c->geometry, options->start, c->consumers.wake);
    if (options->group != NULL) {
        /* A member is waited for through its group, never registered. */
        rc = shmq_group_join(c, options->group, options->start, options->wait_check,
                             options->wait_context);
        if (rc < 0)
            goto fail_state;
    } else if (c->geometry.lossless && c->entry_index >= 0) {
        /* Register, then choose the start from a head loaded after that
         * (backpressure.c, REGISTERING). */
        shmq_backpressure_register(c, options->start);
        shmq_consumer_bind(c, base, &c->geometry, options->start, c->consumers.wake);
        shmq_backpressure_release(c);
    }
    shmq_consumer_set_spin(c, options->spin);
    *out = c;
    return 0;
fail_state:
    shmq_fork_guard(1);
    shmq_consumers_release(&c->consumers);
    shmq_fork_guard(0);
fail_close:
    shmq_fork_untrack(&c->fork_link);
    shmq_consumers_close(&c->consumers);
    shmq_producer_watch_close(&c->producer);
    shmq_region_close(c->region);
    free(c);
    return rc;
fail_free:
    shmq_fork_untrack(&c->fork_link);
    free(c);
    return rc;
}

/* Whether an open that failed this way may succeed later: the queue does
 * not exist yet, or its producer is still initialising it. */
static int worth_waiting(int rc)
{
    return rc == -ENOENT || rc == -ENODATA;
}

int shmq_consumer_open_with(struct shmq_consumer **out, const char *name,
                            const struct shmq_consumer_options *options)
{
    struct shmq_consumer_options defaults = {.start = SHMQ_START_LATEST};
    if (options == NULL)
        options = &defaults;
    if (out == NULL || (options->start != SHMQ_START_LATEST &&
                        options->start != SHMQ_START_EARLIEST && options->start != SHMQ_START_AT))
        return -EINVAL;
    if (options->group != NULL &&
        (options->no_entry || shmq_group_name_validate(options->group) < 0))
        return -EINVAL;
    int rc = shmq_queue_name_validate(name);
    if (rc < 0)
        return rc;
    int64_t deadline = deadline_after(options->wait_ns);
    for (;;) {
        rc = open_once(out, name, options);
        if (!worth_waiting(rc) || options->wait_ns == 0)
            return rc;
        int64_t now = now_ns();
        if (deadline >= 0 && now >= deadline)
            return rc;
        /* Nothing to sleep on before the queue exists: look every 10 ms. */
        int64_t until = now + OPEN_RETRY_NS;
        if (deadline >= 0 && deadline < until)
            until = deadline;
        struct timespec ts = timespec_of(until);
        int slept = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        if (options->wait_check != NULL ? options->wait_check(options->wait_context) != 0
                                        : slept == EINTR)
            return -EINTR;
    }
}

int shmq_consumer_open(struct shmq_consumer **out, const char *name, enum shmq_start start)
{
    struct shmq_consumer_options options = {.start = start};
    return shmq_consumer_open_with(out, name, &options);
}

static void load_payload(const _Atomic uint64_t *payload, unsigned char *buf, size_t length)
{
    size_t words = length / 8;
    for (size_t i = 0; i < words; i++) {
        /* Relaxed: validated afterwards by the acquire fence and stamp
         * re-check of shmq_record_unchanged; a torn word is never delivered. */
        uint64_t word = shmq_load_relaxed(&payload[i]);
        memcpy(buf + i * 8, &word, 8);
    }
    size_t tail = length % 8;
    if (tail) {
        /* Slots are whole words, so this stays inside the record's last
         * slot; only the message's bytes reach the caller's buffer.
         * Relaxed: validated afterwards, as above. */
        uint64_t word = shmq_load_relaxed(&payload[words]);
        memcpy(buf + words * 8, &word, tail);
    }
}

enum shmq_copy_result shmq_copy_at(struct shmq_consumer *c, uint64_t s,
                                   const struct shmq_destination *d, size_t *length)
{
    const _Atomic uint64_t *payload;
    uint32_t len;
    enum shmq_copy_result found = shmq_record_find(c, s, &payload, &len);
    if (found != SHMQ_COPY_OK)
        return found;
    if (d->alloc == NULL && len > d->size) {
        if (!shmq_record_unchanged(c, s))
            return SHMQ_COPY_OVERRUN;
        *length = len;
        return SHMQ_COPY_TOO_SMALL;
    }
    unsigned char *buf = d->alloc ? d->alloc(d->context, len) : d->buf;
    /* A caller's buffer may be NULL with size 0, which fits an empty message. */
    if (buf == NULL && d->alloc != NULL)
        return SHMQ_COPY_NO_MEMORY;
    load_payload(payload, buf, len);
    if (!shmq_record_unchanged(c, s))
        return SHMQ_COPY_OVERRUN;
    *length = len;
    return SHMQ_COPY_OK;
}

/* Makes our position known: to a lossless producer, which may then rewrite
 * what we have read; otherwise only to whoever lists consumers. */
static inline void publish_position(struct shmq_consumer *c)
{
    if (c->registered)
        shmq_backpressure_release(c);
    else
        /* Relaxed: a snapshot for display (see bind). */
        shmq_store_relaxed(&c->entry->position, c->position);
}

/* Moves a lapped reader forward; returns 1 when head (or a stamp at most a
 * lap ahead of it) explains the lap, 0 when it does not (the reader creeps
 * one message on: garbage, which the caller's budget bounds), or -1 without
 * moving it when the jump would take the reader 2^62 or more past `origin`,
 * where this call started: no producer publishes that many messages (146
 * years at a billion a second) during one lap of a reader, so head is
 * garbage, and following it would make the position ambiguous in wrap-safe
 * arithmetic. */
uint64_t shmq_overrun_target(const struct shmq_consumer *c, uint64_t at, uint64_t stamp,
                             int *explained)
{
    /* The producer is at least as far as head, and past `at` when the stamp
     * that lapped us is at most a lap ahead of it (a newer stamp, or a mark,
     * producer.c): head can lag (a producer that died before storing head,
     * or whose head store we have not seen yet). A stamp further ahead is
     * garbage, and is not followed: the resync budget then runs out and the
     * poll reports SHMQ_CORRUPT. */
    uint64_t front = load_head(c);
    int64_t ahead = (int64_t)(stamp - at);
    if ((int64_t)(front - at) <= 0 && ahead > 0 && ahead <= (int64_t)c->geometry.capacity)
        front = at + 1;
    *explained = (int64_t)(front - at) > 0;
    /* Halfway from the oldest intact record to the producer: as far from
     * the next overrun as from the newest message. A reader a lossless
     * producer waits for (registered, or a group's) is lapped only in the
     * registration window (backpressure.c), by records before the head it
     * registered at, and never again: it loses only those. */
    int waited_for = c->geometry.lossless && (c->registered || c->group != NULL);
    uint64_t oldest = shmq_oldest_intact(c, front, waited_for);
    uint64_t target = waited_for ? oldest : oldest + (front - oldest) / 2;
    /* A stale head could point at or before us; never move backwards. */
    if ((int64_t)(target - at) <= 0)
        target = at + 1;
    return target;
}

static int resync_after_overrun(struct shmq_consumer *c, uint64_t origin)
{
    /* Relaxed: only evidence of how far the producer got; nothing is read
     * on the strength of it. */
    uint64_t stamp = shmq_load_relaxed(&shmq_record_at(c->index, &c->geometry, c->position)->stamp);
    int explained;
    uint64_t target = shmq_overrun_target(c, c->position, stamp, &explained);
    if (target - origin >= (UINT64_C(1) << 62))
        return -1;
    c->lost += target - c->position;
    c->position = target;
    /* Relaxed: our own entry, a snapshot for readers (see bind). */
    shmq_store_relaxed(&c->entry->lost, c->lost);
    publish_position(c);
    return explained;
}

/* Whether the stream has ended for this consumer: the producer marked the
 * end, and (a group member) no member holds a claim it has not returned,
 * which could yet be delivered (again). */
static int group_stream_ended(const struct shmq_consumer *c);

static int stream_ended(const struct shmq_consumer *c)
{
    /* Acquire: pairs with the release store of SHMQ_STREAM_ENDED in
     * shmq_producer_close, made after its last publish: a reader that sees
     * the mark sees every stamp stored before it. */
    return (shmq_load_acquire(&c->control->stream_state) & SHMQ_STREAM_ENDED) != 0;
}

static int poll_into(struct shmq_consumer *c, const struct shmq_destination *d, size_t *length)
{
    size_t ignored;
    if (length == NULL)
        length = &ignored;
    if (c->peeked)
        return -EINPROGRESS;
    if (c->pending_error) {
        int rc = c->pending_error;
        c->pending_error = 0;
        return rc;
    }
    if (c->group != NULL)
        return shmq_group_poll(c, d, length);
    uint64_t origin = c->position;
    int garbage = 0, laps = 0;
    while (garbage < MAX_RESYNCS) {
        switch (shmq_copy_at(c, c->position, d, length)) {
        case SHMQ_COPY_OK:
            c->position++;
            publish_position(c);
            return 0;
        case SHMQ_COPY_EMPTY:
            if (c->wake_fd >= 0)
                shmq_consumer_quiet(c);
            return SHMQ_EMPTY;
        case SHMQ_COPY_TOO_SMALL:
            return -EMSGSIZE;
        case SHMQ_COPY_NO_MEMORY:
            return -ENOMEM;
        case SHMQ_COPY_CORRUPT:
            c->position++;
            c->lost++;
            return -EUCLEAN;
        case SHMQ_COPY_OVERRUN: {
            int explained = resync_after_overrun(c, origin);
            if (explained < 0)
                return -EUCLEAN;
            garbage += !explained;
            if (explained && ++laps >= MAX_LAPS) {
                if (c->wake_fd >= 0)
                    shmq_consumer_quiet(c);
                return SHMQ_EMPTY;
            }
            break;
        }
        }
    }
    return -EUCLEAN;
}

int shmq_consumer_poll(struct shmq_consumer *c, void *buf, size_t buf_size, size_t *length)
{
    if (buf == NULL && buf_size != 0)
        return -EINVAL;
    struct shmq_destination d = {.buf = buf, .size = buf_size};
    return poll_into(c, &d, length);
}

int shmq_consumer_poll_alloc(struct shmq_consumer *c, void *(*alloc)(void *context, size_t length),
                             void *context, size_t *length)
{
    if (alloc == NULL)
        return -EINVAL;
    struct shmq_destination d = {.alloc = alloc, .context = context};
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
    shmq_consumer_batch_begin_within(c, max_messages, buf_size);
    while (n < max_messages) {
        /* No arithmetic on a NULL buffer (size 0: only empty messages fit). */
        int rc = shmq_consumer_poll(c, out ? out + used : NULL, buf_size - used, &lengths[n]);
        if (rc == SHMQ_EMPTY || (rc == -EMSGSIZE && n > 0))
            break;
        if (rc < 0) {
            /* What was copied is returned now; the error, whose loss is
             * already counted, is reported by the next call. */
            if (n > 0)
                c->pending_error = rc;
            shmq_consumer_batch_end(c);
            return n > 0 ? (int)n : rc;
        }
        used += lengths[n];
        n++;
    }
    shmq_consumer_batch_end(c);
    return (int)n;
}

/* Whether a poll now has something to report: a message, a later lap (an
 * overrun to count) or the end of the stream. */
static int something_to_report(struct shmq_consumer *c, memory_order order)
{
    /* The order is the caller's: relaxed for hints, seq_cst in the sleep
     * handshake; each call site says why. */
    if (c->group != NULL)
        return shmq_group_ready(c, order);
    struct shmq_record *slot = shmq_record_at(c->index, &c->geometry, c->position);
    return (int64_t)(shmq_load_ordered(&slot->stamp, order) - c->position) >= 0;
}

int shmq_consumer_ready(struct shmq_consumer *c)
{
    /* Seq_cst: callers use it as the re-check after raising a wake flag
     * (descriptor.c, wait_any.c), the consumer half of the handshake with
     * the fence in finish_publish. */
    return something_to_report(c, memory_order_seq_cst) || group_stream_ended(c);
}

static int64_t now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

static struct timespec timespec_of(int64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000), .tv_nsec = (long)(ns % 1000000000)};
    return ts;
}

/* The producer wakes one sleeper per bump of futex_word; whoever wakes to
 * find the word moved past the value it slept on passes the wake on to
 * everyone still asleep, once per bump: the consumer that moves relay_word
 * to the new value does it. A relay killed before it relays strands the
 * others for at most one slice. A consumer without the wake page cannot
 * claim the relay and always passes the wake on (it may be the one the
 * producer woke). */
void shmq_consumer_relay(struct shmq_consumer *c, uint32_t slept_on)
{
    /* Seq_cst: as the load of the word before sleeping. */
    uint32_t now = shmq_load_seq_cst(&c->control->futex_word);
    if (now == slept_on)
        return;
    struct shmq_wake_page *wake = c->consumers.wake;
    if (wake != NULL) {
        /* Relaxed: only which consumer relays depends on it; the wake
         * itself is the syscall's. */
        uint32_t relayed = shmq_load_relaxed(&wake->relay_word);
        if (relayed == now || !shmq_cas_relaxed(&wake->relay_word, &relayed, now))
            return;
    }
    shmq_futex_wake_all(&c->control->futex_word);
}

/* One round of the sleep protocol, at most one slice long; returns 0 (woken,
 * or the slice ended: re-check), -ETIMEDOUT (the deadline passed), -EINTR or
 * SHMQ_INTERRUPTED (see WAITING in shmq.h). deadline_ns < 0: none. */
static int sleep_until_published(struct shmq_consumer *c, int64_t deadline_ns, unsigned flags)
{
    /* A consumer that opened while no producer had made the wake page (or
     * could not attach it) tries again once a producer names a new one.
     * Relaxed: only a hint to try; the attach loads it with acquire. */
    if (c->consumers.wake == NULL && c->consumers.entry_count != 0 &&
        shmq_load_relaxed(&c->control->wake_shm) != c->consumers.wake_tried)
        shmq_consumers_attach_wake(&c->consumers, c->control);
    struct shmq_wake_page *wake = c->consumers.wake;
    int64_t slice_end = now_ns() + (wake ? SLEEP_SLICE_NS : UNWOKEN_SLICE_NS);
    int last_slice = deadline_ns >= 0 && deadline_ns <= slice_end;
    if (last_slice)
        slice_end = deadline_ns;
    /* Seq_cst: pairs with the producer's seq_cst increment of futex_word; if
     * we read the bumped value we also see the stamps stored before it. Read
     * before raising the flag, so a wake that answers the flag changes the
     * word from the value we sleep on. */
    uint32_t word = shmq_load_seq_cst(&c->control->futex_word);
    if (wake)
        /* Seq_cst: the consumer half of the Dekker handshake with the fence
         * in finish_publish (producer.c). */
        shmq_fetch_or_seq_cst(&wake->wake_flag, SHMQ_WAKE_FUTEX);
    /* Seq_cst: ordered after the flag store, as the handshake needs. */
    if (something_to_report(c, memory_order_seq_cst) ||
        (!(flags & SHMQ_WAIT_PAST_END) && group_stream_ended(c)))
        return 0;
    struct timespec until = timespec_of(slice_end);
    int rc = shmq_waiter_sleep(&c->waiter, &c->control->futex_word, word, &until);
    shmq_consumer_relay(c, word);
    if (rc == -ETIMEDOUT && last_slice)
        return rc;
    if (rc == -ETIMEDOUT || rc == -EINTR)
        return shmq_waiter_between(&c->waiter, rc == -EINTR);
    return rc;
}

/* Whether the stream ended with nothing left for us (see END OF STREAM). */
static int ended_and_read(struct shmq_consumer *c)
{
    /* Acquire (in stream_ended) then seq_cst: the re-check of the slot is
     * ordered after the mark, so it sees the last message published before
     * the mark. */
    return group_stream_ended(c) && !something_to_report(c, memory_order_seq_cst);
}

/* Waits until a poll has something to report; returns 0, SHMQ_ENDED (unless
 * SHMQ_WAIT_PAST_END), -ETIMEDOUT, -EINTR or SHMQ_INTERRUPTED. deadline_ns
 * < 0: forever. */
static int wait_until(struct shmq_consumer *c, int64_t deadline_ns, unsigned flags)
{
    int stop_at_end = !(flags & SHMQ_WAIT_PAST_END);
    for (;;) {
        /* Relaxed: a hint; the caller's poll re-reads the stamp with acquire. */
        if (c->group != NULL && c->consumers.forked)
            return -ECHILD; /* a member's claims are its parent's */
        if (something_to_report(c, memory_order_relaxed))
            return 0;
        if (c->group != NULL) {
            /* Nothing new: a dead member's claim may be what there is. */
            shmq_group_rescue(c);
            if (something_to_report(c, memory_order_relaxed))
                return 0;
        }
        if (stop_at_end && ended_and_read(c)) {
            if (c->group == NULL)
                return SHMQ_ENDED;
            /* The end, unless a dead member's claim is left: look now. */
            c->group->next_rescue_ns = 0;
            shmq_group_rescue(c);
            if (!something_to_report(c, memory_order_relaxed))
                return SHMQ_ENDED;
            return 0;
        }
        int interrupted = shmq_waiter_take_interrupt(&c->waiter);
        if (interrupted < 0)
            return interrupted;
        if (deadline_ns >= 0 && now_ns() >= deadline_ns)
            return -ETIMEDOUT;
        for (uint32_t i = 1; i <= c->spin; i++) {
            /* Relaxed: as above. */
            if (something_to_report(c, memory_order_relaxed))
                return 0;
            if (i % SPIN_CHECK_EVERY == 0) {
                if (stop_at_end && group_stream_ended(c))
                    break;
                /* Relaxed: a hint; the loop's top takes the interrupt. */
                if (shmq_load_relaxed(&c->waiter.interrupt_word) != c->waiter.answered)
                    break;
                if (deadline_ns >= 0 && now_ns() >= deadline_ns)
                    return -ETIMEDOUT;
            }
            shmq_cpu_relax();
        }
        int slept = sleep_until_published(c, deadline_ns, flags);
        if (slept < 0)
            return slept;
    }
}

static int64_t deadline_after(int64_t timeout_ns)
{
    if (timeout_ns < 0)
        return -1;
    int64_t now = now_ns();
    return timeout_ns > INT64_MAX - now ? -1 : now + timeout_ns;
}

int shmq_consumer_wait_flags(struct shmq_consumer *c, int64_t timeout_ns, unsigned flags)
{
    return wait_until(c, deadline_after(timeout_ns), flags);
}

int shmq_consumer_wait(struct shmq_consumer *c, int64_t timeout_ns)
{
    return wait_until(c, deadline_after(timeout_ns), 0);
}

int shmq_consumer_poll_wait(struct shmq_consumer *c, void *buf, size_t buf_size, size_t *length,
                            int64_t timeout_ns)
{
    int rc = shmq_consumer_poll(c, buf, buf_size, length);
    if (rc != SHMQ_EMPTY || timeout_ns == 0)
        return rc;
    int64_t deadline = deadline_after(timeout_ns);
    for (;;) {
        int waited = wait_until(c, deadline, 0);
        rc = shmq_consumer_poll(c, buf, buf_size, length);
        if (rc != SHMQ_EMPTY)
            return rc;
        if (waited < 0)
            return waited;
    }
}

/*
 * IN-PLACE READS. peek does step 1 of the reader's protocol (the acquire load
 * of the stamp) and hands out the payload in the read-only mapping without
 * copying; the caller's loads are step 2; release does steps 3 and 4 (the
 * acquire fence and the re-check) and only then moves past the message. For
 * a registered consumer of a lossless queue the producer cannot rewrite the
 * slot meanwhile, since our position has not moved. For anyone else it can:
 * release then reports SHMQ_OVERWRITTEN and counts the message lost, and
 * whatever the caller computed from it must be discarded (a seqlock's
 * validation step, as in Agrona's copy-free receive).
 */
int shmq_consumer_peek(struct shmq_consumer *c, const void **data, size_t *length)
{
    if (data == NULL || length == NULL)
        return -EINVAL;
    if (c->peeked)
        return -EINPROGRESS;
    if (c->group != NULL)
        return shmq_group_peek(c, data, length);
    uint64_t origin = c->position;
    int garbage = 0, laps = 0;
    while (garbage < MAX_RESYNCS) {
        const _Atomic uint64_t *payload;
        uint32_t len;
        enum shmq_copy_result found = shmq_record_find(c, c->position, &payload, &len);
        if (found == SHMQ_COPY_EMPTY) {
            if (c->wake_fd >= 0)
                shmq_consumer_quiet(c);
            return SHMQ_EMPTY;
        }
        if (found == SHMQ_COPY_OVERRUN) {
            int explained = resync_after_overrun(c, origin);
            if (explained < 0)
                return SHMQ_CORRUPT;
            garbage += !explained;
            if (explained && ++laps >= MAX_LAPS)
                return SHMQ_EMPTY;
            continue;
        }
        if (found == SHMQ_COPY_CORRUPT) {
            c->position++;
            c->lost++;
            return SHMQ_CORRUPT;
        }
        *data = (const void *)payload;
        *length = len;
        c->peeked = 1;
        return 0;
    }
    return SHMQ_CORRUPT;
}

int shmq_consumer_release(struct shmq_consumer *c)
{
    if (!c->peeked)
        return -EINVAL;
    if (c->group != NULL)
        return shmq_group_release(c);
    c->peeked = 0;
    int intact = shmq_record_unchanged(c, c->position);
    c->position++;
    if (!intact) {
        c->lost++;
        /* Relaxed: our own entry, a snapshot for readers (see bind). */
        shmq_store_relaxed(&c->entry->lost, c->lost);
    }
    publish_position(c);
    return intact ? 0 : SHMQ_OVERWRITTEN;
}

void shmq_consumer_interrupt(struct shmq_consumer *c)
{
    shmq_waiter_interrupt(&c->waiter, &c->control->futex_word);
}

void shmq_consumer_set_wait_check(struct shmq_consumer *c, int (*check)(void *context),
                                  void *context)
{
    c->waiter.check = check;
    c->waiter.context = context;
}

void shmq_consumer_set_spin(struct shmq_consumer *c, uint32_t iterations)
{
    c->spin = iterations > SHMQ_SPIN_MAX ? SHMQ_SPIN_MAX : iterations;
}

uint64_t shmq_consumer_position(const struct shmq_consumer *c)
{
    return c->group != NULL ? shmq_group_next(c) : c->position;
}

uint64_t shmq_consumer_lost(const struct shmq_consumer *c)
{
    return c->group != NULL ? shmq_group_lost(c) : c->lost;
}

const char *shmq_consumer_group(const struct shmq_consumer *c)
{
    return c->group != NULL ? c->group->name : NULL;
}

void shmq_consumer_batch_begin(struct shmq_consumer *c, size_t max_messages)
{
    shmq_consumer_batch_begin_within(c, max_messages, 0);
}

void shmq_consumer_batch_begin_within(struct shmq_consumer *c, size_t max_messages,
                                      size_t max_bytes)
{
    if (c->group != NULL) {
        c->group->in_batch = 1;
        c->group->batch = max_messages;
        c->group->batch_bytes = max_bytes;
    }
}

void shmq_consumer_batch_end(struct shmq_consumer *c)
{
    if (c->group != NULL) {
        c->group->in_batch = 0;
        shmq_group_commit(c);
    }
}
uint32_t shmq_consumer_slot_size(const struct shmq_consumer *c) { return c->geometry.slot_size; }
uint64_t shmq_consumer_max_message_size(const struct shmq_consumer *c)
{
    return c->geometry.max_message;
}
uint32_t shmq_consumer_capacity(const struct shmq_consumer *c) { return c->geometry.capacity; }
uid_t shmq_consumer_owner_uid(const struct shmq_consumer *c) { return c->owner_uid; }
int shmq_consumer_lossless(const struct shmq_consumer *c) { return c->geometry.lossless; }
int shmq_consumer_registered(const struct shmq_consumer *c) { return c->registered; }

uint64_t shmq_consumer_backlog(const struct shmq_consumer *c)
{
    uint64_t behind = load_head(c) - shmq_consumer_position(c);
    return (int64_t)behind < 0 ? 0 : behind;
}
int shmq_consumer_entry(const struct shmq_consumer *c) { return c->entry_index; }

int shmq_stream_ended(const struct shmq_consumer *c)
{
    return stream_ended(c);
}

static int group_stream_ended(const struct shmq_consumer *c)
{
    return stream_ended(c) && (c->group == NULL || !shmq_group_claims_outstanding(c));
}

int shmq_consumer_ended(const struct shmq_consumer *c)
{
    return group_stream_ended(c);
}

int shmq_consumer_producer_alive(const struct shmq_consumer *c)
{
    if (c->region == NULL)
        return -EINVAL;
    /* With no lock file seen yet, the watch looks for one by name: not once
     * the ring we read was unlinked, when the name may be another queue's. */
    if (c->producer.lock == NULL && !c->producer.listed && shmq_consumer_unlinked(c) == 1)
        return 0;
    /* The watch caches what it finds: a handle is used by one thread at a
     * time (shmq.h, THREADS AND PROCESSES). */
    return shmq_producer_watch_alive((struct shmq_producer_watch *)&c->producer);
}

int shmq_consumer_unlinked(const struct shmq_consumer *c)
{
    if (c->region == NULL)
        return -EINVAL;
    struct stat st;
    int rc = shmq_region_stat(c->region, &st);
    return rc < 0 ? rc : st.st_nlink == 0;
}

void shmq_consumer_close(struct shmq_consumer *c)
{
    if (c == NULL)
        return;
    if (c->registered)
        shmq_backpressure_unregister(c);
    /* As in shmq_producer_close: locks go first, with fork() held off, then
     * the handle leaves the fork list, then it is freed. */
    shmq_fork_guard(1);
    shmq_consumers_release(&c->consumers);
    shmq_fork_guard(0);
    shmq_fork_untrack(&c->fork_link);
    if (c->wake_fd >= 0)
        close(c->wake_fd);
    if (c->wake_sender >= 0)
        close(c->wake_sender);
    shmq_group_leave(c);
    shmq_consumers_close(&c->consumers);
    shmq_producer_watch_close(&c->producer);
    shmq_region_close(c->region);
    free(c);
}

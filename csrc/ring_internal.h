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
    uint64_t index_offset;
    uint64_t data_offset;
    uint64_t max_message;
    /* Derived: whether records span slots (SHMQ_FLAG_SPANNING), the bytes
     * between index records, and the payload bytes of a slot. */
    int spanning;
    uint32_t record_stride;
    uint32_t slot_payload;
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
/* Holds off fork() (enter 1) until released (enter 0): around the taking of
 * a lock whose description the child must be able to find and drop. */
void shmq_fork_guard(int enter);

/* What ends a handle's waits early (wait.c): shmq_*_interrupt bumps
 * interrupt_word; a wait that sees it moved past `answered` returns
 * SHMQ_INTERRUPTED and catches up. `check` runs between slices. */
struct shmq_waiter {
    _Atomic uint32_t interrupt_word;
    uint32_t answered;
    int (*check)(void *context);
    void *context;
};

/* Whether a queue's producer lives (producer_lock.c). */
struct shmq_producer_watch {
    struct shmq_region *lock; /* the file, where we may open it */
    dev_t dev;                /* otherwise where /proc/locks lists it */
    ino_t ino;
    int listed;
    char name[SHMQ_NAME_MAX + 1]; /* to look again when there was no file */
    uid_t owner;
};

/* A live consumer's entry as the producer sees it: mapped read-only. */
struct shmq_entry_view {
    int shm_id; /* -1: none */
    int unclear; /* the lock file names more than one page for it */
    struct shmq_consumer_entry *entry;
    /* Descriptor wake-ups (descriptor.c): the entry's `armed` value last
     * answered, and for which page; the socket they go out of, connected
     * to the consumer's (-1: none yet), and the nonce it is connected for. */
    uint32_t woken_armed;
    int woken_id;
    int sender;
    uint64_t sender_nonce;
};

/* A group number as the producer sees it: the pages its live members tell,
 * mapped read-only. Normally one; locks planted by others may tell more,
 * and a reader is held back by the lowest of them. */
#define SHMQ_GROUP_PAGES 4
/* Most candidate ids anyone collects for one group number (a joiner). */
#define SHMQ_GROUP_IDS_MAX 64
struct shmq_group_view {
    int count;
    int unclear; /* more pages told than SHMQ_GROUP_PAGES: waited for as a lap behind */
    int shm_id[SHMQ_GROUP_PAGES];
    struct shmq_group_page *page[SHMQ_GROUP_PAGES];
};

/* A consumer's membership of a group (group.c). */
struct shmq_group_membership {
    struct shmq_group_page *page; /* mapped read-write */
    int shm_id;
    uint32_t index;  /* the group's number in NAME.consumers */
    uint32_t member; /* our member slot */
    uint32_t token;  /* what our claims carry in the slot */
    /* Claimed and not yet returned: [from, to); `next` is the first not yet
     * delivered by the current call (or batch). */
    int claimed;
    uint64_t claim_from;
    uint64_t claim_to;
    uint64_t next;
    uint64_t unreturned_lost; /* claimed messages found gone, counted at commit */
    size_t batch;           /* shmq_consumer_batch_begin: claim up to this many */
    size_t batch_bytes;     /* ... that fit in this many bytes (0: no limit) */
    int in_batch;
    int64_t next_rescue_ns; /* when to look for dead members' claims again */
    uint32_t claims_since_rescue;
    uint64_t received;
    char name[SHMQ_GROUP_NAME_MAX + 1];
};

/* The consumer state as one side sees it (consumer_state.c). */
struct shmq_consumer_state {
    struct shmq_region *locks;    /* NAME.consumers, never mapped; NULL: none */
    struct shmq_wake_page *wake;  /* NULL: none (sleepers use short slices) */
    int wake_id;
    int wake_tried;               /* consumer: the wake id last tried */
    uint32_t entry_count;
    uint32_t page_size;
    uint64_t instance;
    uid_t ring_owner;
    mode_t ring_mode;             /* consumer: the ring's permission bits */
    struct shmq_entry_view *views; /* producer: entry_count of them */
    struct shmq_group_view groups[SHMQ_GROUPS_MAX]; /* producer */
    int group_holds_dead; /* producer: the last probe found a dead member's claim holding us */
    struct shmq_consumer_entry *own; /* consumer: its entry, or NULL */
    int own_id;
    int own_index; /* consumer: its entry, or -1 */
    int forked; /* a child's copy after fork(): the entry is the parent's */
};

struct shmq_producer {
    struct shmq_region *region; /* NULL when bound to a caller's mapping */
    struct shmq_control *control;
    unsigned char *index; /* the records */
    unsigned char *data;  /* the slots */
    struct shmq_consumer_state consumers;
    struct shmq_geometry geometry;
    uint64_t next; /* private copy of head: only this producer writes head */
    /* RECORDS (producer.c), used where records span slots (geometry
     * spanning; elsewhere a record's slot is its sequence's): the slot
     * position where the next record goes (a count of slots used, padding
     * included: only its value modulo capacity is ever stored), and tail's
     * private copy. */
    uint64_t next_slot;
    uint64_t oldest;
    /* The first slot of each record, by index position: the producer's own
     * copy, so that planning never loads a line that consumers read.
     * Spanning only (NULL otherwise). */
    uint32_t *record_slots;
    /* The record being published (spanning): its first slot position (after
     * padding), its end, and the first record it leaves intact. */
    uint64_t plan_slot;
    uint64_t plan_end;
    uint64_t plan_survivor;
    uint64_t wakeups;
    uint64_t descriptor_wakeups; /* datagrams sent to descriptor waiters */
    int wake_sender;             /* socket the wake-ups go out of; -1: none yet */
    int wake_fd;                 /* shmq_producer_fileno; -1: none yet */
    uint64_t wake_key;           /* the only payload wake_fd accepts */
    int64_t listing_allowed_at;  /* a full listing for joiners waits until then */
    int64_t joiners_allowed_at;  /* any look at joiners waits until then */
    /* Lossless: sequences below `limit` have room (every registered consumer
     * has read what they overwrite); recomputed when publishing reaches it. */
    uint64_t limit;
    /* What the record being published needs below the limit: the first
     * record it leaves intact, plus capacity - 1 (for a one-slot record in
     * a full ring, exactly its sequence). */
    uint64_t need;
    uint64_t discovered_at; /* p->next when the live entries were last listed */
    int64_t next_probe_ns; /* when to ask the kernel about laggards again */
    struct shmq_region *lock; /* NAME.producer, locked while open (producer_lock.c) */
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
    unsigned char *index; /* the records, mapped read-only */
    unsigned char *data;  /* the slots, mapped read-only */
    struct shmq_consumer_state consumers;
    struct shmq_consumer_entry *entry; /* ours, or &private_entry */
    struct shmq_consumer_entry private_entry;
    int entry_index; /* -1: none */
    int registered; /* lossless, and the producer waits for us */
    int peeked; /* the message at position is lent out (shmq_consumer_peek) */
    int pending_error; /* what ended the last poll_many batch early, for the next poll */
    struct shmq_geometry geometry;
    uint64_t position;
    uint64_t lost;
    uint32_t spin;
    uid_t owner_uid;
    struct shmq_fork_link fork_link;
    struct shmq_waiter waiter;
    struct shmq_producer_watch producer; /* whether the producer lives */
    /* The descriptor (shmq_consumer_fileno; docs/waiting.md). */
    int wake_fd;             /* -1: none yet */
    int wake_token;          /* we queued a token to ourselves: readable */
    uint32_t wake_armed_count;
    uint64_t wake_key;       /* the only payload our socket accepts */
    int wake_sender; /* to wake a producer waiting on its descriptor; -1: none yet */
    struct shmq_group_membership *group; /* NULL: a plain consumer */
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

/* consumer.c: copying one message out of its slot. */
enum shmq_copy_result {
    SHMQ_COPY_OK,
    SHMQ_COPY_EMPTY,
    SHMQ_COPY_OVERRUN,
    SHMQ_COPY_TOO_SMALL,
    SHMQ_COPY_CORRUPT,
    SHMQ_COPY_NO_MEMORY
};
/* Where a message goes: a fixed buffer, or memory from the caller's
 * allocator, asked for once the length is known. */
struct shmq_destination {
    unsigned char *buf;
    size_t size;
    void *(*alloc)(void *context, size_t length);
    void *context;
};
enum shmq_copy_result shmq_copy_at(struct shmq_consumer *consumer, uint64_t sequence,
                                   const struct shmq_destination *destination, size_t *length);
/* The oldest record a reader may find intact, from tail, clamped into the
 * lap before head (consumer.c); waited_for: a reader a lossless producer
 * waits for. */
uint64_t shmq_oldest_intact(const struct shmq_consumer *consumer, uint64_t head, int waited_for);
/* Where a reader lapped at `at` (the stamp found there: `stamp`) resumes;
 * *explained says whether the producer is really past `at`. */
uint64_t shmq_overrun_target(const struct shmq_consumer *consumer, uint64_t at, uint64_t stamp,
                             int *explained);

/* header.c */
int shmq_geometry_plan(struct shmq_geometry *geometry, const struct shmq_config *config);
void shmq_header_init(void *base, const struct shmq_geometry *geometry);
void shmq_header_publish(void *base);
int shmq_header_read(const void *base, size_t mapped_size, struct shmq_geometry *geometry);

/* consumer_state.c */
int shmq_consumers_producer_open(struct shmq_consumer_state *state, const char *name,
                                 const struct shmq_geometry *geometry,
                                 struct shmq_control *control, mode_t ring_mode);
int shmq_consumers_consumer_open(struct shmq_consumer_state *state, const char *name,
                                 const struct shmq_geometry *geometry,
                                 const struct shmq_control *control, uid_t ring_owner,
                                 mode_t ring_mode);
int shmq_consumers_attach_wake(struct shmq_consumer_state *state,
                               const struct shmq_control *control);
int shmq_consumers_claim(struct shmq_consumer_state *state, struct shmq_consumer_entry **entry);
int shmq_consumers_entry_live(const struct shmq_consumer_state *state, uint32_t index);
/* Producer: map the entries of live consumers, drop those of dead ones. */
void shmq_consumers_discover(struct shmq_consumer_state *state);
/* The same for entry `index` alone. */
void shmq_consumers_discover_one(struct shmq_consumer_state *state, uint32_t index);
void shmq_consumers_forget(struct shmq_consumer_state *state, uint32_t index);
int shmq_consumers_snapshot(const struct shmq_consumer_state *state, uint32_t index,
                            struct shmq_consumer_info *info, uint64_t head,
                            const struct shmq_geometry *geometry);
void shmq_consumers_in_child(struct shmq_consumer_state *state);
/* Gives up every lock (its entry) but keeps the mappings. */
void shmq_consumers_release(struct shmq_consumer_state *state);
void shmq_consumers_close(struct shmq_consumer_state *state);

/* Producer, with the groups: maps the pages of live groups, drops those of
 * groups with no member left. */
void shmq_consumers_discover_groups(struct shmq_consumer_state *state);
int shmq_consumers_group_live(const struct shmq_consumer_state *state, uint32_t group);
void shmq_consumers_forget_group(struct shmq_consumer_state *state, uint32_t group);
/* The ids that group g's live members tell (each a candidate for its page:
 * locks planted by others tell ids too, so the pages are validated where
 * they are used): how many, at most max, or -EBADMSG when there are more. */
int shmq_consumers_group_ids(const struct shmq_consumer_state *state, uint32_t group, int *ids,
                             int max);
/* Maps a group page if it is sound (size, owner, nobody else may write). */
struct shmq_group_page *shmq_consumers_group_attach(const struct shmq_consumer_state *state,
                                                    int id, int read_only, uid_t *creator);
/* Fills info[0..max) with the groups of group number g (one per sound page
 * its members tell) and returns how many. */
int shmq_consumers_group_snapshot(const struct shmq_consumer_state *state, uint32_t group,
                                  struct shmq_group_info *info, size_t max, uint64_t head,
                                  const struct shmq_geometry *geometry);

/* group.c */
/* A group name: a queue name of at most SHMQ_GROUP_NAME_MAX characters. */
int shmq_group_name_validate(const char *name);
/* check (may be NULL) runs while the join waits for another's join; non-zero
 * ends it with -EINTR. */
int shmq_group_join(struct shmq_consumer *consumer, const char *group, enum shmq_start start,
                    int (*check)(void *context), void *context);
void shmq_group_leave(struct shmq_consumer *consumer);
int shmq_group_poll(struct shmq_consumer *consumer, const struct shmq_destination *destination,
                    size_t *length);
int shmq_group_peek(struct shmq_consumer *consumer, const void **data, size_t *length);
int shmq_group_release(struct shmq_consumer *consumer);
/* Looks for claims of dead members (see RESCUE in group.c), at most every
 * few milliseconds. */
void shmq_group_rescue(struct shmq_consumer *consumer);
/* Whether a poll may find something: the member's claim, or the cursor's
 * slot published (another member may take it first). */
int shmq_group_ready(struct shmq_consumer *consumer, memory_order order);
/* Whether another member holds a claim it has not returned (the end of the
 * stream waits for it: it may yet be delivered again). */
int shmq_group_claims_outstanding(const struct shmq_consumer *consumer);
/* consumer.c: whether the producer marked the end (whatever the group). */
int shmq_stream_ended(const struct shmq_consumer *consumer);
/* The next sequence this member would deliver (its claim, or the cursor). */
uint64_t shmq_group_next(const struct shmq_consumer *consumer);
uint64_t shmq_group_lost(const struct shmq_consumer *consumer);
/* Gives back what the current call delivered (see shmq_consumer_batch_end). */
void shmq_group_commit(struct shmq_consumer *consumer);
/* Producer: the lowest sequence group view `v` may still read, clamped to
 * [head - capacity, head]; sets *dead_claim when a claim holding that low
 * belongs to a member whose lock is gone (probe only). */
uint64_t shmq_group_low(const struct shmq_consumer_state *state, uint32_t group,
                        const struct shmq_group_page *page, uint64_t head, uint64_t capacity,
                        int probe, int *dead_claim);

/* sysv.c */
int shmq_sysv_page_create(key_t key, mode_t mode, size_t size);
struct shmid_ds;
int shmq_sysv_page_stat(int id, struct shmid_ds *ds);
int shmq_sysv_page_give(int id, uid_t owner);
void *shmq_sysv_page_attach(int id, int read_only);
void shmq_sysv_page_detach(void *base);
void shmq_sysv_page_remove(int id);

/* producer_lock.c: NAME.producer */
int shmq_producer_lock_take(struct shmq_region **lock, const char *name);
int shmq_producer_watch_open(struct shmq_producer_watch *watch, const char *name, uid_t owner);
int shmq_producer_watch_alive(struct shmq_producer_watch *watch);
void shmq_producer_watch_close(struct shmq_producer_watch *watch);
int shmq_producer_lock_held(const char *name, uid_t owner);
int shmq_producer_lock_unlink(const char *name);

/* A queue name: a region name that does not end in SHMQ_CONSUMERS_SUFFIX. */
int shmq_queue_name_validate(const char *name);

/* backpressure.c: the lossless mode */
int shmq_backpressure_has_room(struct shmq_producer *producer, int discover, int probe_liveness);
int shmq_backpressure_wait(struct shmq_producer *producer, int64_t deadline_ns);
/* No room now: ask the consumers to wake the producer's descriptor. 0 if
 * there is room after all. */
int shmq_backpressure_arm(struct shmq_producer *producer);
void shmq_backpressure_register(struct shmq_consumer *consumer, enum shmq_start start);
void shmq_backpressure_release(struct shmq_consumer *consumer);
void shmq_backpressure_unregister(struct shmq_consumer *consumer);
int64_t shmq_now_ns(void);

/* wake_socket.c */
uint64_t shmq_wake_nonce(void);
/* entry_id -1: the producer's socket. It accepts only datagrams whose
 * payload is the 8 bytes of key. */
int shmq_wake_socket_open(uint64_t instance, int entry_id, uint64_t nonce, uint64_t key);
int shmq_wake_sender_open(void);
int shmq_wake_socket_send(int sender, uint64_t instance, int entry_id, uint64_t nonce,
                          uint64_t key);
/* A socket connected to one wake socket (its own send buffer: datagrams a
 * waiter has not read yet count against the sender's), or -errno. */
int shmq_wake_sender_connect(int sender, uint64_t instance, int entry_id, uint64_t nonce);
int shmq_wake_sender_send(int sender, uint64_t key);
void shmq_wake_socket_token(int fd, uint64_t key);
void shmq_wake_socket_drain(int fd);

/* backpressure.c: wakes a producer waiting for room, if it waits. */
void shmq_backpressure_wake_producer(struct shmq_consumer *consumer, uint64_t position);

/* producer.c: wakes every sleeper and descriptor waiter, with nothing new
 * published (they look again). */
void shmq_producer_kick(struct shmq_producer *producer);

/* descriptor.c */
void shmq_producer_wake_descriptors(struct shmq_producer *producer, int everyone);

/* consumer.c: takes an entry for a consumer opened without one (never
 * registering it: the producer does not wait for it). */
int shmq_consumer_claim_late(struct shmq_consumer *consumer);
/* consumer.c: a poll that found nothing, on a consumer with a descriptor. */
void shmq_consumer_quiet(struct shmq_consumer *consumer);
/* Whether a poll has something to report (a message, an overrun, or the end
 * of the stream with everything read); seq_cst. */
int shmq_consumer_ready(struct shmq_consumer *consumer);
/* After a sleep on futex_word: passes the producer's wake on (consumer.c). */
void shmq_consumer_relay(struct shmq_consumer *consumer, uint32_t slept_on);

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
/* futex_waitv over up to SHMQ_WAITV_MAX words (private_word[i]: a word of
 * this process only): 0 (woken, or a word differed), -ETIMEDOUT, -EINTR, or
 * -ENOSYS where the kernel lacks futex_waitv (Linux < 5.16). */
#define SHMQ_WAITV_MAX 128u
int shmq_futex_wait_many(_Atomic uint32_t *const *words, const uint32_t *expected,
                         const unsigned char *private_word, size_t count,
                         const struct timespec *deadline);
/* Between two slices of a wait (signalled: a signal ended the last one):
 * 0 to go on, SHMQ_INTERRUPTED, or -EINTR (the check said stop, or a signal
 * arrived and there is no check). */
int shmq_waiter_between(struct shmq_waiter *waiter, int signalled);

/* The index record of `sequence`. */
static inline struct shmq_record *shmq_record_at(unsigned char *index, const struct shmq_geometry *g,
                                                 uint64_t sequence)
{
    return (struct shmq_record *)(index + (size_t)(sequence & (g->capacity - 1)) * g->record_stride);
}

/* The payload words of a record whose first slot is `slot` (< capacity). The
 * payload is copied a word at a time with relaxed atomics: see producer.c. */
static inline _Atomic uint64_t *shmq_payload_at(unsigned char *data, const struct shmq_geometry *g,
                                                uint32_t slot)
{
    return (_Atomic uint64_t *)(data + (size_t)slot * g->slot_stride);
}

/* After reading a record: whether its stamp still says `sequence` (the
 * acquire fence half of the seqlock; see consumer.c). */
static inline int shmq_record_unchanged(const struct shmq_consumer *c, uint64_t sequence)
{
    /* Acquire fence: pairs with the release fence of begin_record (producer.c).
     * If any load before this fence saw a word a newer record wrote, the
     * stamp load after it sees this record's mark (or a newer stamp). */
    shmq_fence_acquire();
    /* Relaxed: ordered by the fence just above. */
    return shmq_load_relaxed(&shmq_record_at(c->index, &c->geometry, sequence)->stamp) == sequence;
}

/* Steps 1 and 2 of reading (consumer.c) up to the copy: where message
 * `sequence` lies, if its stamp says it is there and its record is sound
 * (OK, EMPTY, OVERRUN or CORRUPT). The caller validates what it read with
 * shmq_record_unchanged. */
static inline enum shmq_copy_result shmq_record_find(const struct shmq_consumer *c, uint64_t s,
                                                     const _Atomic uint64_t **payload,
                                                     uint32_t *length)
{
    const struct shmq_geometry *g = &c->geometry;
    struct shmq_record *record = shmq_record_at(c->index, g, s);
    /* Acquire: pairs with the release store of the final stamp in end_record;
     * seeing stamp == s means seeing all of message s. */
    uint64_t stamp = shmq_load_acquire(&record->stamp);
    if (stamp != s)
        return (int64_t)(stamp - s) < 0 ? SHMQ_COPY_EMPTY : SHMQ_COPY_OVERRUN;
    /* Relaxed: covered by the acquire above, and re-validated by the caller. */
    uint32_t len = shmq_load_relaxed(&record->length);
    /* Where every record is one slot, its slot is its sequence's, computed
     * rather than loaded: the copy's loads then need not wait for this one
     * (a payload that runs into the next cache line is fetched at once). */
    uint32_t slot = g->spanning ? shmq_load_relaxed(&record->slot) : (uint32_t)(s & (g->capacity - 1));
    /* A one-slot record fits wherever it starts; a longer one must end
     * inside the data area. */
    if (len > g->max_message || slot >= g->capacity ||
        (len > g->slot_payload && shmq_record_slots(len, g->slot_payload) > g->capacity - slot)) {
        /* A record being rewritten may pair a new length with an old slot:
         * corrupt only if the stamp still says it is whole. */
        return shmq_record_unchanged(c, s) ? SHMQ_COPY_CORRUPT : SHMQ_COPY_OVERRUN;
    }
    *payload = shmq_payload_at(c->data, g, slot);
    *length = len;
    return SHMQ_COPY_OK;
}

#endif

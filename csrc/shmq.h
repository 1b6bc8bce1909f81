/*
 * shmq: lock-free broadcast of messages between processes on one Linux host.
 *
 * Read this header top to bottom; it is the manual.
 *
 * MODEL
 *   A queue is a ring of `capacity` slots of `slot_size` bytes in a named
 *   shared-memory segment (/dev/shm/shmq-NAME), plus two empty files used for
 *   their locks (/dev/shm/shmq-NAME.consumers and .producer) and a page of
 *   System V memory per consumer and one to wake sleepers. One producer
 *   publishes messages of up to `max_message_size` bytes (SIZES); each
 *   message gets the next 64-bit sequence number. Any number of consumers read every message, each at its
 *   own position. On a lossy queue (the default) the producer never waits
 *   for consumers: a consumer that falls more than a ring behind is overrun.
 *   It notices, counts exactly how many messages it lost, and carries on. On
 *   a lossless queue the producer waits for its registered consumers instead
 *   (LOSSLESS below). A consumer never returns a torn message: a payload is
 *   delivered only if it was copied whole before the producer reused any of
 *   its slots.
 *
 *   Invariant, per consumer: delivered + lost == messages published since the
 *   consumer's start position.
 *
 * SIZES
 *   A message takes as many consecutive slots as it needs (at least one):
 *   max_message_size (struct shmq_config; default slot_size) may be anything
 *   up to slot_size * capacity, and the ring stays slot_size * capacity bytes
 *   of slots plus a 16-byte index record per slot. A message never runs past
 *   the last slot (it starts at slot 0 instead, skipping the rest), so every
 *   payload is contiguous: a loan and an in-place read are one span of bytes.
 *   A ring holds `capacity` messages of one slot, fewer of larger ones. A
 *   large message overwritten while it is read is one lost message, never a
 *   part of one; a lossless producer waits until every registered consumer
 *   has read everything the next message overwrites.
 *
 * ROLES AND TRUST
 *   The producer alone can write the ring: consumers open it with a
 *   read-only descriptor and map it read-only, so no consumer can truncate
 *   it, write it or mprotect it writable. What consumers must write lives in
 *   System V memory, which nobody can truncate: a wake page all consumers
 *   share, and each consumer's own entry page, which it makes itself and
 *   which no other user can map. The producer maps nothing a consumer could
 *   shrink, so no consumer can make it fault. Liveness comes from locks the
 *   kernel drops when their holder dies, never from pids; the producer's
 *   lock is on a file only the queue's owner can open, so no reader can fake
 *   or block a producer. docs/consumer-state.md has the whole design.
 *
 * ERRORS
 *   Every function that can fail returns a value >= 0 on success and a negative
 *   errno value on failure. The library never prints, never aborts and never
 *   trusts the contents of a segment: a foreign, truncated or corrupt segment
 *   is an error code. The codes that have a shmq-specific meaning:
 *
 *     -EAGAIN           nothing to read (SHMQ_EMPTY); not a failure
 *     -EPIPE            the producer closed the stream and everything has been
 *                       read (SHMQ_ENDED); not a failure
 *     -ETIMEDOUT        a blocking call's timeout ran out
 *     -EINTR            a blocking call was interrupted by a signal, or its
 *                       wait check asked it to stop (see WAITING)
 *     -ECANCELED        shmq_producer_interrupt / shmq_consumer_interrupt
 *                       ended the wait (SHMQ_INTERRUPTED)
 *     -EMSGSIZE         message larger than max_message_size, or buffer too small
 *     -EBUSY            another live producer holds the queue
 *     -EPERM            the queue belongs to another user, or is open wider
 *                       than the mode asked for (someone else planted it)
 *     -EUCLEAN          a slot of the ring is corrupt: impossible length, or
 *                       stamps that keep a reader lapping (SHMQ_CORRUPT)
 *     -ENOBUFS          lossless queue full: a registered consumer has not
 *                       read what the next message would overwrite (SHMQ_FULL)
 *     -EUSERS           lossless queue: every consumer entry is taken
 *     -ESTALE           an in-place read was overwritten while it was lent
 *                       out (SHMQ_OVERWRITTEN); it counts as lost
 *     -EINPROGRESS      a loan (producer) or an in-place read (consumer) is
 *                       open: finish it first
 *     -ENOENT           no queue of that name
 *     -EEXIST           the queue exists (exclusive create)
 *     -EINVAL           bad argument or name
 *     -ENAMETOOLONG     name longer than SHMQ_NAME_MAX
 *     -EPROTO           the segment is not a shmq ring (wrong magic), or not a
 *                       regular file (a FIFO, socket, directory or symlink
 *                       someone planted under the name)
 *     -ENODATA          the segment is empty or was never fully initialised
 *     -EPROTONOSUPPORT  the segment has a layout version this build can't read
 *     -EBADMSG          the ring's header is corrupt or disagrees with its size
 *     -EMEDIUMTYPE      the queue exists with another slot_size or capacity
 *     -ECHILD           a producer handle used in a child after fork()
 *     -ENOSPC, -EACCES, -ENOMEM, -EMFILE   from the operating system
 *
 *   shmq_strerror() turns any of them into a sentence.
 *
 * THREADS AND PROCESSES
 *   Handles are not synchronised: use each handle from one thread at a time.
 *   Different handles (in one process or many) may be used concurrently.
 *   A producer handle must not be used in a child after fork(): there it
 *   returns -ECHILD and holds no lock, so the child may open its own producer
 *   once the parent's is closed, and a child never keeps a dead parent's
 *   queue locked; closing it in the child neither ends the stream nor
 *   unlinks. A consumer handle keeps reading in a child, from the parent's
 *   position, but its consumer entry stays the parent's; a group member's
 *   handle reads nothing there (its polls and waits return -ECHILD: its
 *   claims are the parent's).
 */
#ifndef SHMQ_H
#define SHMQ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "shmq_region.h"
#include "shmq_version.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SHMQ_EMPTY (-11)   /* -EAGAIN: nothing to read */
#define SHMQ_ENDED (-32)   /* -EPIPE: the stream ended and everything was read */
#define SHMQ_CORRUPT (-117) /* -EUCLEAN: a corrupt slot */
#define SHMQ_FULL (-105)    /* -ENOBUFS: lossless, and no room until a consumer reads */
#define SHMQ_OVERWRITTEN (-116) /* -ESTALE: an in-place read was overwritten meanwhile */
#define SHMQ_INTERRUPTED (-125) /* -ECANCELED: shmq_*_interrupt ended a wait */

/* Largest message and ring a queue may be created with. */
#define SHMQ_SLOT_SIZE_MAX (64u * 1024u * 1024u)
/* Largest max_message_size of any queue (a record's length is 32 bits). */
#define SHMQ_MESSAGE_SIZE_MAX UINT64_C(0xffffffff)
#define SHMQ_CAPACITY_MAX (1u << 30)
/* Largest ring segment, slots and control page together: 1 TiB. Creation
 * also needs that much free space in /dev/shm (a tmpfs, by default half of
 * the RAM), reserved up front: a ring that does not fit is -ENOSPC at
 * creation, never SIGBUS later. */
#define SHMQ_SEGMENT_MAX (UINT64_C(1) << 40)
#define SHMQ_DEFAULT_SLOT_SIZE 1024u
#define SHMQ_DEFAULT_CAPACITY 8192u
/* Consumer entries of a queue, by default and at most. */
#define SHMQ_DEFAULT_MAX_CONSUMERS 64u
/* Most spin iterations a blocking poll makes before it sleeps (about 15 ms). */
#define SHMQ_SPIN_MAX 1000000u

struct shmq_producer;
struct shmq_consumer;

/* What happens when a consumer falls a whole ring behind (see LOSSLESS). */
enum shmq_delivery {
    SHMQ_DELIVERY_ANY = 0, /* create lossy; attach to either */
    SHMQ_LOSSY = 1,        /* the producer never waits; a slow consumer is overrun */
    SHMQ_LOSSLESS = 2,     /* the producer waits for the slowest live registered consumer */
};

/* Geometry and options of a queue. Zero a struct, then set what you need. */
struct shmq_config {
    /* Largest message in bytes, 1..SHMQ_SLOT_SIZE_MAX. 0: SHMQ_DEFAULT_SLOT_SIZE
     * when creating, "whatever it is" when attaching. */
    uint32_t slot_size;
    /* Number of slots, a power of two, 2..SHMQ_CAPACITY_MAX. 0: default when
     * creating, "whatever it is" when attaching. */
    uint32_t capacity;
    /* Permission bits for a new segment; 0 means 0600. The umask is ignored. */
    mode_t mode;
    /* Sequence number of the first message of a new queue (normally 0). The
     * futex wake counter starts at its low 32 bits, so starting near 2^64 also
     * exercises the wrap of the 32-bit wake counter. */
    uint64_t first_sequence;
    /* Consumer entries (one System V page each while taken), 1..1024;
     * 0: SHMQ_DEFAULT_MAX_CONSUMERS. Consumers beyond it still read; they are
     * just not listed (on a lossless queue they cannot register). Ignored
     * when attaching. */
    uint32_t max_consumers;
    /* Lossy or lossless; attaching with the other one gives -EMEDIUMTYPE. */
    enum shmq_delivery delivery;
    /* Largest message in bytes, which may be far larger than a slot: a
     * message takes as many consecutive slots as it needs (see SIZES).
     * 0: slot_size when creating, "whatever it is" when attaching, where
     * another value gives -EMEDIUMTYPE. At most slot_size * capacity and
     * SHMQ_MESSAGE_SIZE_MAX, else -EINVAL. */
    uint64_t max_message_size;
};

/* ---------------------------------------------------------------- producer */

/* Flags for shmq_producer_open. */
#define SHMQ_CREATE 1u          /* create the queue if it does not exist */
#define SHMQ_EXCL 2u            /* with SHMQ_CREATE: fail with -EEXIST if it exists */
#define SHMQ_UNLINK_ON_CLOSE 4u /* shmq_producer_close unlinks the queue (never
                                   from a child after fork()) */

/* Opens the producer side of queue `name`; at most one producer per queue.
 * Queue names follow the region rules (shmq_region.h) and must not end in
 * ".consumers", ".producer" or ".bridge" (the queue's own auxiliary files).
 * With SHMQ_CREATE a missing queue is created from `config` (NULL: defaults).
 * An existing queue is attached and its sequence continues after the last
 * message the previous producer stamped whole; a non-zero config->slot_size
 * or config->capacity that differs from the queue's gives -EMEDIUMTYPE.
 * An existing queue must be owned by the caller's effective uid and its mode
 * may not be wider than config->mode (default 0600), else -EPERM: in a
 * shared /dev/shm, another user could have planted it to read or steer what
 * we publish. Opening clears the end-of-stream mark.
 * The producer lock is released by the kernel when the process dies, so a
 * crashed producer never blocks a new one; only the owner's processes can
 * take it or block it. A failure leaves what the queue had untouched (its
 * consumers stay registered) and reports the real cause (-EMFILE, say).
 * Returns 0 and sets *out; or -EBUSY, -ENOENT (no SHMQ_CREATE), -EEXIST,
 * -EPERM, -EMEDIUMTYPE, -EINVAL, -EFBIG, -ENAMETOOLONG, -EPROTO, -ENODATA,
 * -EPROTONOSUPPORT, -EBADMSG, -ENOSPC, -EACCES, -ENOMEM, -EMFILE. */
int shmq_producer_open(struct shmq_producer **out, const char *name,
                       const struct shmq_config *config, unsigned flags);

/* Publishes one message of `length` bytes (0..slot_size) and returns its
 * sequence number through *sequence (may be NULL). Never blocks; makes a
 * syscall only to wake consumers that went to sleep since the last wake-up
 * (one FUTEX_WAKE per sleep episode, not per message).
 * Returns 0, -EMSGSIZE (too long; nothing published), -EINVAL (NULL data with
 * non-zero length), -ECHILD, or on a lossless queue SHMQ_FULL (nothing
 * published: use shmq_producer_publish_wait to wait for room).
 * Producer's thread only. */
int shmq_producer_publish(struct shmq_producer *producer, const void *data, size_t length,
                          uint64_t *sequence);

/* Like shmq_producer_publish, but on a lossless queue waits up to
 * timeout_ns nanoseconds (negative: forever; 0: not at all) for room: until
 * every live registered consumer has read what the message overwrites. A
 * consumer that dies stops being waited for about 10 ms after its death (the
 * waiting producer asks the kernel every 10 ms). The producer sleeps on a
 * futex, woken once a quarter of the ring
 * is free, not once per message read.
 * Returns what shmq_producer_publish returns, or -ETIMEDOUT, or -EINTR if a
 * signal arrived while it slept. */
int shmq_producer_publish_wait(struct shmq_producer *producer, const void *data, size_t length,
                               uint64_t *sequence, int64_t timeout_ns);

/* Waits, as shmq_producer_publish_wait does, until a next message of
 * `length` bytes fits (wait_room: of one slot); publishes nothing. Returns 0
 * (at once on a lossy queue), SHMQ_FULL (timeout 0), -ETIMEDOUT, -EINTR,
 * -ECHILD, or -EMSGSIZE (over max_message_size). */
int shmq_producer_wait_room(struct shmq_producer *producer, int64_t timeout_ns);
int shmq_producer_wait_room_for(struct shmq_producer *producer, size_t length,
                                int64_t timeout_ns);

/* Publishes `count` messages, messages[i] of lengths[i] bytes, with one
 * wake-up check for the batch. All lengths are checked first: on -EMSGSIZE
 * or -EINVAL nothing is published. *last_sequence gets the last published
 * message's sequence (unchanged when none was). Returns 0, -EMSGSIZE,
 * -EINVAL, -ECHILD, or on a lossless queue SHMQ_FULL when only the first
 * ones fitted (they are published; see shmq_producer_next_sequence). */
int shmq_producer_publish_many(struct shmq_producer *producer, const void *const *messages,
                               const size_t *lengths, size_t count, uint64_t *last_sequence);

/* Like shmq_producer_publish_many, waiting up to timeout_ns for room as
 * shmq_producer_publish_wait does. *published (may be NULL) gets how many
 * were published, also on failure. Returns 0 when all were, or -EMSGSIZE,
 * -EINVAL, -ECHILD (none was), SHMQ_FULL (timeout 0), -ETIMEDOUT, -EINTR. */
int shmq_producer_publish_many_wait(struct shmq_producer *producer, const void *const *messages,
                                    const size_t *lengths, size_t count, size_t *published,
                                    int64_t timeout_ns);

/* ZERO-COPY WRITES. Lends out the payload area of the next slot: *data gets
 * room for `size` bytes (0..slot_size), 16-byte aligned, to write in place;
 * then shmq_producer_commit publishes it (its sequence is then
 * shmq_producer_next_sequence() - 1), or shmq_producer_abort abandons it: nothing is published, and the
 * next publish takes the same sequence. Readers never see a loan before its
 * commit, nor one abandoned or left by a producer that died meanwhile. While
 * a loan is open, the other publish calls and claim return -EINPROGRESS.
 * claim returns 0, -EMSGSIZE, -EINVAL, -ECHILD, -EINPROGRESS, or SHMQ_FULL
 * (lossless; claim_wait waits for room as publish_wait does, and may also
 * return -ETIMEDOUT or -EINTR). commit returns 0, or -EINVAL with no loan. */
int shmq_producer_claim(struct shmq_producer *producer, size_t size, void **data);
int shmq_producer_claim_wait(struct shmq_producer *producer, size_t size, void **data,
                             int64_t timeout_ns);
int shmq_producer_commit(struct shmq_producer *producer);
void shmq_producer_abort(struct shmq_producer *producer);

/* Sequence number the next message will get. */
uint64_t shmq_producer_next_sequence(const struct shmq_producer *producer);
uint32_t shmq_producer_slot_size(const struct shmq_producer *producer);
uint32_t shmq_producer_capacity(const struct shmq_producer *producer);
/* The largest message the queue carries (SIZES). */
uint64_t shmq_producer_max_message_size(const struct shmq_producer *producer);
/* FUTEX_WAKE calls this handle has made: how often publishing had to wake
 * sleeping consumers. */
uint64_t shmq_producer_wakeups(const struct shmq_producer *producer);
/* 1 if the queue is lossless, else 0. */
int shmq_producer_lossless(const struct shmq_producer *producer);

/* A live consumer, as its entry shows it. */
struct shmq_consumer_info {
    uint32_t index;    /* its entry */
    uint32_t pid;      /* for display only: pids are reused */
    int registered;    /* a lossless producer waits for it */
    uint64_t position; /* next sequence it will read */
    uint64_t lag;      /* messages published that it has not read */
    uint64_t lost;     /* what it lost to overrun */
    uid_t uid;         /* the user the consumer runs as (from the kernel), or
                          (uid_t)-1 when its entry page is not ours to read */
    int unclear;       /* someone planted a second id lock beside this entry's
                          (docs/consumer-state.md): its page cannot be told, so
                          a lossless producer waits for it as for a consumer a
                          lap behind, and it is listed that way (registered on
                          a lossless queue, lag = capacity, pid 0) */
};

/* Fills out[0..max) with the live consumers that hold an entry (asking the
 * kernel about each entry's lock: a few syscalls, not for the hot path) and
 * returns how many, or -EINVAL. */
int shmq_producer_consumers(const struct shmq_producer *producer, struct shmq_consumer_info *out,
                            size_t max);

/* Marks the stream ended (consumers that have read everything then get
 * SHMQ_ENDED instead of waiting), wakes sleepers, unlinks the queue if opened
 * with SHMQ_UNLINK_ON_CLOSE, and releases the producer lock and the
 * mappings. In a child after fork() it only releases the child's copies.
 * Accepts NULL. Otherwise the queue stays in /dev/shm until shmq_unlink, and
 * a producer that opens it again continues the sequence. */
void shmq_producer_close(struct shmq_producer *producer);

/* ---------------------------------------------------------------- consumer */

enum shmq_start {
    SHMQ_START_LATEST = 0,   /* only messages published after the open */
    SHMQ_START_EARLIEST = 1, /* the oldest message the producer won't rewrite next */
    SHMQ_START_AT = 2,       /* options.position (a message already overwritten
                                counts as lost; one not yet published: latest) */
};

struct shmq_consumer_options {
    enum shmq_start start;
    /* With SHMQ_START_AT: the sequence number to read first. */
    uint64_t position;
    /* Spin iterations before a blocking poll sleeps (see shmq_consumer_set_spin). */
    uint32_t spin;
    /* Non-zero: refuse (-EPERM) a queue whose segment `owner` does not own. */
    int check_owner;
    uid_t owner;
    /* Non-zero: claim no consumer entry (tools that only look). On a lossless
     * queue such a consumer is a lossy observer: it never holds the producer
     * back, and counts what it loses to overrun. */
    int no_entry;
    /* How long open waits for a queue that does not exist yet, or whose
     * producer is still initialising it, in nanoseconds: 0 not at all,
     * negative forever. It looks every 10 ms; wait_check (if set) is called
     * between looks, and a non-zero return ends the open with -EINTR. */
    int64_t wait_ns;
    int (*wait_check)(void *context);
    void *wait_context;
    /* Non-NULL: join consumer group `group` (GROUPS below): 1 to
     * SHMQ_GROUP_NAME_MAX characters from [A-Za-z0-9._-], not starting with
     * one of ".-_"; -EINVAL otherwise, and with no_entry. */
    const char *group;
};

/* Opens a consumer on an existing queue (waiting for it first, as
 * options->wait_ns says). The ring is opened read-only and mapped
 * read-only, so a stray write through a consumer can't corrupt what the
 * producer or other consumers read. The consumer claims a free entry (held
 * by a lock the kernel drops at its death) and makes its own page for it,
 * which no other user can map; it also maps the wake page. A consumer that
 * finds no free entry, or may not take one, still reads every message; one
 * without the wake page sleeps in 1 ms slices, since nobody can be asked to
 * wake it. options NULL: start latest, no spin, no owner check, no wait.
 * On a lossless queue the consumer registers (unless no_entry): from its
 * start on, the producer does not overwrite what it has not read (a start
 * earlier than the head, SHMQ_START_EARLIEST or _AT, may find messages
 * the producer rewrote while the consumer registered, which count as lost:
 * docs/protocol.md, section 16; a group's first member likewise); every
 * entry taken gives -EUSERS, a consumer state it may not use -EACCES. It
 * unregisters at close, or when it dies (the kernel drops the lock on its
 * entry; a waiting producer notices about 10 ms after the death).
 * Returns 0 and sets *out; or -ENOENT, -EINVAL, -ENAMETOOLONG, -EACCES,
 * -EPERM, -EUSERS, -EPROTO, -ENODATA, -EPROTONOSUPPORT, -EBADMSG, -ENOMEM,
 * -EMFILE, -ENOSPC (no System V memory left for the entry), -EINTR (the
 * wait check stopped a wait). */
int shmq_consumer_open_with(struct shmq_consumer **out, const char *name,
                            const struct shmq_consumer_options *options);

/* shmq_consumer_open_with with only `start` set. */
int shmq_consumer_open(struct shmq_consumer **out, const char *name, enum shmq_start start);

/* Copies the next message into buf (buf_size bytes) and stores its length in
 * *length. Never blocks, and makes no syscall, except one recv when it finds
 * nothing on a consumer that holds a descriptor (shmq_consumer_fileno).
 * If the consumer was overrun, the skipped messages are added to the lost
 * count and it resumes half a ring behind the producer (see OVERRUN below).
 * Returns 0; SHMQ_EMPTY (-EAGAIN) when nothing is available (also at the
 * end of a stream: the blocking calls below report SHMQ_ENDED); -EMSGSIZE when buf_size is smaller than the message (*length gets its size;
 * the message is not consumed); SHMQ_CORRUPT (-EUCLEAN) when a slot holds an
 * impossible length (the slot is skipped and counted as lost) or the stamps
 * keep the reader lapping (garbage, not a fast producer).
 * Consumer's thread only. */
int shmq_consumer_poll(struct shmq_consumer *consumer, void *buf, size_t buf_size, size_t *length);

/* Like shmq_consumer_poll, but the message goes into memory from `alloc`,
 * called (on this thread) with the message's length once it is known:
 * alloc(context, length) returns where to copy `length` bytes, or NULL (the
 * poll then returns -ENOMEM and the message stays). If the producer rewrites
 * the slot during the copy, that copy is dropped and alloc is called again for
 * the next message, so an allocator that hands out objects should release the
 * one it made before. On 0, the last memory alloc returned holds the message.
 * Saves the copy through an intermediate buffer when the destination's size
 * must equal the message's (a Python bytes object, say).
 * Returns what shmq_consumer_poll returns (never -EMSGSIZE), or -ENOMEM,
 * -EINVAL (alloc is NULL). Consumer's thread only. */
int shmq_consumer_poll_alloc(struct shmq_consumer *consumer,
                             void *(*alloc)(void *context, size_t length), void *context,
                             size_t *length);


/* Waits up to timeout_ns nanoseconds (CLOCK_MONOTONIC; negative: forever)
 * until a poll has something to report (a message, or an overrun to count),
 * without consuming anything. Spins first (shmq_consumer_set_spin), then
 * sleeps on the segment's futex, never longer than 100 ms at a time before
 * it looks at the ring again. Meant for callers that must poll in another
 * context than they wait in (with a lock held, say).
 * Returns 0; SHMQ_ENDED when the producer closed the stream and everything
 * was read; -ETIMEDOUT; or -EINTR if a signal arrived while it slept. */
int shmq_consumer_wait(struct shmq_consumer *consumer, int64_t timeout_ns);

/* Flags for shmq_consumer_wait_flags. */
#define SHMQ_WAIT_PAST_END 1u /* keep waiting on an ended stream (for a producer
                                 to reopen it) instead of returning SHMQ_ENDED */

/* shmq_consumer_wait with flags: 0 is shmq_consumer_wait. */
int shmq_consumer_wait_flags(struct shmq_consumer *consumer, int64_t timeout_ns, unsigned flags);

/* Like shmq_consumer_poll, but waits up to timeout_ns nanoseconds
 * (CLOCK_MONOTONIC) for a message: 0 does not wait, a negative value waits
 * forever. It first spins (shmq_consumer_set_spin), then sleeps in the kernel
 * on a futex in the segment; every wake-up re-checks the ring.
 * Returns what shmq_consumer_poll returns, or SHMQ_ENDED (at once, rather
 * than waiting) once the producer closed the stream and everything was read,
 * the way read() returns 0 at the end of a pipe; or -ETIMEDOUT, or -EINTR if
 * a signal arrived while it slept (poll again to continue). */
int shmq_consumer_poll_wait(struct shmq_consumer *consumer, void *buf, size_t buf_size,
                            size_t *length, int64_t timeout_ns);

/* Copies as many whole messages as fit, up to max_messages, into buf, one
 * after the other; lengths[i] gets the i-th one's length. Never blocks.
 * Returns the number of messages copied (0 when none is available); or, when
 * none was copied, -EMSGSIZE if even the first message does not fit (nothing
 * consumed), or SHMQ_CORRUPT as shmq_consumer_poll. An error met after some
 * messages were copied (SHMQ_CORRUPT, its loss already counted) ends the
 * batch, which is returned, and is returned by the next poll call. */
int shmq_consumer_poll_many(struct shmq_consumer *consumer, void *buf, size_t buf_size,
                            size_t *lengths, size_t max_messages);

/* ZERO-COPY READS. Lends out the next message in place: *data points into
 * the read-only mapping, *length is its size. Nothing is copied and the
 * consumer does not move on until shmq_consumer_release. On a lossless queue,
 * for a registered consumer, the producer cannot overwrite the message
 * meanwhile. Otherwise it can: release then returns SHMQ_OVERWRITTEN, the
 * message counts as lost, and anything computed from it must be discarded.
 * Between peek and release the poll calls return -EINPROGRESS.
 * peek returns 0, SHMQ_EMPTY, SHMQ_CORRUPT, -EINVAL or -EINPROGRESS (use
 * shmq_consumer_wait to block); release returns 0, SHMQ_OVERWRITTEN or
 * -EINVAL (nothing peeked). */
int shmq_consumer_peek(struct shmq_consumer *consumer, const void **data, size_t *length);
int shmq_consumer_release(struct shmq_consumer *consumer);

/* GROUPS (docs/consumer-state.md, "Groups"). Consumers of one queue opened
 * with the same options.group split the stream: each message goes to exactly
 * one live member, while plain consumers and other groups still see every
 * message. The first member creates the group at its start; later members
 * continue from the group's position; the group lives while it has a member.
 * A lossless producer waits for each group as for one reader.
 *
 * Members claim messages from the group's cursor by compare-and-swap, into
 * their own slot of the group's page. A message stays claimed until the call
 * that delivers it returns (a batch: until shmq_consumer_batch_end). A member
 * that dies leaves its claim behind, and another member (the next to poll
 * and find nothing, within about 10 ms, or the next to join) takes it over
 * and delivers it again if the ring still holds it intact (always, on a
 * lossless queue): at-least-once for what a dead member claimed and had not
 * returned. A claimed message the producer overwrote first (lossy only) is
 * counted in the group's lost count, once; so is an overrun of the cursor.
 * shmq_consumer_lost of a member returns the group's count.
 *
 * Every poll call works for members; shmq_consumer_fileno's readiness is a
 * hint for them (another member may take the message first). A queue holds
 * SHMQ_GROUPS_MAX groups of SHMQ_GROUP_MEMBERS_MAX members (-EUSERS beyond).
 * A group page is writable by its creator's user and the ring owner only: a
 * member of another user who names the same group makes a group of its own.
 * Open fails with -EOPNOTSUPP on a queue without consumer state
 * (docs/consumer-state.md), and -ETIMEDOUT when another process holds the
 * join lock for 5 s. */
#define SHMQ_GROUPS_MAX 16u
#define SHMQ_GROUP_MEMBERS_MAX 128u
#define SHMQ_GROUP_NAME_MAX 32u

/* Group members: the next claim takes up to max_messages at once, and what
 * the polls until shmq_consumer_batch_end deliver stays claimed until then
 * (a member that dies inside the batch has it redelivered whole). What the
 * batch claimed and did not deliver stays this member's, for its next poll.
 * Plain consumers: no effect. shmq_consumer_poll_many does this itself.
 * _within claims no more messages than fit in max_bytes (at least one). */
void shmq_consumer_batch_begin(struct shmq_consumer *consumer, size_t max_messages);
void shmq_consumer_batch_begin_within(struct shmq_consumer *consumer, size_t max_messages,
                                      size_t max_bytes);
void shmq_consumer_batch_end(struct shmq_consumer *consumer);

/* The consumer's group name, or NULL for a plain consumer. */
const char *shmq_consumer_group(const struct shmq_consumer *consumer);

/* A live group, as its page shows it. */
struct shmq_group_info {
    char name[SHMQ_GROUP_NAME_MAX + 1];
    uint32_t members;  /* live members (their locks) */
    uint64_t position; /* the next sequence no member has claimed */
    uint64_t lag;      /* published and not yet claimed */
    uint64_t lost;     /* the group's lost count */
    uint64_t claimed;  /* claimed and not yet returned */
    int unclear;       /* its members tell more pages than anyone keeps (planted
                          locks): a lossless producer waits for it as for a reader
                          a lap behind */
    uid_t uid;         /* the user who made the group (its page's creator) */
};

/* Fills out[0..max) with the live groups of queue `name` and returns how
 * many there are (at most max), or what shmq_inspect returns on error. Two
 * users' groups of one name are two groups. */
int shmq_inspect_groups(const char *name, struct shmq_group_info *out, size_t max);

/* Spin iterations before a blocking poll goes to sleep (default 0: sleep at
 * once), at most SHMQ_SPIN_MAX (larger values are clamped). Spinning trades
 * CPU for wake-up latency; the deadline is still checked every 1024 spins. */
void shmq_consumer_set_spin(struct shmq_consumer *consumer, uint32_t iterations);

/* Next sequence this consumer will read. */
uint64_t shmq_consumer_position(const struct shmq_consumer *consumer);
/* Messages lost to overrun since the open, cumulative. */
uint64_t shmq_consumer_lost(const struct shmq_consumer *consumer);
uint32_t shmq_consumer_slot_size(const struct shmq_consumer *consumer);
/* The largest message the queue carries (SIZES). */
uint64_t shmq_consumer_max_message_size(const struct shmq_consumer *consumer);
uint32_t shmq_consumer_capacity(const struct shmq_consumer *consumer);
/* The uid that owns the queue's ring segment. */
uid_t shmq_consumer_owner_uid(const struct shmq_consumer *consumer);
/* This consumer's entry, or -1 if it has none. */
int shmq_consumer_entry(const struct shmq_consumer *consumer);
/* 1 if the queue is lossless, else 0. */
int shmq_consumer_lossless(const struct shmq_consumer *consumer);
/* 1 if this consumer holds a lossless producer back (registered), else 0. */
int shmq_consumer_registered(const struct shmq_consumer *consumer);
/* Messages published that this consumer has not read yet. */
uint64_t shmq_consumer_backlog(const struct shmq_consumer *consumer);

/* 1 if a live producer holds the queue, else 0 (a negative errno if it can't
 * tell). Asks the kernel about the producer's lock; takes nothing. */
int shmq_consumer_producer_alive(const struct shmq_consumer *consumer);
/* 1 if the producer closed the stream (and none reopened it), else 0. */
int shmq_consumer_ended(const struct shmq_consumer *consumer);
/* 1 if the queue this consumer reads was unlinked since (its name may now
 * belong to another queue), else 0, or a negative errno. */
int shmq_consumer_unlinked(const struct shmq_consumer *consumer);

/* Frees the consumer's entry, unmaps. Accepts NULL. Never unlinks. */
void shmq_consumer_close(struct shmq_consumer *consumer);

/* ----------------------------------------------------------------- waiting */

/*
 * WAITING
 *   Every blocking call (shmq_producer_publish_wait, _publish_many_wait,
 *   _claim_wait, _wait_room; shmq_consumer_wait, _wait_flags, _poll_wait)
 *   waits in the core, sleeping in slices of at most 100 ms, and ends early
 *   in two ways besides its own condition and timeout:
 *
 *   - shmq_producer_interrupt / shmq_consumer_interrupt, from any thread or
 *     from a signal handler, make the wait in progress on that handle (or,
 *     if none is, the next one to start) return SHMQ_INTERRUPTED promptly.
 *     They only set a flag and wake the sleeper: they never free anything.
 *     To close a handle another thread waits on, interrupt it, let that
 *     thread return, then close.
 *   - A wait check, set per handle, is called by the waiting thread between
 *     slices and whenever a signal interrupted its sleep; a non-zero return
 *     ends the wait with -EINTR. Without one, a signal that interrupts the
 *     sleep ends the wait with -EINTR (the old behaviour). A language
 *     binding uses it to run its signal handlers (Ctrl-C) while waiting.
 */

/* Async-signal-safe; any thread. */
void shmq_producer_interrupt(struct shmq_producer *producer);
void shmq_consumer_interrupt(struct shmq_consumer *consumer);

/* check NULL removes it. The handle's thread only, not during a wait. */
void shmq_producer_set_wait_check(struct shmq_producer *producer, int (*check)(void *context),
                                  void *context);
void shmq_consumer_set_wait_check(struct shmq_consumer *consumer, int (*check)(void *context),
                                  void *context);

/* --------------------------------------------------- waiting on descriptors */

/*
 * DESCRIPTORS (docs/waiting.md)
 *   shmq_consumer_fileno returns a descriptor for select, poll, epoll and
 *   event loops. It is readable whenever shmq_consumer_poll would return
 *   something other than SHMQ_EMPTY (a message, a lost count to report, an
 *   error), or the stream has ended. It stops being readable only when a
 *   poll (or peek) returns SHMQ_EMPTY: that poll arms it, and the producer's
 *   next publish makes it readable again. So: wait until readable, poll
 *   until SHMQ_EMPTY, wait again. It may rarely be readable with nothing to
 *   read (a wake-up that raced a poll): the next poll returns SHMQ_EMPTY and
 *   quiets it. The consumer owns it: shmq_consumer_close closes it; never
 *   read from it or close it yourself. Made on the first call (a Unix
 *   datagram socket in the abstract namespace); later calls return the same
 *   one. A consumer opened with no_entry takes an entry now (it stays
 *   unregistered: a lossless producer does not wait for it). Returns the
 *   descriptor, -EUSERS (every entry is taken, or the queue has none),
 *   -ECHILD (a consumer handle in a child after fork(): its entry is the
 *   parent's), or an errno from socket/bind.
 *   A consumer that holds a descriptor costs the producer one datagram per
 *   sleep episode (and one socket, to send them from), and costs itself
 *   nothing while messages flow.
 *
 *   shmq_producer_fileno (lossless queues; -EOPNOTSUPP on lossy ones): a
 *   descriptor that becomes readable when consumers free room after
 *   shmq_producer_wait_room(producer, 0) returned SHMQ_FULL. Consumers that
 *   die free nothing: wait on it for at most SHMQ_ROOM_RECHECK_NS at a
 *   time, then call shmq_producer_wait_room(producer, 0) again (it asks the
 *   kernel about them, as a blocking wait does).
 *
 *   shmq_wait_any waits until at least one of `count` consumers has
 *   something for a poll (as above: a message, a loss, or the end of its
 *   stream), or timeout_ns passes (< 0: forever; 0: only looks). ready[i] is
 *   set to 1 for each consumer that has, 0 for the others. Returns how many
 *   are ready (0: the timeout passed), SHMQ_INTERRUPTED
 *   (shmq_consumer_interrupt on any of them), -EINTR (a signal with no
 *   check, or `check` returned non-zero: it runs between slices and after a
 *   signal, as a wait check does), -ENOMEM, or -EINVAL. Up to
 *   SHMQ_WAIT_ANY_FUTEX_MAX consumers it sleeps in one futex_waitv (Linux
 *   5.16); beyond that, or on older kernels, it sleeps in ppoll on their
 *   descriptors (making them as shmq_consumer_fileno does; a consumer
 *   without one is looked at every millisecond). None of the consumers may
 *   be used by another thread meanwhile.
 *
 *   shmq_producer_wait_consumers waits until at least n consumers are
 *   attached: registered ones on a lossless queue, any with an entry on a
 *   lossy one. Returns their count, -ETIMEDOUT, SHMQ_INTERRUPTED or -EINTR
 *   (as WAITING below), or -ERANGE at once when n is more than the queue's
 *   consumer entries (it could never happen). It looks every millisecond.
 */
#define SHMQ_ROOM_RECHECK_NS (10LL * 1000 * 1000)
#define SHMQ_WAIT_ANY_FUTEX_MAX 64u

int shmq_consumer_fileno(struct shmq_consumer *consumer);
/* For a program that waits on the descriptor with a long or no timeout:
 * arms it again as a poll that finds nothing does, without reading
 * anything (it stays or turns readable if a poll would find something).
 * Another consumer of the queue can clear the shared wake flag; calling this
 * now and then (poll_async does, once a second for all its consumers)
 * bounds how long that can strand a waiter. 0, or -EINVAL without a
 * descriptor. */
int shmq_consumer_rearm(struct shmq_consumer *consumer);
int shmq_producer_fileno(struct shmq_producer *producer);
int shmq_wait_any(struct shmq_consumer *const *consumers, size_t count, int64_t timeout_ns,
                  unsigned char *ready, int (*check)(void *context), void *context);
int shmq_producer_wait_consumers(struct shmq_producer *producer, uint32_t n, int64_t timeout_ns);
/* Datagrams sent to descriptor waiters so far (the descriptor twin of
 * shmq_producer_wakeups). */
uint64_t shmq_producer_descriptor_wakeups(const struct shmq_producer *producer);

/* ------------------------------------------------------------- inspecting */

/* A queue as shmq_inspect sees it. */
struct shmq_queue_info {
    uint32_t slot_size;
    uint32_t capacity;
    uint32_t max_consumers; /* consumer entries */
    int lossless;           /* 1 lossless, 0 lossy */
    uint64_t first_sequence;
    uint64_t head;          /* the sequence the producer publishes next */
    int producer_alive;     /* 1 if a live producer holds the queue, else 0 */
    int ended;              /* 1 if the producer closed the stream (and none reopened it) */
    uid_t owner_uid;        /* owner of the ring */
    mode_t mode;            /* permission bits of the ring */
    uint64_t ring_bytes;    /* size of the ring in /dev/shm */
    uint64_t state_bytes;   /* memory of the consumer state: wake page and live entries */
    uint64_t max_message_size; /* the largest message it carries */
};

/* Looks at queue `name` without taking anything and without writing: it
 * validates the ring as an attaching consumer does, asks the kernel whether
 * the producer and each consumer entry are alive, and copies each live
 * entry (validated). Fills *info, and out[0..max) with live consumers
 * (out may be NULL when max is 0).
 * Returns how many consumers are live (possibly more than max; only max
 * are stored), or -ENOENT, -EINVAL, -ENAMETOOLONG, -EACCES, -EPROTO (not a
 * shmq ring: foreign, or not a regular file), -ENODATA, -EPROTONOSUPPORT,
 * -EBADMSG, -ENOMEM, -EMFILE. Any thread; a few syscalls per entry. */
int shmq_inspect(const char *name, struct shmq_queue_info *info, struct shmq_consumer_info *out,
                 size_t max);

/* ------------------------------------------------------------------ misc */

/* Flags for shmq_unlink. */
#define SHMQ_UNLINK_FORCE 1u /* unlink even while a live producer holds the queue */

/* Removes queue `name` (its ring and its lock files) from /dev/shm. Open
 * handles keep working; the System V pages go with their last mapping. Refuses with -EBUSY while a live producer holds the
 * queue, since a new producer could then create a second queue under the
 * same name while the old one is still being published to (split brain);
 * SHMQ_UNLINK_FORCE removes it anyway.
 * Returns 0, -EBUSY, -ENOENT, -EINVAL, -ENAMETOOLONG or -EACCES. */
int shmq_unlink(const char *name, unsigned flags);

/* 1 if the queue's name is taken in /dev/shm (by a queue, even one the
 * caller may not open, or by anything else planted there: a FIFO, a
 * directory; shmq_inspect tells them apart), 0 if not, or -EINVAL /
 * -ENAMETOOLONG for a bad name. Never blocks. */
int shmq_exists(const char *name);

/* Bytes a new queue with this geometry takes in /dev/shm (ring and control
 * page; NULL: the defaults), or -EINVAL / -EFBIG for a geometry
 * shmq_producer_open would refuse. For sizing a ring, and for telling a user
 * how much room a failed creation (-ENOSPC) wanted. */
int64_t shmq_queue_size(const struct shmq_config *config);

/* A static sentence for any value these functions return. */
const char *shmq_strerror(int code);

/*
 * LOSSLESS
 *   A queue created with delivery = SHMQ_LOSSLESS keeps the same ring and the
 *   same broadcast: every registered consumer gets every message, and the
 *   producer waits (shmq_producer_publish_wait) for the slowest live one
 *   instead of overwriting what it has not read. A hung but live consumer
 *   therefore stops the producer: that is the contract; shmq_producer_consumers
 *   (or `shmq stat`) shows which one. A dead one stops it for about 10 ms.
 *   A registered consumer that writes garbage into its own entry can stall the
 *   producer like a hung one, never make it overwrite another consumer's
 *   unread slot: a position ahead of the head counts as the head, one more
 *   than a ring behind as exactly a ring behind. Consumers opened with
 *   no_entry are lossy observers.
 *
 * START
 *   SHMQ_START_AT takes any position: one not published yet starts at the
 *   head (as latest), one already overwritten starts at the oldest message
 *   still readable and counts the skipped ones as lost, and one 2^62 or more
 *   behind (garbage: a corrupt pickle, say) starts there without a count.
 *
 * OVERRUN
 *   A consumer reading sequence s finds the slot already holding a later
 *   sequence: the producer lapped it. It then skips to (head - capacity/2),
 *   where head is the producer's next sequence, and adds the skipped count to
 *   its lost counter. Resuming at the oldest slot instead would leave no slack:
 *   under sustained load the slow reader would chase the producer and lose
 *   almost everything; half a ring leaves room to catch up while still
 *   delivering the most recent half of the ring.
 */

#ifdef __cplusplus
}
#endif

#endif

/*
 * shmq: lock-free broadcast of messages between processes on one Linux host.
 *
 * Read this header top to bottom; it is the manual.
 *
 * MODEL
 *   A queue is a ring of `capacity` fixed-size slots in a named shared-memory
 *   segment (/dev/shm/shmq-NAME). One producer publishes messages of up to
 *   `slot_size` bytes; each message gets the next 64-bit sequence number.
 *   Any number of consumers read every message, each at its own position.
 *   The producer never waits for consumers: a consumer that falls more than a
 *   ring behind is overrun. It notices, counts exactly how many messages it
 *   lost, and carries on. A consumer never returns a torn message: a payload is
 *   delivered only if it was copied whole before the producer reused the slot.
 *
 *   Invariant, per consumer: delivered + lost == messages published since the
 *   consumer's start position.
 *
 * ERRORS
 *   Every function that can fail returns a value >= 0 on success and a negative
 *   errno value on failure. The library never prints, never aborts and never
 *   trusts the contents of a segment: a foreign, truncated or corrupt segment
 *   is an error code. The codes that have a shmq-specific meaning:
 *
 *     -EAGAIN           nothing to read (SHMQ_EMPTY); not a failure
 *     -ETIMEDOUT        a blocking poll's timeout ran out
 *     -EINTR            a blocking poll was interrupted by a signal
 *     -EMSGSIZE         message larger than slot_size, or buffer too small
 *     -EBUSY            another live producer holds the queue
 *     -ENOENT           no queue of that name
 *     -EEXIST           the queue exists (exclusive create)
 *     -EINVAL           bad argument or name
 *     -ENAMETOOLONG     name longer than SHMQ_NAME_MAX
 *     -EPROTO           the segment is not a shmq ring (wrong magic)
 *     -ENODATA          the segment is empty or was never fully initialised
 *     -EPROTONOSUPPORT  the segment has a layout version this build can't read
 *     -EBADMSG          the header is corrupt or disagrees with the file size
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
 *   queue locked.
 */
#ifndef SHMQ_H
#define SHMQ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "shmq_region.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SHMQ_EMPTY (-11) /* -EAGAIN: nothing to read */

/* Largest message and ring a queue may be created with. */
#define SHMQ_SLOT_SIZE_MAX (64u * 1024u * 1024u)
#define SHMQ_CAPACITY_MAX (1u << 30)
#define SHMQ_DEFAULT_SLOT_SIZE 1024u
#define SHMQ_DEFAULT_CAPACITY 8192u

struct shmq_producer;
struct shmq_consumer;

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
};

/* ---------------------------------------------------------------- producer */

/* Flags for shmq_producer_open. */
#define SHMQ_CREATE 1u /* create the queue if it does not exist */
#define SHMQ_EXCL 2u   /* with SHMQ_CREATE: fail with -EEXIST if it exists */

/* Opens the producer side of queue `name`; at most one producer per queue.
 * With SHMQ_CREATE a missing queue is created from `config` (NULL: defaults).
 * An existing queue is attached and its sequence continues where the last
 * producer stopped; a non-zero config->slot_size or config->capacity that
 * differs from the queue's gives -EMEDIUMTYPE.
 * The producer lock is released by the kernel when the process dies, so a
 * crashed producer never blocks a new one.
 * Returns 0 and sets *out; or -EBUSY, -ENOENT (no SHMQ_CREATE), -EEXIST,
 * -EMEDIUMTYPE, -EINVAL, -ENAMETOOLONG, -EPROTO, -ENODATA, -EPROTONOSUPPORT,
 * -EBADMSG, -ENOSPC, -EACCES, -ENOMEM, -EMFILE. */
int shmq_producer_open(struct shmq_producer **out, const char *name,
                       const struct shmq_config *config, unsigned flags);

/* Publishes one message of `length` bytes (0..slot_size) and returns its
 * sequence number through *sequence (may be NULL). Never blocks; makes a
 * syscall only when a consumer is asleep in shmq_consumer_poll_wait.
 * Returns 0, -EMSGSIZE (too long; nothing published), -EINVAL (NULL data with
 * non-zero length) or -ECHILD. Producer's thread only. */
int shmq_producer_publish(struct shmq_producer *producer, const void *data, size_t length,
                          uint64_t *sequence);

/* Publishes `count` messages, messages[i] of lengths[i] bytes, with one
 * wake-up check for the batch. All lengths are checked first: on -EMSGSIZE
 * or -EINVAL nothing is published. *last_sequence gets the last message's
 * sequence (unchanged when count is 0). Returns 0, -EMSGSIZE, -EINVAL, -ECHILD. */
int shmq_producer_publish_many(struct shmq_producer *producer, const void *const *messages,
                               const size_t *lengths, size_t count, uint64_t *last_sequence);

/* Sequence number the next message will get. */
uint64_t shmq_producer_next_sequence(const struct shmq_producer *producer);
uint32_t shmq_producer_slot_size(const struct shmq_producer *producer);
uint32_t shmq_producer_capacity(const struct shmq_producer *producer);

/* Releases the producer lock and the mapping. Accepts NULL. The queue stays
 * in /dev/shm until shmq_unlink. */
void shmq_producer_close(struct shmq_producer *producer);

/* ---------------------------------------------------------------- consumer */

enum shmq_start {
    SHMQ_START_LATEST = 0,   /* only messages published after the open */
    SHMQ_START_EARLIEST = 1, /* the oldest message still intact in the ring */
};

/* Opens a consumer on an existing queue. The ring is mapped read-only; only
 * the consumers' own page (the sleepers' count) is writable, so a stray write
 * through a consumer can't corrupt what other consumers read. The segment
 * must still allow the caller to open it read-write (for that page).
 * Returns 0 and sets *out; or -ENOENT, -EINVAL, -ENAMETOOLONG, -EACCES,
 * -EPROTO, -ENODATA, -EPROTONOSUPPORT, -EBADMSG, -ENOMEM, -EMFILE. */
int shmq_consumer_open(struct shmq_consumer **out, const char *name, enum shmq_start start);

/* Copies the next message into buf (buf_size bytes) and stores its length in
 * *length. Never blocks, never makes a syscall.
 * If the consumer was overrun, the skipped messages are added to the lost
 * count and it resumes half a ring behind the producer (see OVERRUN below).
 * Returns 0; SHMQ_EMPTY (-EAGAIN) when nothing is available; -EMSGSIZE when
 * buf_size is smaller than the message (*length gets its size; the message is
 * not consumed); -EBADMSG when a slot holds an impossible length (the slot is
 * skipped and counted as lost). Consumer's thread only. */
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
 * sleeps on the segment's futex. Meant for callers that must poll in another
 * context than they wait in (with a lock held, say).
 * Returns 0, -ETIMEDOUT, or -EINTR if a signal arrived while it slept. */
int shmq_consumer_wait(struct shmq_consumer *consumer, int64_t timeout_ns);

/* Like shmq_consumer_poll, but waits up to timeout_ns nanoseconds
 * (CLOCK_MONOTONIC) for a message: 0 does not wait, a negative value waits
 * forever. It first spins (shmq_consumer_set_spin), then sleeps in the kernel
 * on a futex in the segment; every wake-up re-checks the ring.
 * Returns what shmq_consumer_poll returns, or -ETIMEDOUT, or -EINTR if a
 * signal arrived while it slept (poll again to continue). */
int shmq_consumer_poll_wait(struct shmq_consumer *consumer, void *buf, size_t buf_size,
                            size_t *length, int64_t timeout_ns);

/* Copies as many whole messages as fit, up to max_messages, into buf, one
 * after the other; lengths[i] gets the i-th one's length. Never blocks.
 * Returns the number of messages copied (0 when none is available), or
 * -EMSGSIZE when even the first message does not fit (nothing consumed), or
 * -EBADMSG as shmq_consumer_poll. */
int shmq_consumer_poll_many(struct shmq_consumer *consumer, void *buf, size_t buf_size,
                            size_t *lengths, size_t max_messages);

/* Spin iterations before a blocking poll goes to sleep (default 0: sleep at
 * once). Spinning trades CPU for wake-up latency. */
void shmq_consumer_set_spin(struct shmq_consumer *consumer, uint32_t iterations);

/* Next sequence this consumer will read. */
uint64_t shmq_consumer_position(const struct shmq_consumer *consumer);
/* Messages lost to overrun since the open, cumulative. */
uint64_t shmq_consumer_lost(const struct shmq_consumer *consumer);
uint32_t shmq_consumer_slot_size(const struct shmq_consumer *consumer);
uint32_t shmq_consumer_capacity(const struct shmq_consumer *consumer);

/* Unmaps. Accepts NULL. Never unlinks. */
void shmq_consumer_close(struct shmq_consumer *consumer);

/* ------------------------------------------------------------------ misc */

/* Removes queue `name` from /dev/shm. Open handles keep working.
 * Returns 0, -ENOENT, -EINVAL, -ENAMETOOLONG or -EACCES. */
int shmq_unlink(const char *name);

/* A static sentence for any value these functions return. */
const char *shmq_strerror(int code);

/*
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

/*
 * Waiting on a descriptor: shmq_consumer_fileno and shmq_producer_fileno,
 * for select, poll, epoll and event loops. docs/waiting.md has the design
 * and the readiness rule; wake_socket.c the sockets themselves.
 *
 * CONSUMER. The descriptor is the consumer's wake socket. It is readable
 * while a datagram is queued on it, and the protocol keeps one queued
 * whenever a poll could return something:
 *   - a poll that finds nothing "quiets" the descriptor: it drains the
 *     socket, bumps `armed` in its own entry page, raises
 *     SHMQ_WAKE_DESCRIPTOR in the wake page, and checks the ring once more;
 *     if that finds a message or the end of the stream, it queues a token
 *     to itself. Otherwise the descriptor stays quiet until the producer
 *     sends. Making the descriptor quiets it the same way;
 *   - the producer, after a publish, finds the flag raised (the same Dekker
 *     handshake as the futex sleepers: consumer.c, SLEEPING), clears it and
 *     sends one datagram to every consumer whose `armed` moved since it last
 *     sent to it (wake_descriptors below).
 * Every poll that finds nothing drains (one recv): whatever put a datagram
 * there, the next poll that finds nothing takes it away, so the descriptor
 * can never stay readable while polls return nothing. The cost is that
 * syscall, paid by a consumer that holds a descriptor and polls an empty
 * ring; consumers that never call shmq_consumer_fileno pay nothing.
 *
 * TRUST. The producer sends only to the socket named by a live entry's page
 * id (which the kernel tells, from the consumer's lock) and the nonce in
 * that page, and never blocks (wake_socket.c). A consumer can point the
 * producer only at a name containing its own page's id, and can make it
 * send one datagram per publish at most, as it can already make it wake a
 * futex per publish. The socket takes only datagrams that carry its key,
 * which is in the entry page: processes that cannot read the queue cannot
 * make it readable.
 *
 * PRODUCER (lossless). Its descriptor is its own wake socket, named by a
 * nonce and keyed by a key it publishes in the control page.
 * shmq_producer_wait_room(p, 0) that finds no room drains it and raises
 * SHMQ_WAKE_DESCRIPTOR in producer_waiting beside the futex flag; the
 * consumer that frees the room the producer asked for (backpressure.c,
 * wake_producer) sends it one datagram. A consumer that dies frees nothing
 * and sends nothing: callers wait on the descriptor for at most
 * SHMQ_ROOM_RECHECK_NS and then call shmq_producer_wait_room(p, 0) again,
 * which asks the kernel about dead consumers as a blocking wait does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <unistd.h>

#include "ring_internal.h"

/* Tells the producer to look at our entry again before its next round of
 * wake-ups: it has a socket now. */
static void announce_join(struct shmq_consumer *c)
{
    struct shmq_wake_page *wake = c->consumers.wake;
    uint32_t i = (uint32_t)c->entry_index;
    if (wake == NULL || c->entry_index < 0 || i >= SHMQ_CONSUMER_ENTRIES_MAX)
        return;
    /* Seq_cst: ordered after the nonce and key stores (the producer reads
     * them after it takes the bit), and before our first arm. */
    shmq_fetch_or_seq_cst(&wake->joined[i / 64], UINT64_C(1) << (i % 64));
}

int shmq_consumer_fileno(struct shmq_consumer *c)
{
    if (c == NULL)
        return -EINVAL;
    if (c->wake_fd >= 0)
        return c->wake_fd;
    /* The socket's name needs an entry page of our own: the producer finds
     * the socket from it. A consumer opened without one (an observer that
     * does not register) takes one now, still unregistered. */
    if (c->entry_index < 0) {
        int rc = shmq_consumer_claim_late(c);
        if (rc < 0)
            return rc == -ENOENT ? -EUSERS : rc;
    }
    if (c->consumers.own == NULL || c->consumers.own_id < 0)
        return -EUSERS;
    uint64_t nonce = shmq_wake_nonce(), key = shmq_wake_nonce();
    int fd = shmq_wake_socket_open(c->geometry.instance, c->consumers.own_id, nonce, key);
    if (fd < 0)
        return fd;
    c->wake_fd = fd;
    c->wake_key = key;
    /* Relaxed: published, with the page's other fields, by the seq_cst
     * fetch_or of the wake flag when we arm (shmq_consumer_quiet), which
     * the producer's exchange reads before it reads these. */
    shmq_store_relaxed(&c->entry->wake_key, key);
    shmq_store_relaxed(&c->entry->wake_nonce, nonce);
    announce_join(c);
    /* Armed at once: readable exactly when a poll would find something. */
    c->wake_token = 0;
    shmq_consumer_quiet(c);
    return fd;
}

void shmq_consumer_quiet(struct shmq_consumer *c)
{
    if (c->wake_token && shmq_consumer_ended(c))
        return; /* the end stays readable */
    shmq_wake_socket_drain(c->wake_fd);
    c->wake_token = 0;
    /* As in sleep_until_published (consumer.c): a consumer that opened
     * before any producer made a wake page attaches the current one. */
    if (c->consumers.wake == NULL && c->consumers.entry_count != 0 &&
        /* Relaxed: only a hint to try; the attach loads it with acquire. */
        shmq_load_relaxed(&c->control->wake_shm) != c->consumers.wake_tried &&
        shmq_consumers_attach_wake(&c->consumers, c->control) == 0)
        announce_join(c); /* we could not tell the producer before */
    /* Release: our entry; published to the producer by the fetch_or below.
     * A new value asks for one more datagram: the one we may just have
     * drained was the answer to the last. */
    shmq_store_release(&c->entry->armed, ++c->wake_armed_count);
    struct shmq_wake_page *wake = c->consumers.wake;
    if (wake != NULL)
        /* Seq_cst: the consumer half of the Dekker handshake with the fence
         * in finish_publish (producer.c), as a futex sleeper's flag is. */
        shmq_fetch_or_seq_cst(&wake->wake_flag, SHMQ_WAKE_DESCRIPTOR);
    /* Seq_cst (inside): ordered after the flag, as the handshake needs.
     * Without a wake page no publish will answer the flag; the next
     * producer to open wakes every armed entry. */
    if (shmq_consumer_ready(c)) {
        shmq_wake_socket_token(c->wake_fd, c->wake_key);
        c->wake_token = 1;
    }
}

int shmq_consumer_rearm(struct shmq_consumer *c)
{
    if (c == NULL || c->wake_fd < 0)
        return -EINVAL;
    /* Tells the producer about our entry again: another consumer may have
     * cleared our joined bit before the producer saw it. */
    announce_join(c);
    /* A group member looks for dead members' claims too: a claim it takes
     * over makes the descriptor readable (the re-check in quiet). */
    if (c->group != NULL)
        shmq_group_rescue(c);
    shmq_consumer_quiet(c);
    return 0;
}

/* ---------------------------------------------------------- the producer */

/* Joiners whose entries a round looks at one by one; more than this at
 * once is a burst (a pool starting), answered by one full listing. */
#define JOIN_CHECKS_PER_ROUND 4
/* How much of the producer's time looking at joiners may take, as the wait
 * after a look in multiples of how long it took: full listings a tenth,
 * looks at single entries a half. Normal joiners never come that fast; a
 * consumer that sets every bit on every publish can then cost the
 * producer no more than that share. */
#define LISTING_SHARE 9
#define CHECK_SHARE 1

/* Gives bits back for a later round, and raises the flag so that the next
 * publish makes one. */
static void look_later(struct shmq_wake_page *wake, uint32_t word, uint64_t bits)
{
    /* Seq_cst: as the joiner's own fetch_or. */
    shmq_fetch_or_seq_cst(&wake->joined[word], bits);
    shmq_fetch_or_seq_cst(&wake->wake_flag, SHMQ_WAKE_DESCRIPTOR);
}

/* Looks again at the entries whose consumers announced a socket (joined
 * bits). Each costs a few syscalls, and any consumer may set every bit on
 * every publish, so a round does a bounded amount of it (see the shares
 * above); what is left waits for the next round. */
static void look_at_joiners(struct shmq_producer *p)
{
    struct shmq_consumer_state *cs = &p->consumers;
    struct shmq_wake_page *wake = cs->wake;
    uint32_t words = (cs->entry_count + 63) / 64;
    unsigned pending = 0;
    for (uint32_t w = 0; w < words; w++)
        /* Relaxed: a count to choose how to look; the bits are taken below. */
        pending += (unsigned)__builtin_popcountll(shmq_load_relaxed(&wake->joined[w]));
    if (pending == 0)
        return;
    int64_t now = shmq_now_ns();
    if (now < p->joiners_allowed_at) {
        /* Seq_cst: the flag alone; the bits stay where they are. */
        shmq_fetch_or_seq_cst(&wake->wake_flag, SHMQ_WAKE_DESCRIPTOR);
        return;
    }
    if (pending > JOIN_CHECKS_PER_ROUND && now >= p->listing_allowed_at) {
        for (uint32_t w = 0; w < words; w++)
            /* Seq_cst: pairs with the joiner's fetch_or; its nonce and key,
             * stored before, are visible to the reads of this round. */
            shmq_exchange_seq_cst(&wake->joined[w], 0);
        shmq_consumers_discover(cs);
        int64_t done = shmq_now_ns();
        p->listing_allowed_at = done + LISTING_SHARE * (done - now);
        p->joiners_allowed_at = done + CHECK_SHARE * (done - now);
        return;
    }
    unsigned budget = JOIN_CHECKS_PER_ROUND;
    for (uint32_t w = 0; w < words; w++) {
        /* Seq_cst: as above. */
        uint64_t bits = budget > 0 ? shmq_exchange_seq_cst(&wake->joined[w], 0) : 0;
        while (bits != 0 && budget > 0) {
            unsigned bit = (unsigned)__builtin_ctzll(bits);
            bits &= bits - 1;
            budget--;
            shmq_consumers_discover_one(cs, w * 64 + bit);
        }
        if (bits != 0)
            look_later(wake, w, bits);
    }
    int64_t done = shmq_now_ns();
    p->joiners_allowed_at = done + CHECK_SHARE * (done - now);
}

#define SEND_AGAIN 1

/* Sends one wake-up to the consumer of view v: 0, SEND_AGAIN (nothing was
 * sent and the next round must try again), or another negative errno
 * (nobody to wake: answered). Each consumer's datagrams go out of a socket
 * of their own, connected to its: a datagram counts against its sender's
 * buffer until the receiver reads it, so one shared sender would stop
 * waking anyone once a few hundred waiters (idle ones, or a consumer that
 * never reads) held a datagram each. */
static int send_to_view(struct shmq_producer *p, struct shmq_entry_view *v, uint64_t nonce,
                        uint64_t key)
{
    if (v->sender < 0 || v->sender_nonce != nonce) {
        int fd = shmq_wake_sender_connect(v->sender, p->geometry.instance, v->shm_id, nonce);
        v->sender = fd < 0 ? -1 : fd;
        v->sender_nonce = nonce;
        if (fd == -ECONNREFUSED || fd == -ENOENT)
            return fd; /* nothing bound there */
        if (fd < 0) {
            /* Out of descriptors: the shared sender, whose buffer may be full. */
            int rc = shmq_wake_socket_send(p->wake_sender, p->geometry.instance, v->shm_id,
                                           nonce, key);
            return rc == -EAGAIN || rc == -ENOBUFS ? SEND_AGAIN : rc;
        }
    }
    /* EAGAIN here is the receiver's queue, full: a wake-up is waiting there. */
    int rc = shmq_wake_sender_send(v->sender, key);
    return rc == -ENOBUFS ? SEND_AGAIN : rc;
}

/* Sends one datagram to each consumer whose `armed` moved since the last
 * one it got (everyone: to every armed consumer, as a new producer or a
 * closing one must). */
void shmq_producer_wake_descriptors(struct shmq_producer *p, int everyone)
{
    struct shmq_consumer_state *cs = &p->consumers;
    if (cs->views == NULL || p->forked)
        return;
    if (p->wake_sender < 0) {
        p->wake_sender = shmq_wake_sender_open();
        if (p->wake_sender < 0)
            return; /* out of descriptors: waiters re-check at their timeouts */
    }
    if (everyone)
        shmq_consumers_discover(cs);
    else if (cs->wake != NULL)
        look_at_joiners(p);
    int retry = 0;
    for (uint32_t i = 0; i < cs->entry_count; i++) {
        struct shmq_entry_view *v = &cs->views[i];
        if (v->entry == NULL)
            continue;
        /* Acquire: pairs with the consumer's release store of armed; the
         * exchange of wake_flag before us already ordered it. */
        uint32_t armed = shmq_load_acquire(&v->entry->armed);
        if (armed == 0 || (!everyone && v->woken_id == v->shm_id && armed == v->woken_armed))
            continue;
        /* Relaxed: the consumer stored them before its first arm, published
         * by the same fetch_or. Any value only names a socket with its id. */
        uint64_t nonce = shmq_load_relaxed(&v->entry->wake_nonce);
        uint64_t key = shmq_load_relaxed(&v->entry->wake_key);
        if (nonce == 0)
            continue;
        int rc = send_to_view(p, v, nonce, key);
        if (rc == SEND_AGAIN) {
            retry = 1;
            continue;
        }
        v->woken_id = v->shm_id;
        v->woken_armed = armed;
        p->descriptor_wakeups += rc == 0;
    }
    if (retry && cs->wake != NULL)
        /* Seq_cst: as a sleeper's flag; the next publish makes another round. */
        shmq_fetch_or_seq_cst(&cs->wake->wake_flag, SHMQ_WAKE_DESCRIPTOR);
}

int shmq_producer_fileno(struct shmq_producer *p)
{
    if (p == NULL)
        return -EINVAL;
    if (p->forked)
        return -ECHILD;
    if (!p->geometry.lossless)
        return -EOPNOTSUPP;
    if (p->wake_fd >= 0)
        return p->wake_fd;
    uint64_t nonce = shmq_wake_nonce(), key = shmq_wake_nonce();
    int fd = shmq_wake_socket_open(p->geometry.instance, -1, nonce, key);
    if (fd < 0)
        return fd;
    p->wake_fd = fd;
    p->wake_key = key;
    /* Relaxed: published by the release store of the nonce just below. */
    shmq_store_relaxed(&p->control->producer_key, key);
    /* Release: pairs with the consumers' acquire load in wake_producer
     * (backpressure.c); the socket is bound before anyone can read it. */
    shmq_store_release(&p->control->producer_nonce, nonce);
    /* Readable at first: a caller checks for room before it waits. */
    shmq_wake_socket_token(fd, key);
    return fd;
}

void shmq_producer_quiet(struct shmq_producer *p)
{
    shmq_wake_socket_drain(p->wake_fd);
}

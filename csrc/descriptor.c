/*
 * Waiting on a descriptor: shmq_consumer_fileno and shmq_producer_fileno,
 * for select, poll, epoll and event loops. docs/waiting.md has the design
 * and the readiness rule; wake_socket.c the sockets themselves.
 *
 * CONSUMER. The descriptor is the consumer's wake socket. It is readable
 * while a datagram is queued on it, and the protocol keeps one queued
 * whenever a poll could return something:
 *   - at creation, the consumer queues a token to itself;
 *   - a poll that finds nothing "quiets" the descriptor: it drains the
 *     socket, bumps `armed` in its own entry page, raises
 *     SHMQ_WAKE_DESCRIPTOR in the wake page, and checks the ring once more;
 *     if that finds a message or the end of the stream, it queues a token
 *     again. Otherwise the descriptor stays quiet until the producer sends;
 *   - the producer, after a publish, finds the flag raised (the same Dekker
 *     handshake as the futex sleepers: consumer.c, SLEEPING), clears it and
 *     sends one datagram to every consumer whose `armed` moved since it last
 *     sent to it (wake_descriptors below).
 * A quiet consumer whose poll finds nothing again makes no syscall, unless
 * the producer has sent wake-ups since it armed (wake_epoch moved): then
 * it drains and arms again. So a consumer that spins on poll(timeout=0)
 * while holding a descriptor costs two loads per empty poll.
 *
 * TRUST. The producer sends only to the socket named by a live entry's page
 * id (which the kernel tells, from the consumer's lock) and the nonce in
 * that page, and never blocks (wake_socket.c). A consumer can point the
 * producer only at a name containing its own page's id, and can make it
 * send one datagram per publish at most, as it can already make it wake a
 * futex per publish.
 *
 * PRODUCER (lossless). Its descriptor is its own wake socket, named by a
 * nonce it publishes in the control page. shmq_producer_wait_room(p, 0)
 * that finds no room drains it and raises SHMQ_WAKE_DESCRIPTOR in
 * producer_waiting beside the futex flag; the consumer that frees the room
 * the producer asked for (backpressure.c, wake_producer) sends it one
 * datagram. A consumer that dies frees nothing and sends nothing: callers
 * wait on the descriptor for at most SHMQ_ROOM_RECHECK_NS and then call
 * shmq_producer_wait_room(p, 0) again, which asks the kernel about dead
 * consumers as a blocking wait does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <unistd.h>

#include "ring_internal.h"

int shmq_consumer_fileno(struct shmq_consumer *c)
{
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
    uint64_t nonce = shmq_wake_nonce();
    int fd = shmq_wake_socket_open(c->geometry.instance, c->consumers.own_id, nonce);
    if (fd < 0)
        return fd;
    c->wake_fd = fd;
    c->wake_nonce = nonce;
    /* Relaxed: published, with the page's other fields, by the seq_cst
     * fetch_or of the wake flag when we first arm (shmq_consumer_quiet),
     * which the producer's exchange reads before it reads this. */
    shmq_store_relaxed(&c->entry->wake_nonce, nonce);
    struct shmq_wake_page *wake = c->consumers.wake;
    if (wake != NULL)
        /* Seq_cst: tells the producer to list the entries again before its
         * next descriptor wake-up; ordered after the nonce store. */
        shmq_fetch_add_seq_cst(&wake->descriptor_joins, 1);
    /* Armed at once: readable exactly when a poll would find something. */
    c->wake_token = 0;
    c->wake_armed = 0;
    shmq_consumer_quiet(c);
    return fd;
}

void shmq_consumer_quiet(struct shmq_consumer *c)
{
    if (c->wake_armed) {
        /* Acquire: pairs with the producer's release store that ends a
         * round of wake-ups (wake_descriptors): unchanged and even, no
         * datagram was sent since we armed, so the socket is empty. */
        uint32_t epoch = shmq_load_acquire(&c->control->wake_epoch);
        struct shmq_wake_page *raised = c->consumers.wake;
        /* Relaxed: only whether to arm again. The flag down with no round
         * since means someone else cleared it (a consumer may write the
         * page): raise it again, or the producer would never send. */
        if (epoch == c->wake_epoch_seen && !(epoch & 1) &&
            (raised == NULL ||
             (shmq_load_relaxed(&raised->wake_flag) & SHMQ_WAKE_DESCRIPTOR)))
            return;
    }
    if (c->wake_token && shmq_consumer_ended(c))
        return; /* the end stays readable */
    shmq_wake_socket_drain(c->wake_fd);
    c->wake_token = 0;
    c->wake_armed = 0;
    /* As in sleep_until_published (consumer.c): a consumer that opened
     * before any producer made a wake page attaches the current one. */
    if (c->consumers.wake == NULL && c->consumers.entry_count != 0 &&
        /* Relaxed: only a hint to try; the attach loads it with acquire. */
        shmq_load_relaxed(&c->control->wake_shm) != c->consumers.wake_tried &&
        shmq_consumers_attach_wake(&c->consumers, c->control) == 0)
        /* Seq_cst: as in shmq_consumer_fileno, for a producer that listed
         * the entries before we could tell it. */
        shmq_fetch_add_seq_cst(&c->consumers.wake->descriptor_joins, 1);
    /* Acquire: as above; recorded before we arm, so any round that could
     * have missed our new `armed` ends with a later value. */
    c->wake_epoch_seen = shmq_load_acquire(&c->control->wake_epoch);
    /* Release: our entry; published to the producer by the fetch_or below,
     * as the nonce is. */
    shmq_store_release(&c->entry->armed, ++c->wake_armed_count);
    struct shmq_wake_page *wake = c->consumers.wake;
    if (wake != NULL)
        /* Seq_cst: the consumer half of the Dekker handshake with the fence
         * in finish_publish (producer.c), as a futex sleeper's flag is. */
        shmq_fetch_or_seq_cst(&wake->wake_flag, SHMQ_WAKE_DESCRIPTOR);
    /* Seq_cst (inside): ordered after the flag, as the handshake needs.
     * Without a wake page no publish will answer the flag; the next
     * producer to open wakes every armed entry (shmq_producer_wake_all). */
    if (shmq_consumer_ready(c)) {
        shmq_wake_socket_token(c->wake_fd);
        c->wake_token = 1;
        return;
    }
    c->wake_armed = 1;
}

/* ---------------------------------------------------------- the producer */

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
    struct shmq_wake_page *wake = cs->wake;
    /* Relaxed: a hint to list again; the listing itself asks the kernel. */
    uint32_t joins = wake ? shmq_load_relaxed(&wake->descriptor_joins) : 0;
    if (everyone || joins != p->joins_seen) {
        p->joins_seen = joins;
        shmq_consumers_discover(cs);
    }
    /* Odd while we send (only we write it; see shmq_consumer_quiet). Seq_cst:
     * visible before any datagram below is. */
    uint32_t epoch = shmq_load_relaxed(&p->control->wake_epoch) | 1u;
    shmq_store_seq_cst(&p->control->wake_epoch, epoch);
    for (uint32_t i = 0; i < cs->entry_count; i++) {
        struct shmq_entry_view *v = &cs->views[i];
        if (v->entry == NULL)
            continue;
        /* Acquire: pairs with the consumer's release store of armed; the
         * exchange of wake_flag before us already ordered it. */
        uint32_t armed = shmq_load_acquire(&v->entry->armed);
        if (armed == 0 || (!everyone && v->woken_id == v->shm_id && armed == v->woken_armed))
            continue;
        v->woken_id = v->shm_id;
        v->woken_armed = armed;
        /* Relaxed: the consumer stored it before its first arm, published by
         * the same fetch_or. Any value only names a socket with its id. */
        uint64_t nonce = shmq_load_relaxed(&v->entry->wake_nonce);
        if (nonce == 0)
            continue;
        if (shmq_wake_socket_send(p->wake_sender, p->geometry.instance, v->shm_id, nonce) == 0)
            p->descriptor_wakeups++;
    }
    /* Release: pairs with the consumer's acquire load in quiet. */
    shmq_store_release(&p->control->wake_epoch, epoch + 1);
}

int shmq_producer_fileno(struct shmq_producer *p)
{
    if (p->forked)
        return -ECHILD;
    if (!p->geometry.lossless)
        return -EOPNOTSUPP;
    if (p->wake_fd >= 0)
        return p->wake_fd;
    uint64_t nonce = shmq_wake_nonce();
    int fd = shmq_wake_socket_open(p->geometry.instance, -1, nonce);
    if (fd < 0)
        return fd;
    p->wake_fd = fd;
    /* Release: pairs with the consumers' acquire load in wake_producer
     * (backpressure.c); the socket is bound before anyone can read it. */
    shmq_store_release(&p->control->producer_nonce, nonce);
    shmq_wake_socket_token(fd);
    return fd;
}

void shmq_producer_quiet(struct shmq_producer *p)
{
    shmq_wake_socket_drain(p->wake_fd);
}

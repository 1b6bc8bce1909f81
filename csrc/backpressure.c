/*
 * The lossless mode: registered consumers hold the producer back.
 *
 * PROTOCOL. A registered consumer publishes its position (the next sequence
 * it will read) in its entry of the consumer-state object, and marks the
 * entry SHMQ_ENTRY_REGISTERED. Publishing a record overwrites the records
 * below its survivor (producer.c, RECORDS: at least s - capacity for
 * sequence s), so the producer may publish it only when every live
 * registered consumer's position is at or above that survivor. It keeps
 * that bound in a private `limit` (lowest position + capacity, and never
 * more than a lap past the head it had when it looked), compares the
 * record's `need` (survivor + capacity - 1) with it, and looks at the
 * entries again only when publishing reaches the limit: with consumers that
 * keep up, once per lap at most, not once per message.
 *
 * REGISTERING (consumer) vs LOOKING (producer), a Dekker handshake:
 *   consumer: position = provisional; state = registered (seq_cst);
 *             H = head (seq_cst); position = start computed from H (seq_cst)
 *   producer: head = h (release); fence (seq_cst); state, position loads
 *   Either the producer sees the registration and respects the provisional
 *   position (never above the final one), or the consumer's load of head
 *   sees h, and the limit the producer computed without it lets it rewrite
 *   only sequences below h <= H. A consumer starting at H or later loses
 *   nothing. One starting earlier ("earliest") can find messages below H
 *   rewritten while it registered (one large record rewrites several
 *   small ones): those are counted as lost, the way a lossy consumer counts
 *   an overrun, and only those.
 *
 * WAITING (producer) vs RELEASING (consumer), another Dekker handshake:
 *   producer: wake_at = what it needs; w = futex (seq_cst);
 *             waiting = 1 (seq_cst); fence; look again; sleep on futex if
 *             still full, for at most WAIT_SLICE_NS
 *   consumer, after each read: position (seq_cst store); waiting
 *             (seq_cst load); if raised and position >= wake_at: clear it,
 *             bump futex, wake the producer
 *   Either the producer's second look sees the position, or the consumer
 *   sees the flag. wake_at asks for a quarter of the ring (at least one
 *   slot) before waking, so a producer that fills the ring is woken once
 *   per quarter ring, not once per message.
 *
 * DISCOVERY. Each consumer's entry is its own System V page, found from
 * the lock it holds on its byte of NAME.consumers (consumer_state.c).
 * Listing them costs syscalls, so the producer lists them only every half
 * lap (and every WAIT_SLICE_NS while blocked), and in between re-reads the
 * entries it knows. That is enough for the REGISTERING handshake: a
 * consumer takes its lock and makes its page before it stores its
 * registration and loads head, so a listing that misses it was ordered (by
 * the kernel's lock on the lock list, or on the key table) before its load
 * of head, which then sees at least the head of that listing; and between
 * listings the producer never publishes more than a lap past that head.
 *
 * DEATH. A consumer killed while registered leaves its page behind, but
 * the kernel drops the lock on its byte. While blocked, the producer asks
 * the kernel (F_OFD_GETLK) about the entries that hold it back, every
 * WAIT_SLICE_NS, and forgets any whose lock is gone; a consumer that claims
 * the byte again makes a new page, which the next listing finds.
 *
 * GARBAGE. An entry is the consumer's own memory and may hold anything. A
 * position ahead of head is taken as head (the consumer only loses its own
 * messages); one more than a ring behind is taken as exactly a ring behind
 * (the producer stalls, as for a hung consumer). Either way the producer
 * never rewrites a slot another registered consumer has not read, never
 * reads out of bounds and never crashes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <time.h>
#include <unistd.h>

#include "ring_internal.h"

/* Longest sleep of a blocked producer: also how often it asks the kernel
 * whether the consumers it waits for are still alive. */
#define WAIT_SLICE_NS (10LL * 1000 * 1000)
/* Looks at the entries this many times, spinning, before sleeping. */
#define SPIN_LOOKS 64

static void wake_producer(struct shmq_consumer *c);

int64_t shmq_now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* Recomputes p->limit from the entries of the live consumers; with
 * discover, first lists them anew (DISCOVERY above); with probe_liveness,
 * asks the kernel about every entry that keeps the next sequence from
 * fitting. Returns whether the planned record fits now. */
int shmq_backpressure_has_room(struct shmq_producer *p, int discover, int probe_liveness)
{
    struct shmq_consumer_state *cs = &p->consumers;
    uint64_t head = p->next, capacity = p->geometry.capacity;
    /* Seq_cst fence: the producer half of both handshakes (see top): orders
     * our head store, and our raising of producer_waiting, before the
     * listing and the loads of the entries below. */
    shmq_fence_seq_cst();
    if (discover) {
        shmq_consumers_discover(cs);
        p->discovered_at = head;
    }
    /* A consumer that registered since the last listing is known only from
     * the next one: until then, publish no further than a lap past the head
     * of that listing, which is no later than its start. */
    uint64_t lowest = (int64_t)(p->discovered_at - head) < 0 ? p->discovered_at : head;
    for (uint32_t i = 0; i < cs->entry_count; i++) {
        struct shmq_consumer_entry *e = cs->views[i].entry;
        if (cs->views[i].unclear) {
            /* Someone planted a second id lock for this entry: we cannot
             * tell its page, so we wait for it as for a consumer a lap
             * behind (a hostile consumer can stall a lossless producer as
             * a hung one can; it can never make it overwrite), until its
             * holder is gone. */
            if (probe_liveness && shmq_consumers_entry_live(cs, i) == 0) {
                shmq_consumers_forget(cs, i);
                continue;
            }
            if ((int64_t)(head - capacity - lowest) < 0)
                lowest = head - capacity;
            continue;
        }
        if (e == NULL)
            continue;
        /* Acquire: pairs with the consumer's seq_cst store of its state in
         * shmq_backpressure_register, so the provisional position it stored
         * before is what the position load below sees at least. */
        uint32_t state = shmq_load_acquire(&e->state);
        if (!(state & SHMQ_ENTRY_REGISTERED))
            continue;
        /* Acquire: pairs with the consumer's seq_cst store of its position
         * in shmq_backpressure_release: its reads of every slot below that
         * position happen before we rewrite them. */
        uint64_t position = shmq_load_acquire(&e->position);
        if ((int64_t)(position - head) > 0)
            position = head;
        if (head - position > capacity)
            position = head - capacity;
        if (probe_liveness && head - position >= capacity &&
            shmq_consumers_entry_live(cs, i) == 0) {
            shmq_consumers_forget(cs, i);
            continue;
        }
        if ((int64_t)(position - lowest) < 0)
            lowest = position;
    }
    /* Each group is one reader: its lowest claim, or its cursor. */
    if (probe_liveness)
        cs->group_holds_dead = 0;
    for (uint32_t g = 0; g < SHMQ_GROUPS_MAX; g++) {
        struct shmq_group_view *v = &cs->groups[g];
        if (v->count == 0 && !v->unclear)
            continue;
        if (probe_liveness && shmq_consumers_group_live(cs, g) == 0) {
            shmq_consumers_forget_group(cs, g);
            continue;
        }
        if (v->unclear && (int64_t)(head - capacity - lowest) < 0)
            lowest = head - capacity;
        for (int k = 0; k < v->count; k++) {
            uint64_t low = shmq_group_low(cs, g, v->page[k], head, capacity, probe_liveness,
                                          &cs->group_holds_dead);
            if ((int64_t)(low - lowest) < 0)
                lowest = low;
        }
    }
    p->limit = lowest + capacity;
    return (int64_t)(p->need - p->limit) < 0;
}

/* Looks for room, asking the kernel about dead consumers (probing) at most
 * once per WAIT_SLICE_NS: how a waiting producer notices them. */
static int has_room_probing(struct shmq_producer *p, int64_t now)
{
    int probe = now >= p->next_probe_ns;
    if (probe)
        p->next_probe_ns = now + WAIT_SLICE_NS;
    return shmq_backpressure_has_room(p, probe, probe);
}

/* The position a consumer must reach to wake a waiting producer: a quarter
 * ring past what the planned record needs (so that a producer that fills
 * the ring is woken once per quarter ring, not once per message), but never
 * past head, which consumers that caught up stop at. */
static uint64_t wake_at(const struct shmq_producer *p)
{
    uint64_t capacity = p->geometry.capacity;
    uint64_t quarter = capacity / 4 ? capacity / 4 : 1;
    uint64_t at = p->need - capacity + quarter;
    return (int64_t)(at - p->next) > 0 ? p->next : at;
}

int shmq_backpressure_wait(struct shmq_producer *p, int64_t deadline_ns)
{
    struct shmq_wake_page *wake = p->consumers.wake;
    for (;;) {
        int interrupted = shmq_waiter_take_interrupt(&p->waiter);
        if (interrupted < 0)
            return interrupted;
        int64_t now = shmq_now_ns();
        if (has_room_probing(p, now))
            return 0;
        if (p->consumers.group_holds_dead) {
            /* A dead member's claim holds us: the group's members take it
             * over when they look (group.c, RESCUE); wake them to look. */
            p->consumers.group_holds_dead = 0;
            shmq_producer_kick(p);
        }
        if (deadline_ns >= 0 && now >= deadline_ns)
            return -ETIMEDOUT;
        for (int look = 0; look < SPIN_LOOKS; look++) {
            shmq_cpu_relax();
            if (shmq_backpressure_has_room(p, 0, 0))
                return 0;
        }
        /* Relaxed: published by the seq_cst store of producer_waiting below,
         * which a consumer loads (seq_cst) before it loads this. */
        shmq_store_relaxed(&wake->producer_wake_at, wake_at(p));
        /* Seq_cst: read before raising the flag, so a wake that answers the
         * flag changes the word from the value we sleep on. */
        uint32_t word = shmq_load_seq_cst(&wake->producer_futex);
        /* Seq_cst: the producer half of the waiting handshake (see top). */
        shmq_store_seq_cst(&wake->producer_waiting, 1);
        if (shmq_backpressure_has_room(p, 0, 0)) {
            /* Relaxed: a stale raised flag only costs a consumer one wake. */
            shmq_store_relaxed(&wake->producer_waiting, 0);
            return 0;
        }
        int64_t until = now + WAIT_SLICE_NS;
        if (deadline_ns >= 0 && deadline_ns < until)
            until = deadline_ns;
        struct timespec ts = {.tv_sec = (time_t)(until / 1000000000),
                              .tv_nsec = (long)(until % 1000000000)};
        int rc = shmq_waiter_sleep(&p->waiter, &wake->producer_futex, word, &ts);
        if (rc == -ETIMEDOUT || rc == -EINTR) {
            rc = shmq_waiter_between(&p->waiter, rc == -EINTR);
            if (rc < 0)
                return rc;
        }
    }
}

void shmq_backpressure_wake_producer(struct shmq_consumer *c, uint64_t position)
{
    struct shmq_wake_page *wake = c->consumers.wake;
    /* Seq_cst: the consumer half of the waiting handshake (see top), after
     * the caller's seq_cst store (a position, or a member's token). Without
     * the wake page a waiting producer finds it at its next slice. Relaxed
     * wake_at: published by the producer's seq_cst store of the flag. */
    if (wake != NULL && shmq_load_seq_cst(&wake->producer_waiting) &&
        (int64_t)(position - shmq_load_relaxed(&wake->producer_wake_at)) >= 0)
        wake_producer(c);
}

/* Clears the producer's waiting flag and, if this call is the one that
 * cleared it, wakes the producer: one wake per wait, however many consumers
 * see the flag at once. */
static void wake_producer(struct shmq_consumer *c)
{
    struct shmq_wake_page *wake = c->consumers.wake;
    /* Seq_cst: the consumer half of the waiting handshake (see top); only
     * the exchange that finds the flag raised goes on to wake. */
    uint32_t raised = shmq_exchange_seq_cst(&wake->producer_waiting, 0);
    if (!raised)
        return;
    /* Seq_cst: pairs with the producer's seq_cst load of producer_futex
     * before it raised the flag; the bump makes its wait on the old value
     * return at once if it had not gone to sleep yet. */
    shmq_fetch_add_seq_cst(&wake->producer_futex, 1);
    shmq_futex_wake_one(&wake->producer_futex);
    if (!(raised & SHMQ_WAKE_DESCRIPTOR))
        return;
    /* Acquire: pairs with the release store of the nonce in
     * shmq_producer_fileno, made once its socket was bound. */
    uint64_t nonce = shmq_load_acquire(&c->control->producer_nonce);
    if (nonce == 0)
        return;
    if (c->wake_sender < 0)
        c->wake_sender = shmq_wake_sender_open();
    /* Relaxed: published by the release store of the nonce. */
    uint64_t key = shmq_load_relaxed(&c->control->producer_key);
    if (c->wake_sender >= 0)
        (void)shmq_wake_socket_send(c->wake_sender, c->geometry.instance, -1, nonce, key);
}

int shmq_backpressure_arm(struct shmq_producer *p)
{
    struct shmq_wake_page *wake = p->consumers.wake;
    /* Consumers that died hold us back until the kernel is asked, which a
     * blocking wait does every slice: so does arming. */
    if (has_room_probing(p, shmq_now_ns()))
        return 0;
    shmq_wake_socket_drain(p->wake_fd);
    if (wake == NULL)
        return SHMQ_FULL;
    /* Relaxed: published by the seq_cst store of producer_waiting below, as
     * in shmq_backpressure_wait. */
    shmq_store_relaxed(&wake->producer_wake_at, wake_at(p));
    /* Seq_cst: the producer half of the waiting handshake (see top). */
    shmq_store_seq_cst(&wake->producer_waiting, SHMQ_WAKE_FUTEX | SHMQ_WAKE_DESCRIPTOR);
    return shmq_backpressure_has_room(p, 0, 0) ? 0 : SHMQ_FULL;
}

void shmq_backpressure_register(struct shmq_consumer *c, enum shmq_start start)
{
    struct shmq_consumer_entry *e = c->entry;
    /* The provisional position: never above the one bind will choose.
     * Acquire: pairs with the release store of head in finish_publish. */
    uint64_t head = shmq_load_acquire(&c->control->head);
    uint64_t provisional = head;
    if (start == SHMQ_START_EARLIEST || start == SHMQ_START_AT)
        provisional = head - c->geometry.capacity + 1;
    if (start == SHMQ_START_AT && (int64_t)(c->position - provisional) > 0 &&
        (int64_t)(c->position - head) <= 0)
        provisional = c->position;
    /* Relaxed: published by the seq_cst store of state just below. */
    shmq_store_relaxed(&e->position, provisional);
    /* Relaxed: our own entry; the lock we hold keeps anyone else out. Its
     * page is new since the open (consumer.c). */
    uint32_t state = shmq_load_relaxed(&e->state);
    /* Seq_cst store and fence: the consumer half of the registering
     * handshake (see top); the caller's load of head (bind) comes after the
     * fence, so it sees the head of any look that missed this store. */
    shmq_store_seq_cst(&e->state, state | SHMQ_ENTRY_REGISTERED);
    shmq_fence_seq_cst();
    c->registered = 1;
}

void shmq_backpressure_release(struct shmq_consumer *c)
{
    /* Seq_cst: pairs with the producer's acquire load of positions, and is
     * the consumer half of the waiting handshake (see top). */
    shmq_store_seq_cst(&c->entry->position, c->position);
    shmq_backpressure_wake_producer(c, c->position);
}

void shmq_backpressure_unregister(struct shmq_consumer *c)
{
    struct shmq_wake_page *wake = c->consumers.wake;
    /* Relaxed load: our own entry, which only we write. Seq_cst store: as in
     * release; the producer stops waiting for us. */
    uint32_t state = shmq_load_relaxed(&c->entry->state);
    shmq_store_seq_cst(&c->entry->state, state & ~SHMQ_ENTRY_REGISTERED);
    c->registered = 0;
    /* Whoever we held back may go on: wake it whatever it asked for.
     * Seq_cst: the other half of the waiting handshake. */
    if (wake != NULL && shmq_load_seq_cst(&wake->producer_waiting))
        wake_producer(c);
}

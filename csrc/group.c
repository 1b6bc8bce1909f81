/*
 * Consumer groups: the members of a group split the stream, each message
 * going to one of them. docs/consumer-state.md ("Groups") has the design and
 * its trust argument; the bytes are drawn in shmq_layout.h.
 *
 * CLAIMING. The group's page holds a cursor, the next sequence nobody in the
 * group has claimed. To claim [at, at + n), a member:
 *   1. loads the cursor (at) and the stamp of at's slot: not yet published
 *      means empty; lapped (lossy) means the group was overrun, and whoever
 *      moves the cursor on by compare-and-swap counts the skipped messages in
 *      the group's lost count, so they are counted once, not once a member;
 *   2. writes [at, at + n) and its token into its own member slot, the token
 *      seq_cst;
 *   3. moves the cursor from at to at + n by compare-and-swap (seq_cst); on
 *      failure it clears its token and starts again.
 *   A lossless producer loads the cursor and then the member slots (producer
 *   side: shmq_group_low), so it sees either the old cursor or the claim, and
 *   never rewrites a message a member may still read. A batch claims n at
 *   once: members meet on the cursor's line once a batch, not once a message.
 *
 * RETURNING. A claimed message is the member's until the call that delivers
 * it returns (a batch: shmq_consumer_batch_end). Then the member moves
 * claim_from on, or clears its token when the claim is used up.
 *
 * RESCUE. A member that dies leaves its token set, and the kernel drops its
 * member lock. A member that finds nothing to read (at most every
 * RESCUE_EVERY_NS, or every RESCUE_EVERY_CLAIMS claims) looks for such
 * claims: it copies the dead member's range into its own slot (so that a
 * lossless producer keeps holding it), then takes it over by compare-and-swap
 * of the dead member's token to 0; whoever wins delivers it again. A member
 * joining into a dead member's slot takes the claim over the same way, by
 * swapping in its own token. So what a dead member claimed and had not
 * returned is delivered again, if the ring still holds it (always on a
 * lossless queue), or counted lost.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

#include "ring_internal.h"

#define RESCUE_EVERY_NS (10LL * 1000 * 1000)
#define RESCUE_EVERY_CLAIMS 4096u
/* How long a join waits for another member's join or creation to finish. */
#define JOIN_WAIT_NS (5LL * 1000 * 1000 * 1000)
/* As in consumer.c: laps the head explains, and resyncs it does not. */
#define MAX_LAPS 4096
#define MAX_RESYNCS 64

int shmq_group_name_validate(const char *name)
{
    if (name == NULL)
        return -EINVAL;
    if (strnlen(name, SHMQ_GROUP_NAME_MAX + 1) > SHMQ_GROUP_NAME_MAX)
        return -ENAMETOOLONG;
    return shmq_name_validate(name);
}

static void name_words(const char *name, uint64_t words[SHMQ_GROUP_NAME_MAX / 8])
{
    char padded[SHMQ_GROUP_NAME_MAX] = {0};
    memcpy(padded, name, strlen(name));
    memcpy(words, padded, sizeof(padded));
}

static int page_named(struct shmq_group_page *page, const char *name)
{
    uint64_t want[SHMQ_GROUP_NAME_MAX / 8];
    name_words(name, want);
    for (size_t i = 0; i < SHMQ_GROUP_NAME_MAX / 8; i++)
        /* Relaxed: written by the creator before its id lock (a syscall)
         * told the page; any member may change it, which only misleads the
         * group it shares. */
        if (shmq_load_relaxed(&page->name[i]) != want[i])
            return 0;
    return 1;
}

static int take_join_lock(struct shmq_consumer_state *s, int (*check)(void *context),
                          void *context)
{
    int64_t give_up = shmq_now_ns() + JOIN_WAIT_NS;
    for (;;) {
        int rc = shmq_region_lock_byte(s->locks, SHMQ_GROUP_BASE);
        if (rc != -EBUSY)
            return rc;
        if (shmq_now_ns() >= give_up)
            return -ETIMEDOUT;
        struct timespec pause = {0, 1000 * 1000};
        nanosleep(&pause, NULL);
        /* As an open's wait for its queue: the caller's check ends it. */
        if (check != NULL && check(context) != 0)
            return -EINTR;
    }
}

/* Candidate page ids a joiner looks through in one group number: members
 * tell one; more are planted, and cost the joiner syscalls only. */
#define JOIN_IDS_MAX SHMQ_GROUP_IDS_MAX

/* The page of live group `name`, joinable by us: 0 with *index, *id and
 * *page set, -ENOENT, or -EUSERS when some group number holds more
 * candidate pages than a joiner looks through (someone is planting locks:
 * better no join than a second group of the same name). */
static int find_group(struct shmq_consumer_state *s, const char *name, uint32_t *index, int *id,
                      struct shmq_group_page **page)
{
    /* Two sound pages of one name can both be told (an old one kept mapped
     * and told by someone else's planted locks): the newest is the group,
     * since nobody makes a new page while an older one can be found. */
    int flooded = 0, best_id = -1;
    uint32_t best_index = 0;
    uint64_t best_created = 0;
    struct shmq_group_page *best = NULL;
    for (uint32_t g = 0; g < SHMQ_GROUPS_MAX; g++) {
        if (shmq_consumers_group_live(s, g) != 1)
            continue;
        int ids[JOIN_IDS_MAX];
        int n = shmq_consumers_group_ids(s, g, ids, JOIN_IDS_MAX);
        flooded |= n < 0;
        for (int i = 0; i < n; i++) {
            uid_t creator;
            struct shmq_group_page *found = shmq_consumers_group_attach(s, ids[i], 0, &creator);
            if (found == NULL)
                continue;
            /* Made by us or by the ring's owner: a page another user made
             * (and told with planted locks) could steer what we read. An
             * ended group is over (shmq_group_leave). Relaxed: written by
             * the creator before its id lock; the last member's mark is a
             * hint, which only its own group could fake. */
            uint64_t created = shmq_load_relaxed(&found->created);
            /* Only in the number it was made in: a page told from another
             * (by planted locks) would put us in slots its members do not
             * see. */
            if ((creator == geteuid() || creator == s->ring_owner) && page_named(found, name) &&
                shmq_load_relaxed(&found->number) == g &&
                shmq_load_relaxed(&found->ended) == 0 && (best == NULL || created > best_created)) {
                shmq_sysv_page_detach(best);
                best = found;
                best_id = ids[i];
                best_index = g;
                best_created = created;
                continue;
            }
            shmq_sysv_page_detach(found);
        }
    }
    if (best != NULL) {
        *index = best_index;
        *id = best_id;
        *page = best;
        return 0;
    }
    return flooded ? -EUSERS : -ENOENT;
}

/* Makes group `name`'s page in a free group number, with its cursor at
 * `start`. */
static int create_group(struct shmq_consumer_state *s, const char *name, uint64_t start,
                        uint32_t *index, int *id, struct shmq_group_page **page)
{
    uint32_t g = 0;
    while (g < SHMQ_GROUPS_MAX && shmq_consumers_group_live(s, g) != 0)
        g++;
    if (g == SHMQ_GROUPS_MAX)
        return -EUSERS;
    int made = shmq_sysv_page_create(IPC_PRIVATE, 0600 | (s->ring_mode & 0044),
                                     shmq_group_page_bytes(s->page_size));
    if (made < 0)
        return made;
    struct shmq_group_page *p = shmq_sysv_page_attach(made, 0);
    int rc = p == NULL ? -ENOMEM : shmq_sysv_page_give(made, s->ring_owner);
    /* Marked for removal once mapped: it lives while members (or a producer
     * looking at it) have it mapped, never left behind. */
    shmq_sysv_page_remove(made);
    if (rc < 0) {
        shmq_sysv_page_detach(p);
        return rc;
    }
    uint64_t words[SHMQ_GROUP_NAME_MAX / 8];
    name_words(name, words);
    /* Relaxed: a fresh page, published by the id lock our caller takes (a
     * syscall that orders these stores before anyone can find the page). */
    for (size_t i = 0; i < SHMQ_GROUP_NAME_MAX / 8; i++)
        shmq_store_relaxed(&p->name[i], words[i]);
    shmq_store_relaxed(&p->cursor, start);
    shmq_store_relaxed(&p->number, g);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    shmq_store_relaxed(&p->created, (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec);
    shmq_store_relaxed(&p->ring_instance, s->instance);
    shmq_store_relaxed(&p->magic, SHMQ_GROUP_MAGIC);
    *index = g;
    *id = made;
    *page = p;
    return 0;
}

/* Takes a free member slot of group g and tells our page id from it. */
static int take_member_slot(struct shmq_consumer_state *s, uint32_t g, int id, uint32_t *member)
{
    for (uint32_t m = 0; m < SHMQ_GROUP_MEMBERS_MAX; m++) {
        int rc = shmq_region_lock_byte(s->locks, shmq_group_member_byte(g, m));
        if (rc == -EBUSY)
            continue;
        if (rc < 0)
            return rc;
        rc = shmq_region_lock_byte(s->locks, shmq_group_id_byte(g, m) + (uint64_t)id);
        if (rc == 0) {
            *member = m;
            return 0;
        }
        shmq_region_unlock_byte(s->locks, shmq_group_member_byte(g, m));
        if (rc != -EBUSY)
            return rc; /* -EBUSY: someone planted a lock on our id: take another */
    }
    return -EUSERS;
}

/* A claim left in our new slot by a member that died: ours to deliver. */
static void adopt_leftover(struct shmq_group_membership *g, const struct shmq_geometry *geometry)
{
    struct shmq_group_member *me = &g->page->members[g->member];
    /* Acquire: pairs with the dead member's seq_cst store of its token, so
     * the range it stored before is what we load. */
    uint32_t token = shmq_load_acquire(&me->token);
    if (token == 0)
        return;
    /* Acquire: pairs with the release stores of claim_from (the range's
     * start moves on as its holder returns messages). */
    uint64_t from = shmq_load_acquire(&me->claim_from);
    /* Relaxed: stored before the token, which our acquire load saw. */
    uint64_t to = shmq_load_relaxed(&me->claim_to);
    uint64_t n = to - from;
    /* Seq_cst: the token moves to us in one step, so a member rescuing the
     * same claim (which swaps it to 0) and we cannot both win. */
    if (!shmq_cas_seq_cst(&me->token, &token, g->token))
        return;
    if (n == 0 || n > geometry->capacity) {
        /* Garbage left by someone sharing the page: nothing to deliver. */
        shmq_store_seq_cst(&me->token, 0);
        return;
    }
    g->claimed = 1;
    g->claim_from = g->next = from;
    g->claim_to = to;
}

int shmq_group_join(struct shmq_consumer *c, const char *name, enum shmq_start start,
                    int (*check)(void *context), void *context)
{
    int rc = shmq_group_name_validate(name);
    if (rc < 0)
        return rc;
    struct shmq_consumer_state *s = &c->consumers;
    if (s->locks == NULL)
        return -EOPNOTSUPP;
    struct shmq_group_membership *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return -ENOMEM;
    g->shm_id = -1;
    snprintf(g->name, sizeof(g->name), "%s", name);
    /* Non-zero and new for every membership: a rescue swaps exactly the
     * token it read. */
    g->token = (uint32_t)shmq_wake_nonce() | 1u;
    rc = take_join_lock(s, check, context);
    if (rc < 0) {
        free(g);
        return rc;
    }
    int created = 0;
    rc = find_group(s, name, &g->index, &g->shm_id, &g->page);
    if (rc == -ENOENT) {
        /* The provisional start: never above the one chosen below (as in
         * shmq_backpressure_register). */
        rc = create_group(s, name, c->position, &g->index, &g->shm_id, &g->page);
        created = rc == 0;
    }
    if (rc == 0)
        rc = take_member_slot(s, g->index, g->shm_id, &g->member);
    if (rc == 0 && created) {
        /* Seq_cst fence: our locks (which a producer's listing finds) are
         * taken; the head loaded after it is at least that of any listing
         * that missed them, as in the REGISTERING handshake
         * (backpressure.c). The start chosen from it is never below the
         * provisional one. */
        shmq_fence_seq_cst();
        uint64_t lost_before = c->lost;
        shmq_consumer_bind(c, (unsigned char *)c->control, &c->geometry, start, s->wake);
        /* Seq_cst: the start, published to members that join later (they
         * load it under the join lock we release after this) and to the
         * producer. */
        shmq_store_seq_cst(&g->page->cursor, c->position);
        /* Relaxed: a counter; readers take a snapshot. */
        shmq_fetch_add_relaxed(&g->page->lost, c->lost - lost_before);
    }
    if (rc == 0) {
        /* Relaxed: ordered before our first claim's seq_cst stores, which a
         * producer's acquire load of the cursor pairs with before it loads
         * this (shmq_group_low); joiners raise it under the join lock. */
        if (shmq_load_relaxed(&g->page->member_slots) <= g->member)
            shmq_store_relaxed(&g->page->member_slots, g->member + 1);
        adopt_leftover(g, &c->geometry);
        /* Relaxed: display only. */
        shmq_store_relaxed(&g->page->members[g->member].pid, (uint32_t)getpid());
        shmq_store_relaxed(&g->page->members[g->member].received, 0);
    }
    shmq_region_unlock_byte(s->locks, SHMQ_GROUP_BASE);
    if (rc < 0) {
        shmq_sysv_page_detach(g->page);
        free(g);
        return rc;
    }
    c->group = g;
    if (c->entry_index >= 0)
        /* Relaxed: our own entry; display only (shmq stat). */
        shmq_store_relaxed(&c->entry->state, shmq_load_relaxed(&c->entry->state) |
                                                  SHMQ_ENTRY_GROUP_MEMBER);
    return 0;
}

void shmq_group_leave(struct shmq_consumer *c)
{
    struct shmq_group_membership *g = c->group;
    if (g == NULL)
        return;
    /* A claim not yet returned stays in our slot: once our lock is gone,
     * another member delivers it (see RESCUE). The last member to leave
     * with nothing claimed ends the group, so that a lossless producer stops
     * waiting for it without asking the kernel about the locks;
     * under the join lock (one try: otherwise the producer finds out from
     * the locks), so that nobody joins meanwhile. */
    struct shmq_consumer_state *s = &c->consumers;
    if (!g->claimed && !s->forked && s->locks != NULL &&
        shmq_region_lock_byte(s->locks, SHMQ_GROUP_BASE) == 0) {
        uint64_t first = shmq_group_member_byte(g->index, 0);
        uint64_t mine = shmq_group_member_byte(g->index, g->member);
        int others = (mine > first && shmq_region_lock_held_in(s->locks, first, mine - first) != 0) ||
                     (g->member + 1 < SHMQ_GROUP_MEMBERS_MAX &&
                      shmq_region_lock_held_in(s->locks, mine + 1,
                                               SHMQ_GROUP_MEMBERS_MAX - g->member - 1) != 0);
        int claims = 0;
        for (uint32_t m = 0; m < SHMQ_GROUP_MEMBERS_MAX && !claims; m++)
            /* Relaxed: a dead member's claim keeps the group going. */
            claims = m != g->member && shmq_load_relaxed(&g->page->members[m].token) != 0;
        if (!others && !claims) {
            /* Release: pairs with the producer's acquire load in
             * shmq_group_low; our reads are done. */
            shmq_store_release(&g->page->ended, 1);
            if (c->geometry.lossless)
                /* Acquire: pairs with the release store of head; any
                 * position at head frees a waiting producer. */
                shmq_backpressure_wake_producer(c, shmq_load_acquire(&c->control->head));
        }
        shmq_region_unlock_byte(s->locks, SHMQ_GROUP_BASE);
    }
    shmq_sysv_page_detach(g->page);
    free(g);
    c->group = NULL;
}

int shmq_group_claims_outstanding(const struct shmq_consumer *c)
{
    const struct shmq_group_membership *g = c->group;
    /* Relaxed: a hint; a claim seen here is delivered (or counted) by its
     * holder, or by a rescuer, and the end is looked at again after. */
    uint32_t slots = shmq_load_relaxed(&g->page->member_slots);
    if (slots > SHMQ_GROUP_MEMBERS_MAX)
        slots = SHMQ_GROUP_MEMBERS_MAX;
    for (uint32_t m = 0; m < slots; m++)
        if (m != g->member && shmq_load_relaxed(&g->page->members[m].token) != 0)
            return 1;
    return 0;
}

uint64_t shmq_group_next(const struct shmq_consumer *c)
{
    const struct shmq_group_membership *g = c->group;
    if (g->claimed && g->next != g->claim_to)
        return g->next;
    /* Relaxed: a snapshot; claims validate it by compare-and-swap. */
    return shmq_load_relaxed(&g->page->cursor);
}

uint64_t shmq_group_lost(const struct shmq_consumer *c)
{
    /* Relaxed: a counter; a snapshot. */
    return shmq_load_relaxed(&c->group->page->lost);
}

static void count_lost(struct shmq_group_membership *g, uint64_t n)
{
    /* Relaxed: a counter; each loss is added once, by the member that met it. */
    shmq_fetch_add_relaxed(&g->page->lost, n);
}

void shmq_group_commit(struct shmq_consumer *c)
{
    struct shmq_group_membership *g = c->group;
    if (g == NULL || !g->claimed)
        return;
    if (g->unreturned_lost != 0) {
        count_lost(g, g->unreturned_lost);
        g->unreturned_lost = 0;
    }
    struct shmq_group_member *me = &g->page->members[g->member];
    /* Relaxed: display only (this slot's count, and our entry's position
     * as shmq stat lists it). */
    shmq_store_relaxed(&me->received, g->received);
    shmq_store_relaxed(&c->entry->position, g->next);
    if (g->next == g->claim_to) {
        g->claimed = 0;
        /* Seq_cst: pairs with a lossless producer's acquire load of the
         * token (shmq_group_low): our reads of the claimed slots happen
         * before it rewrites them. Also the member half of the waiting
         * handshake (backpressure.c), as a plain consumer's position store. */
        shmq_store_seq_cst(&me->token, 0);
    } else if (g->next != g->claim_from) {
        g->claim_from = g->next;
        /* Release: pairs with the producer's acquire load of claim_from. */
        shmq_store_release(&me->claim_from, g->next);
    } else {
        return;
    }
    if (c->geometry.lossless)
        shmq_backpressure_wake_producer(c, shmq_group_next(c));
}

/* How many of the n messages from `at` fit in `bytes` (at least one): a
 * batch claims no more than its caller's buffer takes. The lengths are
 * hints (the copies validate them): a message rewritten meanwhile may make
 * the batch end early, and the rest stays ours for the next call. */
static uint64_t fitting(struct shmq_consumer *c, uint64_t at, uint64_t n, size_t bytes)
{
    uint64_t used = 0, k = 0;
    while (k < n) {
        /* Relaxed: a hint, as above. */
        uint64_t length = shmq_load_relaxed(&shmq_record_at(c->index, &c->geometry, at + k)->length);
        if (length > c->geometry.max_message || used + length > bytes)
            break;
        used += length;
        k++;
    }
    return k > 0 ? k : 1;
}

/* Claims up to `want` messages from the cursor (see CLAIMING): 0,
 * SHMQ_EMPTY, or -EUCLEAN when the cursor or the stamps are garbage. */
static int claim(struct shmq_consumer *c, uint64_t want)
{
    struct shmq_group_membership *g = c->group;
    struct shmq_group_page *page = g->page;
    struct shmq_group_member *me = &page->members[g->member];
    int garbage = 0, laps = 0;
    while (garbage < MAX_RESYNCS) {
        /* Relaxed: the compare-and-swap below validates it. */
        uint64_t at = shmq_load_relaxed(&page->cursor);
        /* Acquire: pairs with the release store of the final stamp in
         * write_slot; the copy re-validates it. */
        uint64_t stamp = shmq_load_acquire(&shmq_record_at(c->index, &c->geometry, at)->stamp);
        if (stamp != at) {
            if ((int64_t)(stamp - at) < 0)
                return SHMQ_EMPTY;
            int explained;
            /* Where a lapped plain consumer resumes (consumer.c). */
            uint64_t target = shmq_overrun_target(c, at, stamp, &explained);
            if (target - at >= (UINT64_C(1) << 62))
                return -EUCLEAN; /* the cursor is garbage: see consumer.c */
            /* Seq_cst: one member moves the cursor on, and counts. */
            if (shmq_cas_seq_cst(&page->cursor, &at, target))
                count_lost(g, target - at);
            garbage += !explained;
            if (explained && ++laps >= MAX_LAPS)
                return SHMQ_EMPTY;
            continue;
        }
        uint64_t n = 1;
        if (want > 1) {
            /* Acquire: pairs with the release store of head; every slot
             * below it is written. */
            uint64_t available = shmq_load_acquire(&c->control->head) - at;
            if (available > 1 && available <= c->geometry.capacity)
                n = available < want ? available : want;
            if (g->batch_bytes != 0)
                n = fitting(c, at, n, g->batch_bytes);
        }
        /* Release: pairs with the producer's acquire load of claim_from. */
        shmq_store_release(&me->claim_from, at);
        /* Relaxed: published by the token's seq_cst store. */
        shmq_store_relaxed(&me->claim_to, at + n);
        /* Seq_cst: the claim is in place before the cursor moves past it: a
         * producer that loads the moved cursor then sees the token. */
        shmq_store_seq_cst(&me->token, g->token);
        /* Seq_cst: see CLAIMING. */
        if (shmq_cas_seq_cst(&page->cursor, &at, at + n)) {
            g->claimed = 1;
            g->claim_from = g->next = at;
            g->claim_to = at + n;
            if (++g->claims_since_rescue >= RESCUE_EVERY_CLAIMS)
                g->next_rescue_ns = 0;
            return 0;
        }
        /* Release: we hold nothing; pairs with a producer's acquire load of
         * the token in shmq_group_low. */
        shmq_store_release(&me->token, 0);
    }
    return -EUCLEAN;
}

void shmq_group_rescue(struct shmq_consumer *c)
{
    struct shmq_group_membership *g = c->group;
    if (g == NULL || g->claimed || c->consumers.forked || c->consumers.locks == NULL)
        return;
    int64_t now = shmq_now_ns();
    if (now < g->next_rescue_ns)
        return;
    g->next_rescue_ns = now + RESCUE_EVERY_NS;
    g->claims_since_rescue = 0;
    struct shmq_group_member *me = &g->page->members[g->member];
    for (uint32_t m = 0; m < SHMQ_GROUP_MEMBERS_MAX; m++) {
        struct shmq_group_member *slot = &g->page->members[m];
        /* Acquire: pairs with the holder's seq_cst store of its token. */
        uint32_t token = shmq_load_acquire(&slot->token);
        if (m == g->member || token == 0)
            continue;
        /* Alive (or we cannot tell): its claim is its own. */
        if (shmq_region_lock_held(c->consumers.locks, shmq_group_member_byte(g->index, m)) != 0)
            continue;
        /* Acquire: as in adopt_leftover. */
        uint64_t from = shmq_load_acquire(&slot->claim_from);
        /* Relaxed: stored before the token. */
        uint64_t to = shmq_load_relaxed(&slot->claim_to);
        uint64_t n = to - from;
        if (n == 0 || n > c->geometry.capacity) {
            /* Garbage: nothing to deliver; clear it so it holds nobody. */
            shmq_cas_seq_cst(&slot->token, &token, 0);
            continue;
        }
        /* Ours first, so a lossless producer keeps holding the range. */
        shmq_store_release(&me->claim_from, from);
        shmq_store_relaxed(&me->claim_to, to);
        /* Seq_cst: as in claim. */
        shmq_store_seq_cst(&me->token, g->token);
        /* Seq_cst: exactly one rescuer (or a joiner, adopt_leftover) wins. */
        if (shmq_cas_seq_cst(&slot->token, &token, 0)) {
            g->claimed = 1;
            g->claim_from = g->next = from;
            g->claim_to = to;
            return;
        }
        /* Release: we hold nothing after all; pairs with a producer's
         * acquire load of the token in shmq_group_low. */
        shmq_store_release(&me->token, 0);
    }
}

/* Makes sure we hold an undelivered claim: 0, SHMQ_EMPTY or -EUCLEAN. */
static int hold_claim(struct shmq_consumer *c)
{
    struct shmq_group_membership *g = c->group;
    if (g->claimed && g->next != g->claim_to)
        return 0;
    if (g->claimed) {
        /* Used up inside a batch: the batch ends here. */
        if (g->in_batch)
            return SHMQ_EMPTY;
        shmq_group_commit(c);
    }
    if (g->next_rescue_ns == 0) {
        /* Claims enough since the last look (a busy group never finds the
         * ring empty): look for dead members' claims now. */
        shmq_group_rescue(c);
        if (g->claimed)
            return 0;
    }
    int rc = claim(c, g->in_batch && g->batch > 1 ? g->batch : 1);
    if (rc == SHMQ_EMPTY) {
        /* Past the end of the stream, a dead member's claim is all there
         * can be: look now, not at the next rescue slot. */
        if (shmq_stream_ended(c))
            g->next_rescue_ns = 0;
        shmq_group_rescue(c);
        if (g->claimed)
            return 0;
        if (c->wake_fd >= 0)
            shmq_consumer_quiet(c);
    }
    return rc;
}

/* The message at g->next is gone (overwritten, or garbage): counted. */
static void skip_lost(struct shmq_consumer *c)
{
    struct shmq_group_membership *g = c->group;
    /* Counted when the claim is given back: a member that dies first
     * leaves the claim to a rescuer, which counts it then, once. */
    g->unreturned_lost++;
    g->next++;
    if (!g->in_batch)
        shmq_group_commit(c);
}

int shmq_group_poll(struct shmq_consumer *c, const struct shmq_destination *d, size_t *length)
{
    struct shmq_group_membership *g = c->group;
    if (c->consumers.forked)
        return -ECHILD;
    for (;;) {
        int rc = hold_claim(c);
        if (rc < 0)
            return rc;
        switch (shmq_copy_at(c, g->next, d, length)) {
        case SHMQ_COPY_OK:
            g->next++;
            g->received++;
            if (!g->in_batch)
                shmq_group_commit(c);
            return 0;
        case SHMQ_COPY_TOO_SMALL:
            return -EMSGSIZE;
        case SHMQ_COPY_NO_MEMORY:
            return -ENOMEM;
        case SHMQ_COPY_CORRUPT:
            skip_lost(c);
            return -EUCLEAN;
        case SHMQ_COPY_EMPTY:
        case SHMQ_COPY_OVERRUN:
            /* A claimed message is published; one that is not there whole
             * any more was overwritten (lossy) while claimed. */
            skip_lost(c);
            break;
        }
    }
}

int shmq_group_peek(struct shmq_consumer *c, const void **data, size_t *length)
{
    struct shmq_group_membership *g = c->group;
    if (c->consumers.forked)
        return -ECHILD;
    for (;;) {
        int rc = hold_claim(c);
        if (rc < 0)
            return rc == -EUCLEAN ? SHMQ_CORRUPT : rc;
        const _Atomic uint64_t *payload;
        uint32_t len;
        /* Validated at release, as for a plain consumer (consumer.c). */
        enum shmq_copy_result found = shmq_record_find(c, g->next, &payload, &len);
        if (found != SHMQ_COPY_OK) {
            /* A claimed message is published: one not there whole any more
             * was overwritten. */
            skip_lost(c);
            if (found == SHMQ_COPY_CORRUPT)
                return SHMQ_CORRUPT;
            continue;
        }
        *data = (const void *)payload;
        *length = len;
        c->peeked = 1;
        return 0;
    }
}

int shmq_group_release(struct shmq_consumer *c)
{
    struct shmq_group_membership *g = c->group;
    c->peeked = 0;
    int intact = shmq_record_unchanged(c, g->next);
    g->next++;
    if (intact)
        g->received++;
    else
        g->unreturned_lost++; /* counted with the claim's return, as in skip_lost */
    if (!g->in_batch)
        shmq_group_commit(c);
    return intact ? 0 : SHMQ_OVERWRITTEN;
}

int shmq_group_ready(struct shmq_consumer *c, memory_order order)
{
    struct shmq_group_membership *g = c->group;
    if (g->claimed && g->next != g->claim_to)
        return 1;
    /* A batch whose claim is used up takes nothing more (hold_claim): a
     * wait inside it waits for its end, never spins. */
    if (g->claimed && g->in_batch)
        return 0;
    /* The order is the caller's, as in consumer.c's something_to_report:
     * seq_cst where it is the re-check of a sleep handshake (pairing with
     * the fence in finish_publish), relaxed for hints. */
    uint64_t at = shmq_load_ordered(&g->page->cursor, order);
    struct shmq_record *slot = shmq_record_at(c->index, &c->geometry, at);
    return (int64_t)(shmq_load_ordered(&slot->stamp, order) - at) >= 0;
}

/* ------------------------------------------------------------- producer */

uint64_t shmq_group_low(const struct shmq_consumer_state *s, uint32_t group,
                        const struct shmq_group_page *const_page, uint64_t head,
                        uint64_t capacity, int probe, int *dead_claim)
{
    /* Mapped read-only: only loaded from. */
    struct shmq_group_page *page = (struct shmq_group_page *)const_page;
    /* Acquire: pairs with the last member's release store of ended. Only
     * its own group loses by a false one. */
    if (shmq_load_acquire(&page->ended) != 0)
        return head;
    /* Acquire: pairs with the members' seq_cst compare-and-swap of the
     * cursor, each made after its claim's token store: a cursor past a
     * claim comes with the claim. */
    uint64_t low = shmq_load_acquire(&page->cursor);
    if ((int64_t)(low - head) > 0)
        low = head; /* garbage ahead: only the group's own loss */
    int held_by = -1;
    /* Relaxed: after the acquire load of the cursor, which a member's claim
     * (made after it raised this) synchronises with. A member that lowers it
     * hides claims of its own group only. */
    uint32_t slots = shmq_load_relaxed(&page->member_slots);
    if (slots > SHMQ_GROUP_MEMBERS_MAX)
        slots = SHMQ_GROUP_MEMBERS_MAX;
    for (uint32_t m = 0; m < slots; m++) {
        struct shmq_group_member *slot = &page->members[m];
        /* Acquire: pairs with the member's seq_cst store of its token (a
         * claim) and of 0 (its reads of the claim are done). */
        if (shmq_load_acquire(&slot->token) == 0)
            continue;
        /* Acquire: pairs with the release stores of claim_from. */
        uint64_t from = shmq_load_acquire(&slot->claim_from);
        if ((int64_t)(from - head) > 0)
            continue;
        if ((int64_t)(from - low) < 0) {
            low = from;
            held_by = (int)m;
        }
    }
    if (head - low > capacity)
        low = head - capacity; /* garbage, or a hung claim: stall, never overwrite */
    if (probe && held_by >= 0 && head - low >= capacity &&
        shmq_region_lock_held(s->locks, shmq_group_member_byte(group, (uint32_t)held_by)) == 0)
        *dead_claim = 1;
    return low;
}

/*
 * Consumer groups (shmq.h, GROUPS; the claim protocol in csrc/group.c),
 * with real processes on real shared memory:
 *
 *  - members_split_a_lossless_stream_exactly_once: three member processes
 *    (one polling, one with poll_many, one mixing both) and a plain
 *    consumer read 100,000 indexed records from a lossless queue. Every
 *    index reaches exactly one member, each member gets some, the plain
 *    consumer gets all of them in order, and the group loses nothing.
 *  - killed_members_claims_are_redelivered: kill -9 of members mid-stream
 *    on a lossless queue. The first one is killed while it holds a batch
 *    it has partly delivered; a surviving member rescues the claim (the
 *    producer was blocked by it) and the delay is measured. Then members
 *    killed at random moments, each replaced at once (the replacement may
 *    adopt the claim left in its slot). Every index arrives at least once;
 *    an index arrives twice only if a killed member had recorded it inside
 *    a claim it never returned, at most a batch per kill; lost stays 0.
 *  - joiner_adopts_a_dead_members_claim: a member that joins into a dead
 *    member's slot delivers the claim left there first; the producer is
 *    free again once it is returned.
 *  - dead_members_overwritten_claim_is_counted_lost: lossy, the dead
 *    member's claim overwritten before the rescue is counted lost once.
 *  - claim_of_a_member_killed_at_the_end_is_delivered: a member killed
 *    holding the last messages of a lossless stream, the stream then
 *    closed: a surviving member that reads until SHMQ_ENDED must still
 *    deliver them (or the group must count them), not report the end.
 *  - lossy_members_count_what_they_lose: a 16-slot lossy ring, a fast
 *    producer, slow members that pause inside their batches (so claims are
 *    overwritten under them): received + the group's lost == published,
 *    every member reports the same lost, no index twice, no torn record
 *    (msg_check); a plain consumer beside them counts its own loss.
 *  - In one process: peek/release for a member; batches
 *    (batch_begin/batch_end) hold a lossless producer; poll_many and
 *    batch_begin_within claim no more than the buffer takes; what a batch
 *    claimed and did not deliver stays the member's; -EMSGSIZE keeps the
 *    message claimed; two groups and a plain consumer on one queue; later
 *    members continue from the group's position and an empty group starts
 *    afresh; a lapped group counts its loss once, the same for every
 *    member; invalid names and no_entry give -EINVAL; a 17th group and a
 *    129th member give -EUSERS; shmq_inspect_groups reports members,
 *    position, claimed and lost.
 *  - poll_wait_after_a_used_up_batch: poll_wait inside a batch whose claim
 *    is used up waits (it takes nothing more until the batch ends), never
 *    spins.
 *  - claim_of_a_member_killed_at_the_end_is_delivered: at the end of the
 *    stream a dead member's claim is delivered before SHMQ_ENDED.
 *  - earliest_member_of_a_lossless_queue_counts_what_it_lost: a group
 *    started earliest on a lossless queue counts what the producer rewrote
 *    before it looked (protocol.md, section 16), exactly.
 *
 * These last three, once bugs this suite found, run each in a child of its
 * own. Run some by name: test_groups NAME...
 */
#include "adversary.h"

#include <poll.h>
#include <stdatomic.h>
#include <sys/resource.h>

#define SECOND (1000ll * 1000 * 1000)
#define MS (1000ll * 1000)

/* ---------------------------------------------------------------- records */

/* A record: index u64 | tag(index) u64. A torn or foreign record fails the tag. */
#define RECORD 16u

static uint64_t tag_of(uint64_t i)
{
    return i * UINT64_C(0x9E3779B97F4A7C15) + UINT64_C(0x632BE59BD9B4E019);
}

static void record_make(unsigned char *out, uint64_t i)
{
    uint64_t tag = tag_of(i);
    memcpy(out, &i, 8);
    memcpy(out + 8, &tag, 8);
}

/* 1 and *index if p is a whole record of an index below count. */
static int record_check(const unsigned char *p, size_t len, uint64_t count, uint64_t *index)
{
    uint64_t i, tag;
    if (len != RECORD)
        return 0;
    memcpy(&i, p, 8);
    memcpy(&tag, p + 8, 8);
    *index = i;
    return i < count && tag == tag_of(i);
}

static struct shmq_producer *create_queue(const char *name, uint32_t slot_size, uint32_t capacity,
                                          enum shmq_delivery delivery)
{
    struct shmq_config config = {.slot_size = slot_size, .capacity = capacity,
                                 .max_consumers = 32, .delivery = delivery};
    struct shmq_producer *p = NULL;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    return p;
}

static struct shmq_consumer *open_member(const char *name, const char *group,
                                         enum shmq_start start)
{
    struct shmq_consumer_options options = {.start = start, .group = group};
    struct shmq_consumer *c = NULL;
    CHECK_RC(shmq_consumer_open_with(&c, name, &options), 0);
    if (group != NULL)
        CHECK(shmq_consumer_group(c) != NULL && strcmp(shmq_consumer_group(c), group) == 0);
    else
        CHECK(shmq_consumer_group(c) == NULL);
    return c;
}

static void publish_record(struct shmq_producer *p, uint64_t i)
{
    unsigned char msg[RECORD];
    record_make(msg, i);
    uint64_t seq;
    CHECK_RC(shmq_producer_publish_wait(p, msg, RECORD, &seq, 10 * SECOND), 0);
}

/* Polls a record that must be there, and returns its index. */
static uint64_t poll_index(struct shmq_consumer *c)
{
    unsigned char buf[RECORD];
    size_t len;
    uint64_t i;
    CHECK_RC(shmq_consumer_poll(c, buf, sizeof(buf), &len), 0);
    CHECK(record_check(buf, len, UINT64_MAX, &i));
    return i;
}

/* The one live group called `group` of queue `name`: 1 and *info, or 0. */
static int find_group_info(const char *name, const char *group, struct shmq_group_info *info)
{
    struct shmq_group_info all[SHMQ_GROUPS_MAX];
    int n = shmq_inspect_groups(name, all, SHMQ_GROUPS_MAX);
    CHECK(n >= 0 && n <= (int)SHMQ_GROUPS_MAX);
    int found = 0;
    for (int k = 0; k < n; k++) {
        CHECK(!all[k].unclear);
        if (strcmp(all[k].name, group) == 0) {
            *info = all[k];
            found++;
        }
    }
    CHECK(found <= 1);
    return found;
}

/* ------------------------------------------------- exactly once, lossless */

#define SPLIT_COUNT 100000u
#define SPLIT_MEMBERS 3

struct split_shared {
    _Atomic uint8_t hits[SPLIT_COUNT];
    _Atomic uint64_t received[SPLIT_MEMBERS];
    _Atomic uint64_t polls[SPLIT_MEMBERS], batches[SPLIT_MEMBERS];
    _Atomic uint64_t lost[SPLIT_MEMBERS];
    _Atomic uint64_t bad;
    _Atomic uint64_t plain_received, plain_out_of_order, plain_lost;
};

static void count_hit(struct split_shared *s, int k, const unsigned char *p, size_t len)
{
    uint64_t i;
    if (!record_check(p, len, SPLIT_COUNT, &i)) {
        s->bad++;
        return;
    }
    s->hits[i]++;
    s->received[k]++;
}

/* Member k: 0 polls, 1 uses poll_many, 2 mixes both with random batch sizes. */
static void split_member(const char *name, int k, int ready_fd, struct split_shared *s)
{
    struct shmq_consumer *c = open_member(name, "split", SHMQ_START_EARLIEST);
    CHECK(shmq_consumer_registered(c) == 0); /* waited for through its group */
    signal_fd(ready_fd);
    unsigned char buf[RECORD * 64];
    size_t lengths[64];
    uint64_t rng = 0x1234 + (uint64_t)k;
    for (;;) {
        int many = k == 1 || (k == 2 && (xorshift(&rng) & 1));
        int rc;
        if (!many) {
            size_t len;
            rc = shmq_consumer_poll_wait(c, buf, RECORD, &len, SECOND);
            if (rc == 0) {
                s->polls[k]++;
                count_hit(s, k, buf, len);
                continue;
            }
        } else {
            size_t max = k == 1 ? 32 : 1 + xorshift(&rng) % 64;
            int n = shmq_consumer_poll_many(c, buf, sizeof(buf), lengths, max);
            CHECK(n >= 0 && (size_t)n <= max);
            if (n > 0) {
                s->batches[k]++;
                size_t at = 0;
                for (int m = 0; m < n; m++) {
                    count_hit(s, k, buf + at, lengths[m]);
                    at += lengths[m];
                }
                continue;
            }
            rc = shmq_consumer_wait(c, SECOND);
        }
        if (rc == SHMQ_ENDED)
            break;
        if (rc != 0 && rc != -ETIMEDOUT)
            CHECK_RC(rc, 0);
    }
    s->lost[k] = shmq_consumer_lost(c);
    shmq_consumer_close(c);
}

static void split_plain(const char *name, int ready_fd, struct split_shared *s)
{
    struct shmq_consumer *c = open_member(name, NULL, SHMQ_START_EARLIEST);
    CHECK(shmq_consumer_registered(c) == 1);
    signal_fd(ready_fd);
    unsigned char buf[RECORD];
    uint64_t expect = 0;
    for (;;) {
        size_t len;
        int rc = shmq_consumer_poll_wait(c, buf, sizeof(buf), &len, SECOND);
        if (rc == SHMQ_ENDED)
            break;
        if (rc == -ETIMEDOUT)
            continue;
        CHECK_RC(rc, 0);
        uint64_t i;
        if (!record_check(buf, len, SPLIT_COUNT, &i)) {
            s->bad++;
            continue;
        }
        if (i != expect)
            s->plain_out_of_order++;
        expect = i + 1;
        s->plain_received++;
    }
    s->plain_lost = shmq_consumer_lost(c);
    shmq_consumer_close(c);
}

static void split_round(uint32_t capacity, uint64_t first_sequence)
{
    const char *name = test_name("grp-split");
    struct shmq_config config = {.slot_size = RECORD, .capacity = capacity, .max_consumers = 8,
                                 .first_sequence = first_sequence, .delivery = SHMQ_LOSSLESS};
    struct shmq_producer *p = NULL;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    struct split_shared *s = shared_alloc(sizeof(*s));
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t kids[SPLIT_MEMBERS + 1];
    for (int k = 0; k <= SPLIT_MEMBERS; k++) {
        kids[k] = fork_child();
        if (kids[k] == 0) {
            close(ready[0]);
            if (k < SPLIT_MEMBERS)
                split_member(name, k, ready[1], s);
            else
                split_plain(name, ready[1], s);
            _exit(0);
        }
    }
    close(ready[1]);
    for (int k = 0; k <= SPLIT_MEMBERS; k++)
        CHECK(wait_fd(ready[0]));
    close(ready[0]);
    struct shmq_group_info info;
    CHECK(find_group_info(name, "split", &info) == 1);
    CHECK(info.members == SPLIT_MEMBERS && info.position == first_sequence && info.lost == 0 &&
          info.claimed == 0 && info.lag == 0);
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < SPLIT_COUNT; i++)
        publish_record(p, i);
    double seconds = (double)(now_ns() - t0) / 1e9;
    shmq_producer_close(p);
    for (int k = 0; k <= SPLIT_MEMBERS; k++)
        CHECK(wait_child(kids[k]) == 0);
    uint64_t missing = 0, repeated = 0, total = 0;
    for (uint64_t i = 0; i < SPLIT_COUNT; i++) {
        missing += s->hits[i] == 0;
        repeated += s->hits[i] > 1;
    }
    for (int k = 0; k < SPLIT_MEMBERS; k++) {
        fprintf(stderr, "split (%u slots): member %d received %llu (%llu polls, %llu batches), lost %llu\n",
                capacity, k, (unsigned long long)s->received[k], (unsigned long long)s->polls[k],
                (unsigned long long)s->batches[k], (unsigned long long)s->lost[k]);
        total += s->received[k];
        CHECK(s->received[k] > 0);
        CHECK(s->lost[k] == 0);
    }
    fprintf(stderr, "split: %u records in %.2f s; missing %llu, repeated %llu, bad %llu; plain "
            "received %llu, out of order %llu, lost %llu\n", SPLIT_COUNT, seconds,
            (unsigned long long)missing, (unsigned long long)repeated,
            (unsigned long long)s->bad, (unsigned long long)s->plain_received,
            (unsigned long long)s->plain_out_of_order, (unsigned long long)s->plain_lost);
    CHECK(s->bad == 0 && missing == 0 && repeated == 0 && total == SPLIT_COUNT);
    CHECK(s->polls[0] > 0 && s->batches[1] > 0 && s->polls[2] > 0 && s->batches[2] > 0);
    CHECK(s->plain_received == SPLIT_COUNT && s->plain_out_of_order == 0 && s->plain_lost == 0);
    munmap(s, sizeof(*s));
}

/* A roomy ring; then a 16-slot one (members and the producer wait on each
 * other all the time) whose sequence wraps past 2^64 halfway. */
static void members_split_a_lossless_stream_exactly_once(void)
{
    split_round(512, 0);
    split_round(16, UINT64_MAX - SPLIT_COUNT / 2);
}

/* ------------------------------------------------------ killed members */

/* Records published: until the last kill, then KILL_TAIL more; at most KILL_MAX. */
#define KILL_MAX (1u << 20)
#define KILL_TAIL 20000u
#define KILL_BATCH 32u
#define KILL_RANDOM 4
#define KILL_CAPACITY 256u

struct kill_shared {
    _Atomic uint8_t hits[KILL_MAX];
    _Atomic uint8_t by_victim[KILL_MAX]; /* recorded by a member later killed */
    _Atomic uint64_t held_from, held_to, held_delivered;
    _Atomic uint64_t bad, steady_lost;
};

enum kill_role { ROLE_STEADY, ROLE_HOLDER, ROLE_VICTIM };

/* Records index i: a victim marks it first, so that any index that arrives
 * twice because a victim never returned it is marked. */
static void kill_record(struct kill_shared *s, enum kill_role role, const unsigned char *p,
                        size_t len)
{
    uint64_t i;
    if (!record_check(p, len, KILL_MAX, &i)) {
        s->bad++;
        return;
    }
    if (role != ROLE_STEADY)
        s->by_victim[i] = 1;
    s->hits[i]++;
}

/* The holder: reads normally, then opens a batch, delivers a few of it,
 * tells the parent its claim, and waits to be killed with the claim held. */
static void kill_holder(struct shmq_consumer *c, struct kill_shared *s, int ready_fd)
{
    unsigned char buf[RECORD * 16];
    size_t lengths[16];
    uint64_t got = 0;
    while (got < 3000) {
        int n = shmq_consumer_poll_many(c, buf, sizeof(buf), lengths, 16);
        CHECK(n >= 0);
        for (int m = 0; m < n; m++)
            kill_record(s, ROLE_STEADY, buf + (size_t)m * RECORD, lengths[m]);
        got += (uint64_t)n;
        if (n == 0) {
            int rc = shmq_consumer_wait(c, SECOND);
            CHECK(rc == 0 || rc == -ETIMEDOUT);
        }
    }
    /* A batch of at least 8 (a few tries), of which it delivers up to 5. */
    const struct shmq_group_membership *g = c->group;
    uint64_t delivered = 0;
    for (int tries = 0;; tries++) {
        shmq_consumer_batch_begin(c, KILL_BATCH);
        size_t len;
        int rc;
        while ((rc = shmq_consumer_poll(c, buf, RECORD, &len)) == SHMQ_EMPTY)
            usleep(100);
        CHECK_RC(rc, 0);
        if (g->claim_to - g->claim_from >= 8 || tries == 1000) {
            kill_record(s, ROLE_HOLDER, buf, len);
            delivered = 1;
            break;
        }
        /* Too small: deliver it all and return it, then try again. */
        do
            kill_record(s, ROLE_STEADY, buf, len);
        while ((rc = shmq_consumer_poll(c, buf, RECORD, &len)) == 0);
        CHECK_RC(rc, SHMQ_EMPTY);
        shmq_consumer_batch_end(c);
        usleep(200);
    }
    while (delivered < 5) {
        size_t len;
        int rc = shmq_consumer_poll(c, buf, RECORD, &len);
        if (rc == SHMQ_EMPTY)
            break; /* the claim is used up */
        CHECK_RC(rc, 0);
        kill_record(s, ROLE_HOLDER, buf, len);
        delivered++;
    }
    CHECK(g->claimed && g->claim_to - g->claim_from >= delivered);
    s->held_from = g->claim_from;
    s->held_to = g->claim_to;
    s->held_delivered = delivered;
    signal_fd(ready_fd);
    for (;;)
        pause();
}

/* A victim: batches of random size, each message recorded inside the batch
 * before the batch is returned; killed at a random moment. */
static void kill_victim(struct shmq_consumer *c, struct kill_shared *s, uint64_t seed)
{
    unsigned char buf[RECORD];
    uint64_t rng = seed;
    for (;;) {
        shmq_consumer_batch_begin(c, 1 + xorshift(&rng) % KILL_BATCH);
        int got = 0, rc;
        size_t len;
        while ((rc = shmq_consumer_poll(c, buf, RECORD, &len)) == 0) {
            kill_record(s, ROLE_VICTIM, buf, len);
            got++;
        }
        CHECK_RC(rc, SHMQ_EMPTY);
        shmq_consumer_batch_end(c);
        if (got == 0) {
            rc = shmq_consumer_wait(c, SECOND);
            if (rc == SHMQ_ENDED)
                return;
        }
    }
}

static void kill_steady(struct shmq_consumer *c, struct kill_shared *s, uint64_t seed)
{
    unsigned char buf[RECORD * 32];
    size_t lengths[32];
    uint64_t rng = seed;
    for (;;) {
        int rc;
        if (xorshift(&rng) & 1) {
            size_t len;
            rc = shmq_consumer_poll_wait(c, buf, RECORD, &len, SECOND);
            if (rc == 0) {
                kill_record(s, ROLE_STEADY, buf, len);
                continue;
            }
        } else {
            int n = shmq_consumer_poll_many(c, buf, sizeof(buf), lengths, 32);
            CHECK(n >= 0);
            for (int m = 0; m < n; m++)
                kill_record(s, ROLE_STEADY, buf + (size_t)m * RECORD, lengths[m]);
            if (n > 0)
                continue;
            rc = shmq_consumer_wait(c, SECOND);
        }
        if (rc == SHMQ_ENDED)
            break;
        CHECK(rc == 0 || rc == -ETIMEDOUT);
    }
    uint64_t lost = shmq_consumer_lost(c);
    if (lost > s->steady_lost)
        s->steady_lost = lost;
}

static pid_t kill_member(const char *name, enum kill_role role, struct kill_shared *s,
                         uint64_t seed)
{
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        close(ready[0]);
        struct shmq_consumer *c = open_member(name, "kill", SHMQ_START_EARLIEST);
        signal_fd(ready[1]);
        if (role == ROLE_VICTIM)
            kill_victim(c, s, seed);
        else
            kill_steady(c, s, seed);
        shmq_consumer_close(c);
        _exit(0);
    }
    close(ready[1]);
    CHECK(wait_fd(ready[0]));
    close(ready[0]);
    return kid;
}

/* Whether the holder's claim has come round again: all of it delivered,
 * and what the holder delivered delivered twice. */
static int claim_redelivered(struct kill_shared *s)
{
    uint64_t from = s->held_from, to = s->held_to, mine = s->held_delivered;
    for (uint64_t i = from; i < to; i++)
        if (s->hits[i] < (i < from + mine ? 2 : 1))
            return 0;
    return 1;
}

static void killed_members_claims_are_redelivered(void)
{
    const char *name = test_name("grp-kill");
    struct shmq_producer *p = create_queue(name, RECORD, KILL_CAPACITY, SHMQ_LOSSLESS);
    struct kill_shared *s = shared_alloc(sizeof(*s));
    pid_t steady = kill_member(name, ROLE_STEADY, s, 1);
    /* The holder's pid comes through a pipe of its own, read below. */
    int holder_ready[2];
    CHECK(pipe(holder_ready) == 0);
    pid_t holder = fork_child();
    if (holder == 0) {
        close(holder_ready[0]);
        struct shmq_consumer *c = open_member(name, "kill", SHMQ_START_EARLIEST);
        signal_fd(holder_ready[1]);
        kill_holder(c, s, holder_ready[1]);
        _exit(0);
    }
    close(holder_ready[1]);
    CHECK(wait_fd(holder_ready[0]));
    struct pollfd held = {.fd = holder_ready[0], .events = POLLIN};
    enum { HOLDING, RESCUING, KILLING, DONE } phase = HOLDING;
    uint64_t rng = 0xC0FFEEull, killed_at = 0, rescue_ns = 0, next_kill = 0;
    pid_t victim = -1;
    int kills = 0, blocked = 0;
    uint64_t i = 0, count = KILL_MAX;
    while (i < count) {
        unsigned char msg[RECORD];
        record_make(msg, i);
        int rc = shmq_producer_publish_wait(p, msg, RECORD, NULL, 2 * MS);
        if (rc == 0)
            i++;
        else
            CHECK_RC(rc, -ETIMEDOUT);
        if (rc == 0 && i % 256 == 0)
            usleep(50); /* paced, so that every member gets its share */
        if (rc != 0 || i % 64 == 0) {
            switch (phase) {
            case HOLDING:
                if (poll(&held, 1, 0) == 1) {
                    CHECK(wait_fd(holder_ready[0]));
                    kill_and_reap(holder);
                    killed_at = now_ns();
                    kills++;
                    phase = RESCUING;
                }
                break;
            case RESCUING:
                blocked += rc != 0;
                if (claim_redelivered(s)) {
                    rescue_ns = now_ns() - killed_at;
                    victim = kill_member(name, ROLE_VICTIM, s, xorshift(&rng));
                    next_kill = now_ns() + 1 * MS + xorshift(&rng) % (5 * MS);
                    phase = KILLING;
                }
                break;
            case KILLING:
                if (now_ns() >= next_kill) {
                    kill_and_reap(victim);
                    kills++;
                    /* Replaced at once: the new member may take the dead
                     * one's slot and the claim left in it. */
                    int last = kills == 1 + KILL_RANDOM;
                    victim = kill_member(name, last ? ROLE_STEADY : ROLE_VICTIM, s,
                                         xorshift(&rng));
                    next_kill = now_ns() + 1 * MS + xorshift(&rng) % (5 * MS);
                    if (last) {
                        /* Well past the last kill: a lap after it the
                         * producer goes on only once its claim was taken
                         * over. */
                        count = i + KILL_TAIL;
                        phase = DONE;
                    }
                }
                break;
            case DONE:
                break;
            }
        }
    }
    CHECK(phase == DONE);
    shmq_producer_close(p);
    close(holder_ready[0]);
    CHECK(wait_child(steady) == 0);
    CHECK(wait_child(victim) == 0);
    uint64_t missing = 0, extra = 0, unexplained = 0;
    for (uint64_t k = 0; k < count; k++) {
        missing += s->hits[k] == 0;
        if (s->hits[k] > 1) {
            extra += s->hits[k] - 1u;
            unexplained += !s->by_victim[k];
        }
    }
    fprintf(stderr, "kill: %llu records, %d kills; the held claim [%llu, %llu) (%llu delivered) came round "
            "again %.1f ms after the kill (producer blocked %d times meanwhile); missing %llu, "
            "delivered twice %llu (unexplained %llu), bad %llu, lost %llu\n",
            (unsigned long long)count, kills,
            (unsigned long long)s->held_from, (unsigned long long)s->held_to,
            (unsigned long long)s->held_delivered, rescue_ns / 1e6, blocked,
            (unsigned long long)missing, (unsigned long long)extra,
            (unsigned long long)unexplained, (unsigned long long)s->bad,
            (unsigned long long)s->steady_lost);
    CHECK(kills == 1 + KILL_RANDOM);
    CHECK(s->bad == 0 && missing == 0 && unexplained == 0);
    CHECK(extra <= (uint64_t)kills * KILL_BATCH);
    CHECK(s->held_delivered >= 1 && extra >= s->held_delivered);
    CHECK(s->steady_lost == 0);
    CHECK(rescue_ns < 2 * SECOND);
}

/* A member killed holding the tail of the stream, which is then closed.
 * The survivor reads as every reader does, until SHMQ_ENDED.
 * Found a bug once: the survivor got SHMQ_ENDED with the dead member's
 * claim [1, 8) never delivered, since rescue looks at most every 10 ms and
 * the survivor had looked just before the kill. A wait that finds the end
 * now looks for dead members' claims at once before reporting it. */
struct tail_shared {
    _Atomic uint8_t hits[64];
    _Atomic uint64_t survivor_received;
    _Atomic int survivor_done;
    _Atomic uint64_t lost;
};

static void claim_of_a_member_killed_at_the_end_is_delivered(void)
{
    enum { TAIL = 32, HELD = 8 };
    const char *name = test_name("grp-tail");
    struct shmq_producer *p = create_queue(name, RECORD, 64, SHMQ_LOSSLESS);
    struct tail_shared *s = shared_alloc(sizeof(*s));
    int ready[2], go_holder[2], go_survivor[2], holding[2];
    CHECK(pipe(ready) == 0 && pipe(go_holder) == 0 && pipe(go_survivor) == 0 &&
          pipe(holding) == 0);
    pid_t survivor = fork_child();
    if (survivor == 0) {
        struct shmq_consumer *c = open_member(name, "tail", SHMQ_START_EARLIEST);
        signal_fd(ready[1]);
        CHECK(wait_fd(go_survivor[0]));
        unsigned char buf[RECORD];
        for (;;) {
            size_t len;
            int rc = shmq_consumer_poll_wait(c, buf, sizeof(buf), &len, 5 * SECOND);
            if (rc == SHMQ_ENDED)
                break;
            CHECK_RC(rc, 0);
            uint64_t i;
            CHECK(record_check(buf, len, TAIL, &i));
            s->hits[i]++;
            s->survivor_received++;
        }
        s->lost = shmq_consumer_lost(c);
        s->survivor_done = 1;
        shmq_consumer_close(c);
        _exit(0);
    }
    CHECK(wait_fd(ready[0]));
    pid_t holder = fork_child();
    if (holder == 0) {
        struct shmq_consumer *c = open_member(name, "tail", SHMQ_START_EARLIEST);
        signal_fd(ready[1]);
        CHECK(wait_fd(go_holder[0]));
        shmq_consumer_batch_begin(c, HELD);
        uint64_t i = poll_index(c);
        CHECK(i == 0);
        s->hits[i]++;
        signal_fd(holding[1]);
        for (;;)
            pause();
    }
    CHECK(wait_fd(ready[0]));
    for (uint64_t i = 0; i < TAIL; i++)
        publish_record(p, i);
    signal_fd(go_holder[1]); /* the holder claims 0..HELD-1 first */
    CHECK(wait_fd(holding[0]));
    signal_fd(go_survivor[1]); /* then the survivor takes the rest and waits for more */
    uint64_t t0 = now_ns();
    while (s->survivor_received < TAIL - HELD && now_ns() - t0 < 10 * SECOND)
        usleep(100);
    CHECK(s->survivor_received == TAIL - HELD);
    kill_and_reap(holder);
    shmq_producer_close(p);
    CHECK(wait_child(survivor) == 0);
    uint64_t missing = 0;
    for (int i = 0; i < TAIL; i++)
        missing += s->hits[i] == 0;
    fprintf(stderr, "tail: the survivor received %llu, lost %llu; %llu of %d missing\n",
            (unsigned long long)s->survivor_received, (unsigned long long)s->lost,
            (unsigned long long)missing, TAIL);
    /* At least once: what the dead member claimed is delivered again (or,
     * were it gone from the ring, counted lost), never silently dropped. */
    CHECK(missing == 0 || s->lost >= missing);
}

/* A child that joins group `group`, claims a batch of `batch` from what is
 * published, delivers the first message, says so, and waits to be killed. */
static pid_t member_holding_a_batch(const char *name, const char *group, size_t batch,
                                    uint64_t *first)
{
    int ready[2];
    CHECK(pipe(ready) == 0);
    uint64_t *shared_first = shared_alloc(sizeof(*shared_first));
    pid_t kid = fork_child();
    if (kid == 0) {
        struct shmq_consumer *c = open_member(name, group, SHMQ_START_EARLIEST);
        shmq_consumer_batch_begin(c, batch);
        *shared_first = poll_index(c);
        signal_fd(ready[1]);
        for (;;)
            pause();
    }
    close(ready[1]);
    CHECK(wait_fd(ready[0]));
    close(ready[0]);
    *first = *shared_first;
    munmap(shared_first, sizeof(*shared_first));
    return kid;
}

/* Lossless: a member that joins takes the first free member slot, here the
 * dead one's, and with it the claim left there (adopt_leftover). */
static void joiner_adopts_a_dead_members_claim(void)
{
    const char *name = test_name("grp-adopt");
    struct shmq_producer *p = create_queue(name, RECORD, 16, SHMQ_LOSSLESS);
    struct shmq_consumer *survivor = open_member(name, "adopt", SHMQ_START_EARLIEST);
    for (uint64_t i = 0; i < 10; i++)
        publish_record(p, i);
    uint64_t first;
    pid_t holder = member_holding_a_batch(name, "adopt", 8, &first);
    CHECK(first == 0);
    struct shmq_group_info info;
    CHECK(find_group_info(name, "adopt", &info) == 1);
    CHECK(info.members == 2 && info.claimed == 8 && info.position == 8);
    kill_and_reap(holder);
    struct shmq_consumer *joiner = open_member(name, "adopt", SHMQ_START_LATEST);
    CHECK(shmq_consumer_position(joiner) == 0); /* the adopted claim comes first */
    for (uint64_t i = 0; i < 8; i++)
        CHECK(poll_index(joiner) == i);
    CHECK(poll_index(survivor) == 8);
    CHECK(poll_index(joiner) == 9);
    unsigned char buf[RECORD];
    size_t len;
    CHECK_RC(shmq_consumer_poll(survivor, buf, sizeof(buf), &len), SHMQ_EMPTY);
    CHECK(find_group_info(name, "adopt", &info) == 1);
    CHECK(info.members == 2 && info.claimed == 0 && info.position == 10 && info.lost == 0);
    /* All returned: the ring is free again (16 more fit, not 17). */
    for (uint64_t i = 10; i < 26; i++)
        publish_record(p, i);
    unsigned char msg[RECORD];
    record_make(msg, 26);
    CHECK_RC(shmq_producer_publish(p, msg, RECORD, NULL), SHMQ_FULL);
    shmq_consumer_close(joiner);
    shmq_consumer_close(survivor);
    shmq_producer_close(p);
}

/* Lossy: a dead member's claim overwritten before anyone took it over is
 * counted lost, once, when a member rescues it (claimed from its start:
 * the message the dead member delivered counts too, at-least-once). */
static void dead_members_overwritten_claim_is_counted_lost(void)
{
    const char *name = test_name("grp-deadlossy");
    struct shmq_producer *p = create_queue(name, RECORD, 16, SHMQ_LOSSY);
    struct shmq_consumer *survivor = open_member(name, "dl", SHMQ_START_EARLIEST);
    for (uint64_t i = 0; i < 10; i++)
        publish_record(p, i);
    uint64_t first;
    pid_t holder = member_holding_a_batch(name, "dl", 8, &first);
    CHECK(first == 0);
    kill_and_reap(holder);
    for (uint64_t i = 10; i < 40; i++)
        publish_record(p, i); /* head 40: 0..23 are gone */
    /* The cursor (8) was lapped: it resumes at 40 - 8 = 32, counting 24.
     * Whoever looks for dead members' claims (the first poll does, then a
     * poll that finds nothing, at most every 10 ms) finds [0, 8)
     * overwritten: counted, not delivered. */
    for (uint64_t i = 32; i < 40; i++)
        CHECK(poll_index(survivor) == i);
    uint64_t t0 = now_ns();
    unsigned char buf[RECORD];
    size_t len;
    while (shmq_consumer_lost(survivor) < 32 && now_ns() - t0 < 2 * SECOND) {
        CHECK_RC(shmq_consumer_poll(survivor, buf, sizeof(buf), &len), SHMQ_EMPTY);
        usleep(1000);
    }
    CHECK(shmq_consumer_lost(survivor) == 32);
    CHECK_RC(shmq_consumer_poll(survivor, buf, sizeof(buf), &len), SHMQ_EMPTY);
    struct shmq_group_info info;
    CHECK(find_group_info(name, "dl", &info) == 1);
    CHECK(info.members == 1 && info.claimed == 0 && info.lost == 32 && info.position == 40);
    shmq_consumer_close(survivor);
    shmq_producer_close(p);
}

/* ------------------------------------------------------------- lossy */

#define LOSSY_COUNT 200000u
#define LOSSY_MEMBERS 3
#define LOSSY_LEN 64u

struct lossy_shared {
    _Atomic uint8_t hits[LOSSY_COUNT];
    _Atomic uint64_t received[LOSSY_MEMBERS + 1], lost[LOSSY_MEMBERS + 1];
    _Atomic uint64_t bad, repeated, out_of_order;
};

static int lossy_record(struct lossy_shared *s, const unsigned char *p, size_t len)
{
    uint64_t seq, inc, sum;
    if (!msg_check(p, len, LOSSY_LEN, &seq, &inc, &sum) || seq >= LOSSY_COUNT) {
        s->bad++;
        return -1;
    }
    if (s->hits[seq]++ != 0)
        s->repeated++;
    return (int)seq;
}

static void lossy_member(const char *name, int k, int ready_fd, int report_fd,
                         struct lossy_shared *s)
{
    struct shmq_consumer *c = open_member(name, "slow", SHMQ_START_EARLIEST);
    signal_fd(ready_fd);
    unsigned char buf[LOSSY_LEN * 8];
    size_t lengths[8];
    uint64_t rng = 0xabc + (uint64_t)k;
    for (;;) {
        int rc;
        if (xorshift(&rng) % 3 == 0) {
            int n = shmq_consumer_poll_many(c, buf, sizeof(buf), lengths, 8);
            CHECK(n >= 0);
            size_t at = 0;
            for (int m = 0; m < n; m++) {
                if (lossy_record(s, buf + at, lengths[m]) >= 0)
                    s->received[k]++;
                at += lengths[m];
            }
            if (n > 0)
                continue;
        } else {
            /* A batch with a pause inside: the producer overwrites some of
             * the claim, which the group counts as lost. */
            shmq_consumer_batch_begin(c, 1 + xorshift(&rng) % 8);
            size_t len;
            int got = 0;
            while ((rc = shmq_consumer_poll(c, buf, LOSSY_LEN, &len)) == 0) {
                if (lossy_record(s, buf, len) >= 0)
                    s->received[k]++;
                if (got++ == 0 && xorshift(&rng) % 4 == 0)
                    usleep(20 + xorshift(&rng) % 200);
            }
            CHECK_RC(rc, SHMQ_EMPTY);
            shmq_consumer_batch_end(c);
            if (got > 0)
                continue;
        }
        rc = shmq_consumer_wait(c, SECOND);
        if (rc == SHMQ_ENDED)
            break;
        CHECK(rc == 0 || rc == -ETIMEDOUT);
    }
    /* Everyone drained first: the group's count is final only then. */
    signal_fd(ready_fd);
    CHECK(wait_fd(report_fd));
    s->lost[k] = shmq_consumer_lost(c);
    shmq_consumer_close(c);
}

static void lossy_plain(const char *name, int ready_fd, struct lossy_shared *s)
{
    struct shmq_consumer *c = open_member(name, NULL, SHMQ_START_EARLIEST);
    signal_fd(ready_fd);
    unsigned char buf[LOSSY_LEN];
    int64_t last = -1;
    uint64_t received = 0;
    for (;;) {
        size_t len;
        int rc = shmq_consumer_poll_wait(c, buf, sizeof(buf), &len, SECOND);
        if (rc == SHMQ_ENDED)
            break;
        if (rc == -ETIMEDOUT)
            continue;
        CHECK_RC(rc, 0);
        uint64_t seq, inc, sum;
        if (!msg_check(buf, len, LOSSY_LEN, &seq, &inc, &sum)) {
            s->bad++;
            continue;
        }
        if ((int64_t)seq <= last)
            s->out_of_order++;
        last = (int64_t)seq;
        received++;
        if ((received & 1023) == 0)
            usleep(200);
    }
    s->received[LOSSY_MEMBERS] = received;
    s->lost[LOSSY_MEMBERS] = shmq_consumer_lost(c);
    signal_fd(ready_fd);
    shmq_consumer_close(c);
}

static void lossy_members_count_what_they_lose(void)
{
    const char *name = test_name("grp-lossy");
    struct shmq_producer *p = create_queue(name, LOSSY_LEN, 16, SHMQ_LOSSY);
    struct lossy_shared *s = shared_alloc(sizeof(*s));
    int ready[2], report[2];
    CHECK(pipe(ready) == 0 && pipe(report) == 0);
    pid_t kids[LOSSY_MEMBERS + 1];
    for (int k = 0; k <= LOSSY_MEMBERS; k++) {
        kids[k] = fork_child();
        if (kids[k] == 0) {
            close(ready[0]);
            close(report[1]);
            if (k < LOSSY_MEMBERS)
                lossy_member(name, k, ready[1], report[0], s);
            else
                lossy_plain(name, ready[1], s);
            _exit(0);
        }
    }
    close(ready[1]);
    close(report[0]);
    for (int k = 0; k <= LOSSY_MEMBERS; k++)
        CHECK(wait_fd(ready[0]));
    unsigned char msg[LOSSY_LEN];
    for (uint64_t i = 0; i < LOSSY_COUNT; i++) {
        size_t len = msg_make(msg, LOSSY_LEN, i, 7);
        uint64_t seq;
        CHECK_RC(shmq_producer_publish(p, msg, len, &seq), 0);
        CHECK(seq == i);
        if (i % 256 == 0)
            usleep(50); /* fast, but not so fast that nobody receives anything */
    }
    shmq_producer_close(p);
    for (int k = 0; k <= LOSSY_MEMBERS; k++)
        CHECK(wait_fd(ready[0])); /* drained */
    for (int k = 0; k < LOSSY_MEMBERS; k++)
        signal_fd(report[1]);
    for (int k = 0; k <= LOSSY_MEMBERS; k++)
        CHECK(wait_child(kids[k]) == 0);
    close(ready[0]);
    close(report[1]);
    uint64_t received = 0;
    for (int k = 0; k < LOSSY_MEMBERS; k++) {
        fprintf(stderr, "lossy: member %d received %llu, says the group lost %llu\n", k,
                (unsigned long long)s->received[k], (unsigned long long)s->lost[k]);
        received += s->received[k];
        CHECK(s->lost[k] == s->lost[0]);
    }
    fprintf(stderr, "lossy: the group received %llu + lost %llu = %llu of %u; repeated %llu, bad "
            "%llu; plain received %llu + lost %llu\n", (unsigned long long)received,
            (unsigned long long)s->lost[0], (unsigned long long)(received + s->lost[0]),
            LOSSY_COUNT, (unsigned long long)s->repeated, (unsigned long long)s->bad,
            (unsigned long long)s->received[LOSSY_MEMBERS],
            (unsigned long long)s->lost[LOSSY_MEMBERS]);
    CHECK(s->bad == 0 && s->repeated == 0 && s->out_of_order == 0);
    CHECK(received + s->lost[0] == LOSSY_COUNT);
    CHECK(s->lost[0] > 0 && received > 0);
    CHECK(s->received[LOSSY_MEMBERS] + s->lost[LOSSY_MEMBERS] == LOSSY_COUNT);
}

/* ------------------------------------------------------- in one process */

static void peek_release_and_batches_hold_a_lossless_producer(void)
{
    const char *name = test_name("grp-peek");
    struct shmq_producer *p = create_queue(name, RECORD, 16, SHMQ_LOSSLESS);
    struct shmq_consumer *a = open_member(name, "g", SHMQ_START_EARLIEST);
    struct shmq_consumer *b = open_member(name, "g", SHMQ_START_EARLIEST);
    for (uint64_t i = 0; i < 10; i++)
        publish_record(p, i);

    /* peek lends message 0 to a; b's poll takes the next one. */
    const void *data;
    size_t len;
    uint64_t i;
    CHECK_RC(shmq_consumer_peek(a, &data, &len), 0);
    CHECK(record_check(data, len, 10, &i) && i == 0);
    unsigned char buf[RECORD];
    CHECK_RC(shmq_consumer_poll(a, buf, sizeof(buf), &len), -EINPROGRESS);
    CHECK_RC(shmq_consumer_peek(a, &data, &len), -EINPROGRESS);
    CHECK(poll_index(b) == 1);
    CHECK_RC(shmq_consumer_release(a), 0);
    CHECK_RC(shmq_consumer_release(a), -EINVAL);
    CHECK(shmq_consumer_lost(a) == 0 && shmq_consumer_position(a) == 2);

    /* -EMSGSIZE: the message stays a's; b gets the next. */
    CHECK_RC(shmq_consumer_poll(a, buf, RECORD - 1, &len), -EMSGSIZE);
    CHECK(len == RECORD);
    CHECK(poll_index(b) == 3);
    CHECK(poll_index(a) == 2);

    /* A batch claims up to its size at once and holds it until its end. */
    shmq_consumer_batch_begin(a, 4);
    CHECK(poll_index(a) == 4);
    struct shmq_group_info info;
    CHECK(find_group_info(name, "g", &info) == 1);
    CHECK(info.members == 2 && info.position == 8 && info.claimed == 4 && info.lag == 2 &&
          info.lost == 0);
    CHECK(poll_index(b) == 8);
    CHECK(poll_index(a) == 5);
    CHECK(poll_index(a) == 6);
    CHECK(poll_index(a) == 7);
    /* Used up: the batch ends here, though 9 is there. */
    CHECK_RC(shmq_consumer_poll(a, buf, sizeof(buf), &len), SHMQ_EMPTY);
    CHECK(find_group_info(name, "g", &info) == 1);
    CHECK(info.claimed == 4);

    /* While a's claim [4, 8) is out, nothing may overwrite 4: the producer
     * fits sequences up to 4 + 15 = 19, then is full. */
    int fitted = 0;
    unsigned char msg[RECORD];
    for (uint64_t k = 10; k < 40; k++) {
        record_make(msg, k);
        if (shmq_producer_publish(p, msg, RECORD, NULL) != 0)
            break;
        fitted++;
    }
    CHECK(fitted == 10);
    record_make(msg, 20);
    CHECK_RC(shmq_producer_publish(p, msg, RECORD, NULL), SHMQ_FULL);
    shmq_consumer_batch_end(a);
    CHECK(find_group_info(name, "g", &info) == 1);
    CHECK(info.claimed == 0 && info.position == 9);
    /* Returned: now the cursor (9) holds it, so up to 24 fits. */
    for (uint64_t k = 20; k < 25; k++)
        publish_record(p, k);
    record_make(msg, 25);
    CHECK_RC(shmq_producer_publish(p, msg, RECORD, NULL), SHMQ_FULL);

    /* poll_many is a batch of its own. */
    unsigned char many[RECORD * 8];
    size_t lengths[8];
    CHECK(shmq_consumer_poll_many(b, many, sizeof(many), lengths, 8) == 8);
    for (int k = 0; k < 8; k++)
        CHECK(record_check(many + k * RECORD, lengths[k], 25, &i) && i == 9 + (uint64_t)k);
    CHECK(find_group_info(name, "g", &info) == 1);
    CHECK(info.claimed == 0 && info.position == 17);

    /* poll_many claims no more than its buffer takes: 3 of the 8 there. */
    CHECK(shmq_consumer_poll_many(b, many, 3 * RECORD, lengths, 8) == 3);
    for (int k = 0; k < 3; k++)
        CHECK(record_check(many + k * RECORD, lengths[k], 25, &i) && i == 17 + (uint64_t)k);
    CHECK(find_group_info(name, "g", &info) == 1);
    CHECK(info.claimed == 0 && info.position == 20);
    /* So does a batch begun _within a byte budget. */
    shmq_consumer_batch_begin_within(a, 8, 2 * RECORD);
    CHECK(poll_index(a) == 20);
    CHECK(poll_index(b) == 22);
    CHECK(poll_index(a) == 21);
    CHECK_RC(shmq_consumer_poll(a, buf, sizeof(buf), &len), SHMQ_EMPTY);
    shmq_consumer_batch_end(a);

    /* What a batch claimed and did not deliver stays the member's. */
    for (uint64_t k = 25; k < 31; k++)
        publish_record(p, k);
    shmq_consumer_batch_begin(a, 4);
    CHECK(poll_index(a) == 23);
    shmq_consumer_batch_end(a);
    CHECK(find_group_info(name, "g", &info) == 1);
    CHECK(info.claimed == 3 && info.position == 27);
    CHECK(poll_index(b) == 27);
    CHECK(poll_index(a) == 24 && poll_index(a) == 25 && poll_index(a) == 26);
    CHECK(poll_index(a) == 28);
    CHECK(find_group_info(name, "g", &info) == 1);
    CHECK(info.claimed == 0 && info.position == 29);
    CHECK(shmq_consumer_lost(a) == 0 && shmq_consumer_lost(b) == 0);
    shmq_consumer_close(a);
    shmq_consumer_close(b);
    shmq_producer_close(p);
}

/* poll_wait inside a batch whose claim is used up, with more published: it
 * must wait out its timeout like any sleeper (the batch takes nothing more
 * until it ends), never spin. It once spun: hold_claim answered SHMQ_EMPTY
 * while shmq_group_ready said a poll may find something. The call runs in
 * a child, so a regression fails the test instead of hanging it. */
static void poll_wait_after_a_used_up_batch(void)
{
    const char *name = test_name("grp-bwait");
    struct shmq_producer *p = create_queue(name, RECORD, 16, SHMQ_LOSSY);
    for (uint64_t i = 0; i < 2; i++)
        publish_record(p, i);
    struct outcome {
        int rc;
        size_t len;
        unsigned char buf[RECORD];
        double ms, cpu_ms;
        int done;
    } *o = shared_alloc(sizeof(*o));
    int used_up[2], published[2];
    CHECK(pipe(used_up) == 0 && pipe(published) == 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        struct shmq_consumer *a = open_member(name, "g", SHMQ_START_EARLIEST);
        shmq_consumer_batch_begin(a, 4); /* claims the 2 there are */
        CHECK(poll_index(a) == 0);
        CHECK(poll_index(a) == 1);
        signal_fd(used_up[1]);
        CHECK(wait_fd(published[0]));
        struct rusage before, after;
        CHECK(getrusage(RUSAGE_SELF, &before) == 0);
        uint64_t t0 = now_ns();
        o->rc = shmq_consumer_poll_wait(a, o->buf, sizeof(o->buf), &o->len, 200 * MS);
        o->ms = (now_ns() - t0) / 1e6;
        CHECK(getrusage(RUSAGE_SELF, &after) == 0);
        o->cpu_ms = (double)(after.ru_utime.tv_sec - before.ru_utime.tv_sec) * 1e3 +
                    (double)(after.ru_utime.tv_usec - before.ru_utime.tv_usec) / 1e3 +
                    (double)(after.ru_stime.tv_sec - before.ru_stime.tv_sec) * 1e3 +
                    (double)(after.ru_stime.tv_usec - before.ru_stime.tv_usec) / 1e3;
        o->done = 1;
        shmq_consumer_batch_end(a);
        shmq_consumer_close(a);
        _exit(0);
    }
    CHECK(wait_fd(used_up[0]));
    for (uint64_t i = 2; i < 6; i++)
        publish_record(p, i);
    signal_fd(published[1]);
    uint64_t t0 = now_ns();
    while (!o->done && now_ns() - t0 < 2 * SECOND)
        usleep(1000);
    if (!o->done) {
        kill_and_reap(kid);
        fprintf(stderr, "BUG: poll_wait(200 ms) in a used-up batch still spinning after 2 s "
                "(group.c hold_claim vs shmq_group_ready)\n");
    } else {
        CHECK(wait_child(kid) == 0);
        fprintf(stderr, "poll_wait in a used-up batch: %d (%s) after %.1f ms, %.1f ms of CPU\n",
                o->rc, shmq_strerror(o->rc), o->ms, o->cpu_ms);
    }
    for (int k = 0; k < 2; k++) {
        close(used_up[k]);
        close(published[k]);
    }
    shmq_producer_close(p);
    CHECK(o->done);
    /* It delivered the next message, or waited like a sleeper. */
    uint64_t i;
    CHECK((o->rc == 0 && record_check(o->buf, o->len, 6, &i) && i == 2) ||
          (o->rc == -ETIMEDOUT && o->cpu_ms < 50));
}

static void two_groups_and_a_plain_consumer_each_see_the_stream(void)
{
    enum { COUNT = 100 };
    const char *name = test_name("grp-two");
    struct shmq_producer *p = create_queue(name, RECORD, 128, SHMQ_LOSSLESS);
    struct shmq_consumer *a = open_member(name, "g1", SHMQ_START_EARLIEST);
    struct shmq_consumer *b = open_member(name, "g1", SHMQ_START_EARLIEST);
    struct shmq_consumer *c = open_member(name, "g2", SHMQ_START_EARLIEST);
    struct shmq_consumer *d = open_member(name, NULL, SHMQ_START_EARLIEST);
    CHECK(shmq_consumer_registered(d) == 1 && shmq_consumer_registered(a) == 0);
    for (uint64_t i = 0; i < COUNT; i++)
        publish_record(p, i);
    int seen[COUNT] = {0};
    unsigned char buf[RECORD * 8];
    size_t lengths[8];
    uint64_t from_a = 0, from_b = 0, i;
    for (int round = 0; from_a + from_b < COUNT; round++) {
        CHECK(round < 2 * COUNT);
        size_t len;
        if (shmq_consumer_poll(a, buf, RECORD, &len) == 0) {
            CHECK(record_check(buf, len, COUNT, &i));
            seen[i]++;
            from_a++;
        }
        int n = shmq_consumer_poll_many(b, buf, sizeof(buf), lengths, 1 + round % 8);
        CHECK(n >= 0);
        for (int m = 0; m < n; m++) {
            CHECK(record_check(buf + m * RECORD, lengths[m], COUNT, &i));
            seen[i]++;
            from_b++;
        }
    }
    for (int k = 0; k < COUNT; k++)
        CHECK(seen[k] == 1);
    CHECK(from_a > 0 && from_b > 0);
    for (uint64_t k = 0; k < COUNT; k++) {
        CHECK(poll_index(c) == k);
        CHECK(poll_index(d) == k);
    }
    size_t len;
    CHECK_RC(shmq_consumer_poll(a, buf, RECORD, &len), SHMQ_EMPTY);
    CHECK_RC(shmq_consumer_poll(c, buf, RECORD, &len), SHMQ_EMPTY);
    struct shmq_group_info infos[SHMQ_GROUPS_MAX];
    CHECK(shmq_inspect_groups(name, infos, SHMQ_GROUPS_MAX) == 2);
    struct shmq_group_info info;
    CHECK(find_group_info(name, "g1", &info) == 1);
    CHECK(info.members == 2 && info.position == COUNT && info.lag == 0 && info.lost == 0);
    CHECK(find_group_info(name, "g2", &info) == 1);
    CHECK(info.members == 1 && info.position == COUNT && info.lost == 0);
    CHECK(shmq_inspect_groups(name, infos, 1) == 1); /* at most max */
    shmq_consumer_close(a);
    shmq_consumer_close(b);
    shmq_consumer_close(c);
    shmq_consumer_close(d);
    CHECK(shmq_inspect_groups(name, infos, SHMQ_GROUPS_MAX) == 0);
    shmq_producer_close(p);
}

static void late_members_continue_and_an_empty_group_starts_afresh(void)
{
    const char *name = test_name("grp-late");
    struct shmq_producer *p = create_queue(name, RECORD, 16, SHMQ_LOSSY);
    for (uint64_t i = 0; i < 10; i++)
        publish_record(p, i);
    struct shmq_consumer *a = open_member(name, "g", SHMQ_START_EARLIEST);
    CHECK(shmq_consumer_position(a) == 0);
    CHECK(poll_index(a) == 0 && poll_index(a) == 1 && poll_index(a) == 2);
    /* Joins at the group's position, whatever its own start says. */
    struct shmq_consumer *b = open_member(name, "g", SHMQ_START_LATEST);
    CHECK(shmq_consumer_position(b) == 3);
    CHECK(poll_index(b) == 3);
    shmq_consumer_close(a);
    shmq_consumer_close(b);
    /* Nobody left: a new member makes the group again, at its own start. */
    struct shmq_consumer *c = open_member(name, "g", SHMQ_START_LATEST);
    CHECK(shmq_consumer_position(c) == 10);
    shmq_consumer_close(c);
    c = open_member(name, "g", SHMQ_START_EARLIEST);
    CHECK(shmq_consumer_position(c) == 0);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

/* A lapped group counts the skipped messages once, for all members; an
 * in-place read overwritten under a member counts one more. */
static void lapped_group_counts_its_loss_once(void)
{
    const char *name = test_name("grp-lap");
    struct shmq_producer *p = create_queue(name, RECORD, 16, SHMQ_LOSSY);
    struct shmq_consumer *a = open_member(name, "g", SHMQ_START_EARLIEST);
    struct shmq_consumer *b = open_member(name, "g", SHMQ_START_EARLIEST);
    struct shmq_consumer *plain = open_member(name, NULL, SHMQ_START_EARLIEST);
    for (uint64_t i = 0; i < 40; i++)
        publish_record(p, i);
    /* head 40, 16 slots: resume half a ring behind, at 32. */
    CHECK(poll_index(a) == 32);
    CHECK(shmq_consumer_lost(a) == 32 && shmq_consumer_lost(b) == 32);
    CHECK(poll_index(b) == 33);
    CHECK(poll_index(plain) == 32 && shmq_consumer_lost(plain) == 32);
    struct shmq_group_info info;
    CHECK(find_group_info(name, "g", &info) == 1);
    CHECK(info.lost == 32 && info.position == 34 && info.lag == 6);
    const void *data;
    size_t len;
    CHECK_RC(shmq_consumer_peek(b, &data, &len), 0);
    uint64_t i;
    CHECK(record_check(data, len, 40, &i) && i == 34);
    for (uint64_t k = 40; k < 60; k++)
        publish_record(p, k); /* rewrites 34's slot */
    CHECK_RC(shmq_consumer_release(b), SHMQ_OVERWRITTEN);
    CHECK(shmq_consumer_lost(a) == 33 && shmq_consumer_lost(b) == 33);
    CHECK(find_group_info(name, "g", &info) == 1);
    CHECK(info.lost == 33);
    /* The cursor (35) was lapped too: one of them counts it. */
    uint64_t next = poll_index(a);
    CHECK(next == 52);
    CHECK(shmq_consumer_lost(a) == 33 + (52 - 35) && shmq_consumer_lost(b) == shmq_consumer_lost(a));
    shmq_consumer_close(a);
    shmq_consumer_close(b);
    shmq_consumer_close(plain);
    shmq_producer_close(p);
}

static void bad_names_and_limits(void)
{
    const char *name = test_name("grp-names");
    struct shmq_producer *p = create_queue(name, RECORD, 16, SHMQ_LOSSY);
    const char *bad[] = {"", ".g", "-g", "_g", "g h", "g/h", "g\xc3\xa9", "g:h",
                         "abcdefghijklmnopqrstuvwxyz0123456"}; /* 33 characters */
    struct shmq_consumer *c = NULL;
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        struct shmq_consumer_options options = {.group = bad[k]};
        int rc = shmq_consumer_open_with(&c, name, &options);
        if (rc != -EINVAL)
            fprintf(stderr, "group name \"%s\": %d (%s)\n", bad[k], rc, shmq_strerror(rc));
        CHECK_RC(rc, -EINVAL);
    }
    const char *good[] = {"abcdefghijklmnopqrstuvwxyz012345", "a", "G.1_x-y"};
    for (size_t k = 0; k < sizeof(good) / sizeof(good[0]); k++) {
        c = open_member(name, good[k], SHMQ_START_LATEST);
        shmq_consumer_close(c);
    }
    struct shmq_consumer_options observer = {.group = "g", .no_entry = 1};
    CHECK_RC(shmq_consumer_open_with(&c, name, &observer), -EINVAL);

    /* SHMQ_GROUPS_MAX groups, then -EUSERS; one more once one is gone. */
    struct shmq_consumer *groups[SHMQ_GROUPS_MAX];
    for (unsigned g = 0; g < SHMQ_GROUPS_MAX; g++) {
        char group[16];
        snprintf(group, sizeof(group), "g%u", g);
        groups[g] = open_member(name, group, SHMQ_START_LATEST);
    }
    struct shmq_group_info infos[SHMQ_GROUPS_MAX];
    CHECK(shmq_inspect_groups(name, infos, SHMQ_GROUPS_MAX) == (int)SHMQ_GROUPS_MAX);
    struct shmq_consumer_options one_more = {.group = "extra"};
    CHECK_RC(shmq_consumer_open_with(&c, name, &one_more), -EUSERS);
    /* Joining one that exists still works. */
    struct shmq_consumer *again = open_member(name, "g3", SHMQ_START_LATEST);
    shmq_consumer_close(again);
    shmq_consumer_close(groups[5]);
    c = open_member(name, "extra", SHMQ_START_LATEST);
    shmq_consumer_close(c);
    for (unsigned g = 0; g < SHMQ_GROUPS_MAX; g++)
        if (g != 5)
            shmq_consumer_close(groups[g]);

    /* SHMQ_GROUP_MEMBERS_MAX members of one group, then -EUSERS. */
    struct shmq_consumer **members = calloc(SHMQ_GROUP_MEMBERS_MAX, sizeof(*members));
    CHECK(members != NULL);
    for (unsigned m = 0; m < SHMQ_GROUP_MEMBERS_MAX; m++)
        members[m] = open_member(name, "crowd", SHMQ_START_LATEST);
    struct shmq_group_info info;
    CHECK(find_group_info(name, "crowd", &info) == 1);
    CHECK(info.members == SHMQ_GROUP_MEMBERS_MAX);
    struct shmq_consumer_options crowd = {.group = "crowd"};
    CHECK_RC(shmq_consumer_open_with(&c, name, &crowd), -EUSERS);
    for (unsigned m = 0; m < SHMQ_GROUP_MEMBERS_MAX; m++)
        shmq_consumer_close(members[m]);
    free(members);
    shmq_producer_close(p);
}

/* A group made starting earliest on a lossless queue, after messages were
 * published: a start below the head is protected only from the producer's
 * next look at the consumers on (protocol.md, section 16: a message the
 * producer rewrote while the consumer registered counts as lost; the
 * producer looks every half lap, so it may publish up to a lap past the
 * head of its last look). What the group cannot read is counted, exactly:
 * received + lost covers every message from its start. */
static void earliest_member_of_a_lossless_queue_counts_what_it_lost(void)
{
    const char *name = test_name("grp-early");
    struct shmq_producer *p = create_queue(name, RECORD, 8, SHMQ_LOSSLESS);
    for (uint64_t i = 0; i < 12; i++)
        publish_record(p, i); /* nobody registered: all fit; the oldest left is 4 */
    struct shmq_consumer *m = open_member(name, "early", SHMQ_START_EARLIEST);
    CHECK(shmq_consumer_position(m) == 5); /* earliest: head - capacity + 1 */
    uint64_t published = 12;
    unsigned char msg[RECORD];
    for (uint64_t i = 12; i < 16; i++) {
        record_make(msg, i);
        if (shmq_producer_publish(p, msg, RECORD, NULL) != 0)
            break;
        published++;
    }
    uint64_t received = 0, last = 0;
    unsigned char buf[RECORD];
    size_t len;
    while (shmq_consumer_poll(m, buf, sizeof(buf), &len) == 0) {
        uint64_t index;
        CHECK(record_check(buf, len, UINT64_MAX, &index));
        CHECK(received == 0 || index == last + 1);
        last = index;
        received++;
    }
    fprintf(stderr, "early: published up to %llu; the group received %llu, lost %llu\n",
            (unsigned long long)published, (unsigned long long)received,
            (unsigned long long)shmq_consumer_lost(m));
    CHECK(received + shmq_consumer_lost(m) == published - 5);
    CHECK(last == published - 1);
    shmq_consumer_close(m);
    shmq_producer_close(p);
}

/* Known-bug tests last, each in a child of its own: every scenario runs and
 * reports, and the program fails if any did. */
static const struct {
    const char *name;
    void (*run)(void);
    int known_bug;
} tests[] = {
    {"bad_names_and_limits", bad_names_and_limits, 0},
    {"peek_release_and_batches_hold_a_lossless_producer",
     peek_release_and_batches_hold_a_lossless_producer, 0},
    {"two_groups_and_a_plain_consumer_each_see_the_stream",
     two_groups_and_a_plain_consumer_each_see_the_stream, 0},
    {"late_members_continue_and_an_empty_group_starts_afresh",
     late_members_continue_and_an_empty_group_starts_afresh, 0},
    {"lapped_group_counts_its_loss_once", lapped_group_counts_its_loss_once, 0},
    {"joiner_adopts_a_dead_members_claim", joiner_adopts_a_dead_members_claim, 0},
    {"dead_members_overwritten_claim_is_counted_lost",
     dead_members_overwritten_claim_is_counted_lost, 0},
    {"members_split_a_lossless_stream_exactly_once", members_split_a_lossless_stream_exactly_once,
     0},
    {"killed_members_claims_are_redelivered", killed_members_claims_are_redelivered, 0},
    {"lossy_members_count_what_they_lose", lossy_members_count_what_they_lose, 0},
    {"claim_of_a_member_killed_at_the_end_is_delivered",
     claim_of_a_member_killed_at_the_end_is_delivered, 0},
    {"poll_wait_after_a_used_up_batch", poll_wait_after_a_used_up_batch, 0},
    {"earliest_member_of_a_lossless_queue_counts_what_it_lost",
     earliest_member_of_a_lossless_queue_counts_what_it_lost, 0},
};

/* Runs a test in a child that owns (and unlinks) the names it makes. */
static int run_isolated(void (*run)(void))
{
    pid_t kid = fork_child();
    if (kid == 0) {
        test_name_count = 0;
        test_owner_pid = getpid();
        test_start(60);
        run();
        exit(0);
    }
    return wait_child(kid);
}

/* No argument: every scenario; otherwise only those named. */
int main(int argc, char **argv)
{
    test_start(120);
    uint64_t t0 = now_ns();
    int failed = 0;
    for (size_t k = 0; k < sizeof(tests) / sizeof(tests[0]); k++) {
        int chosen = argc < 2;
        for (int a = 1; a < argc; a++)
            chosen |= strcmp(argv[a], tests[k].name) == 0;
        if (!chosen)
            continue;
        uint64_t t = now_ns();
        if (!tests[k].known_bug) {
            tests[k].run();
        } else if (run_isolated(tests[k].run) != 0) {
            fprintf(stderr, "FAILED %s: a known bug, see the comment above the test\n",
                    tests[k].name);
            failed = 1;
            continue;
        }
        fprintf(stderr, "ok %s (%.2f s)\n", tests[k].name, (now_ns() - t) / 1e9);
    }
    fprintf(stderr, "groups: %.1f s in all\n", (now_ns() - t0) / 1e9);
    return failed;
}

/* ThreadSanitizer over the group claim protocol (csrc/group.c): one
 * producer thread and MEMBERS member threads over ONE mapping of the ring
 * and ONE group page (TSan tracks addresses, so separate mappings would
 * hide races). The handles are bound by hand, as tsan_threads.c does, and
 * each member gets a membership of the shared page with its own member
 * slot and token; the page's consumer-state locks stay NULL, so nobody
 * looks for dead members (none die here).
 *
 * The members read every way a member can: poll, poll_many, explicit
 * batches, peek/release and poll_wait (a futex sleep on the shared wake
 * page), so their claims, returns and cursor moves interleave. Payloads
 * carry their index and a checksum; each index delivered is counted.
 *  - lossless: the producer holds the page as group 0's and retries on
 *    SHMQ_FULL; every index reaches exactly one member, whole, and the
 *    group loses nothing.
 *  - lossy: a 16-slot ring the producer laps; no index twice, none torn,
 *    and delivered + the group's lost == published. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "helpers.h"

#include "ring_internal.h"

#define MESSAGES 300000u
#define MEMBERS 3
#define LEN 32u

static unsigned char *base;
static struct shmq_geometry geometry;
static struct shmq_wake_page wake; /* stands in for the consumer-state page */
static struct shmq_producer p;
static struct shmq_group_page *page;
static int lossless;
static _Atomic uint8_t hits[MESSAGES];
static _Atomic uint64_t delivered, failures, full_retries, overwritten;
static _Atomic int produced;

static void *produce(void *arg)
{
    (void)arg;
    unsigned char msg[LEN];
    for (uint64_t i = 0; i < MESSAGES; i++) {
        memcpy(msg, &i, 8);
        memset(msg + 8, (int)(i & 0xFF), 16);
        uint64_t sum = checksum(msg, 24);
        memcpy(msg + 24, &sum, 8);
        int rc;
        while ((rc = shmq_producer_publish(&p, msg, LEN, NULL)) == SHMQ_FULL) {
            full_retries++;
            sched_yield();
        }
        if (rc != 0)
            failures++;
        if (!lossless && i % 512 == 0)
            usleep(50); /* let the members take some */
    }
    produced = 1;
    return NULL;
}

/* Counts one delivered message; 0 if it is not a whole one. */
static int take(const unsigned char *msg, size_t len)
{
    uint64_t i, sum;
    if (len != LEN)
        return 0;
    memcpy(&i, msg, 8);
    memcpy(&sum, msg + 24, 8);
    if (i >= MESSAGES || checksum(msg, 24) != sum)
        return 0;
    hits[i]++;
    delivered++;
    return 1;
}

/* Copies a lent-out payload word by word, atomically, as the core reads
 * slots: the producer may be rewriting it (lossy), and release says so. */
static void copy_lent(unsigned char *out, const void *data, size_t len)
{
    const _Atomic uint64_t *words = data;
    for (size_t w = 0; w * 8 < len; w++) {
        uint64_t word = atomic_load_explicit(&words[w], memory_order_relaxed);
        memcpy(out + w * 8, &word, 8);
    }
}

static void *member(void *arg)
{
    uint32_t k = (uint32_t)(uintptr_t)arg;
    struct shmq_consumer c;
    memset(&c, 0, sizeof(c));
    shmq_consumer_bind(&c, base, &geometry, SHMQ_START_EARLIEST, &wake);
    struct shmq_group_membership g;
    memset(&g, 0, sizeof(g));
    g.page = page;
    g.shm_id = -1;
    g.member = k;
    g.token = 0x1000u + k; /* non-zero, one per member */
    snprintf(g.name, sizeof(g.name), "tsan");
    c.group = &g;
    unsigned char buf[LEN * 8];
    size_t lengths[8];
    uint64_t rng = 0x9e3779b9u + k;
    for (;;) {
        int done = produced; /* before the poll: EMPTY after it is final */
        unsigned way = k == 0 ? 0 : k == 1 ? 1 : (unsigned)(xorshift(&rng) % 5);
        int got = 0, rc = 0;
        switch (way) {
        case 0: { /* poll */
            size_t len;
            rc = shmq_consumer_poll(&c, buf, LEN, &len);
            if (rc == 0)
                got = 1, failures += !take(buf, len);
            break;
        }
        case 1: { /* poll_many */
            size_t max = 1 + xorshift(&rng) % 8;
            int n = shmq_consumer_poll_many(&c, buf, sizeof(buf), lengths, max);
            if (n < 0 || (size_t)n > max) {
                failures++;
                break;
            }
            for (int m = 0; m < n; m++)
                failures += !take(buf + (size_t)m * LEN, lengths[m]);
            got = n;
            break;
        }
        case 2: { /* an explicit batch, with a yield inside */
            shmq_consumer_batch_begin(&c, 1 + xorshift(&rng) % 8);
            size_t len;
            while ((rc = shmq_consumer_poll(&c, buf, LEN, &len)) == 0) {
                failures += !take(buf, len);
                if (got++ == 0)
                    sched_yield();
            }
            shmq_consumer_batch_end(&c);
            if (rc != SHMQ_EMPTY)
                failures++;
            rc = 0;
            break;
        }
        case 3: { /* peek / release */
            const void *data;
            size_t len;
            rc = shmq_consumer_peek(&c, &data, &len);
            if (rc != 0)
                break;
            unsigned char copy[LEN];
            int fits = len == LEN;
            if (fits)
                copy_lent(copy, data, len);
            int released = shmq_consumer_release(&c);
            if (released == 0) {
                got = 1;
                failures += !fits || !take(copy, len);
            } else if (released == SHMQ_OVERWRITTEN && !lossless) {
                overwritten++;
            } else {
                failures++;
            }
            break;
        }
        default: { /* poll_wait: sleeps on the wake page's futex */
            size_t len;
            rc = shmq_consumer_poll_wait(&c, buf, LEN, &len, 2 * 1000 * 1000);
            if (rc == 0)
                got = 1, failures += !take(buf, len);
            else if (rc == -ETIMEDOUT)
                rc = SHMQ_EMPTY;
            break;
        }
        }
        if (rc != 0 && rc != SHMQ_EMPTY)
            failures++;
        if (got == 0) {
            if (done)
                break;
            sched_yield();
        }
    }
    return NULL;
}

static void run(int want_lossless)
{
    lossless = want_lossless;
    const char *name = test_name(lossless ? "tsan-grp-ll" : "tsan-grp");
    struct shmq_producer *owner = make_producer(name, LEN, 16, 0);
    shmq_producer_close(owner);
    struct shmq_region *r;
    CHECK_RC(shmq_region_open(&r, name, SHMQ_REGION_READ_WRITE), 0);
    base = shmq_region_base(r);
    CHECK_RC(shmq_header_read(base, shmq_region_size(r), &geometry), 0);
    geometry.lossless = lossless;
    page = aligned_alloc(SHMQ_LINE, sizeof(*page));
    CHECK(page != NULL);
    memset(page, 0, sizeof(*page));
    /* As create_group (group.c) leaves a page, with the members' slots
     * taken (member_slots) as their joins would raise it. */
    atomic_store(&page->magic, SHMQ_GROUP_MAGIC);
    atomic_store(&page->ring_instance, geometry.instance);
    atomic_store(&page->cursor, geometry.first_sequence);
    atomic_store(&page->member_slots, MEMBERS);
    memset(&wake, 0, sizeof(wake));
    memset(&p, 0, sizeof(p));
    memset((void *)hits, 0, sizeof(hits));
    delivered = failures = full_retries = overwritten = 0;
    produced = 0;
    /* Bound before any member starts: binding reopens the stream that
     * closing `owner` ended. */
    shmq_producer_bind(&p, base, &geometry, &wake);
    if (lossless) {
        /* The group is one reader: its number 0 tells this one page. */
        p.consumers.groups[0].count = 1;
        p.consumers.groups[0].shm_id[0] = -1;
        p.consumers.groups[0].page[0] = page;
    }
    pthread_t threads[MEMBERS + 1];
    for (uint32_t k = 0; k < MEMBERS; k++)
        CHECK(pthread_create(&threads[k + 1], NULL, member, (void *)(uintptr_t)k) == 0);
    CHECK(pthread_create(&threads[0], NULL, produce, NULL) == 0);
    for (int k = 0; k <= MEMBERS; k++)
        pthread_join(threads[k], NULL);
    uint64_t twice = 0, missing = 0;
    for (uint32_t i = 0; i < MESSAGES; i++) {
        twice += hits[i] > 1;
        missing += hits[i] == 0;
    }
    uint64_t lost = atomic_load(&page->lost);
    fprintf(stderr, "%s: delivered %llu + lost %llu of %u (%llu overwritten while lent); twice "
            "%llu, missing %llu, failures %llu, producer retries %llu\n",
            lossless ? "lossless" : "lossy", (unsigned long long)delivered,
            (unsigned long long)lost, MESSAGES, (unsigned long long)overwritten,
            (unsigned long long)twice, (unsigned long long)missing,
            (unsigned long long)failures, (unsigned long long)full_retries);
    CHECK(failures == 0 && twice == 0);
    CHECK(delivered + lost == MESSAGES);
    if (lossless)
        CHECK(lost == 0 && missing == 0 && full_retries > 0);
    else
        CHECK(lost > 0 && delivered > 0);
    for (int k = 0; k < MEMBERS; k++)
        CHECK(atomic_load(&page->members[k].token) == 0); /* every claim returned */
    free(page);
    shmq_region_close(r);
}

int main(void)
{
    test_start(300);
    run(1);
    run(0);
    return 0;
}

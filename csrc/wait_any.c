/*
 * shmq_wait_any: one thread waits on many consumers (docs/waiting.md).
 *
 * FUTEX PATH (at most SHMQ_WAIT_ANY_FUTEX_MAX consumers, Linux >= 5.16).
 * For each consumer, the sleep protocol of consumer.c (SLEEPING): read its
 * queue's futex word, raise SHMQ_WAKE_FUTEX in its wake page; then check
 * every ring once more, and sleep with one futex_waitv on every queue's
 * futex word and every consumer's private interrupt word (two words each,
 * 128 in all: the kernel's limit). A publish on any queue bumps its word,
 * which ends the sleep; the woken thread passes the wake on to that queue's
 * other sleepers (the relay), as a blocking poll does.
 *
 * DESCRIPTOR PATH (more consumers, or no futex_waitv). Each consumer's
 * wake socket (descriptor.c) is quieted and armed, and one ppoll() sleeps on
 * all of them. Interrupts of the consumers are seen between slices, so a
 * slice is at most DESCRIPTOR_SLICE_NS; a signal ends ppoll at once.
 *
 * A consumer that cannot take part (no wake page yet, no entry for a
 * descriptor) is looked at every UNWOKEN_SLICE_NS instead, as a blocking
 * poll without a wake page does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <time.h>

#include "ring_internal.h"

#define SLEEP_SLICE_NS (100LL * 1000 * 1000)
#define DESCRIPTOR_SLICE_NS (50LL * 1000 * 1000)
#define UNWOKEN_SLICE_NS (1LL * 1000 * 1000)

static struct timespec timespec_of(int64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000), .tv_nsec = (long)(ns % 1000000000)};
    return ts;
}

/* Marks who has something to report; returns how many. */
static size_t mark_ready(struct shmq_consumer *const *consumers, size_t count,
                         unsigned char *ready)
{
    size_t n = 0;
    for (size_t i = 0; i < count; i++) {
        /* A group member with nothing new may find a dead member's claim
         * (at most every few milliseconds: group.c, RESCUE); once a slice. */
        if (consumers[i]->group != NULL)
            shmq_group_rescue(consumers[i]);
        ready[i] = (unsigned char)(shmq_consumer_ready(consumers[i]) != 0);
        n += ready[i];
    }
    return n;
}

static int take_interrupts(struct shmq_consumer *const *consumers, size_t count)
{
    int rc = 0;
    /* Every one taken, so that none is left to end the caller's next wait. */
    for (size_t i = 0; i < count; i++)
        if (shmq_waiter_take_interrupt(&consumers[i]->waiter) < 0)
            rc = SHMQ_INTERRUPTED;
    return rc;
}

/* One futex slice; 0 or -EINTR, -ENOSYS, -ETIMEDOUT. */
static int futex_slice(struct shmq_consumer *const *consumers, size_t count, int64_t until,
                       unsigned char *ready, size_t *found)
{
    _Static_assert(2 * SHMQ_WAIT_ANY_FUTEX_MAX <= SHMQ_WAITV_MAX, "two words per consumer");
    if (count > SHMQ_WAIT_ANY_FUTEX_MAX)
        return -ENOSYS;
    _Atomic uint32_t *words[SHMQ_WAITV_MAX] = {0};
    uint32_t expected[SHMQ_WAITV_MAX] = {0};
    unsigned char private_word[SHMQ_WAITV_MAX] = {0};
    int unwoken = 0;
    for (size_t i = 0; i < count; i++) {
        struct shmq_consumer *c = consumers[i];
        /* Seq_cst: as in sleep_until_published (consumer.c): read before
         * raising the flag, so the wake that answers it changes the word. */
        expected[2 * i] = shmq_load_seq_cst(&c->control->futex_word);
        words[2 * i] = &c->control->futex_word;
        private_word[2 * i] = 0;
        /* Seq_cst: as in shmq_waiter_sleep; an interrupt after this load
         * changes the word and ends the sleep. */
        expected[2 * i + 1] = shmq_load_seq_cst(&c->waiter.interrupt_word);
        words[2 * i + 1] = &c->waiter.interrupt_word;
        private_word[2 * i + 1] = 1;
        if (c->consumers.wake != NULL)
            /* Seq_cst: the consumer half of the Dekker handshake with the
             * fence in finish_publish (producer.c). */
            shmq_fetch_or_seq_cst(&c->consumers.wake->wake_flag, SHMQ_WAKE_FUTEX);
        else
            unwoken = 1;
    }
    /* Seq_cst (inside): ordered after every flag. */
    *found = mark_ready(consumers, count, ready);
    if (*found > 0)
        return 0;
    if (unwoken) {
        int64_t soon = shmq_now_ns() + UNWOKEN_SLICE_NS;
        if (soon < until)
            until = soon;
    }
    struct timespec ts = timespec_of(until);
    int rc = shmq_futex_wait_many(words, expected, private_word, 2 * count, &ts);
    for (size_t i = 0; i < count; i++)
        shmq_consumer_relay(consumers[i], expected[2 * i]);
    return rc;
}

/* One descriptor slice; 0 or -EINTR, -ENOMEM, -ETIMEDOUT. */
static int descriptor_slice(struct shmq_consumer *const *consumers, size_t count, int64_t until,
                            unsigned char *ready, size_t *found)
{
    struct pollfd *fds = calloc(count, sizeof(*fds));
    if (fds == NULL)
        return -ENOMEM;
    int unwoken = 0;
    for (size_t i = 0; i < count; i++) {
        int fd = shmq_consumer_fileno(consumers[i]);
        if (fd < 0 || consumers[i]->consumers.wake == NULL)
            unwoken = 1;
        fds[i].fd = fd; /* a negative one is ignored by ppoll */
        fds[i].events = POLLIN;
        if (fd >= 0)
            shmq_consumer_quiet(consumers[i]);
    }
    /* Seq_cst (inside): after every consumer armed. */
    *found = mark_ready(consumers, count, ready);
    if (*found > 0) {
        free(fds);
        return 0;
    }
    int64_t now = shmq_now_ns();
    int64_t slice = now + (unwoken ? UNWOKEN_SLICE_NS : DESCRIPTOR_SLICE_NS);
    if (slice < until)
        until = slice;
    int64_t left = until > now ? until - now : 0;
    struct timespec ts = timespec_of(left);
    int rc = ppoll(fds, count, &ts, NULL);
    free(fds);
    if (rc < 0)
        return errno == EINTR ? -EINTR : -errno;
    return 0;
}

int shmq_wait_any(struct shmq_consumer *const *consumers, size_t count, int64_t timeout_ns,
                  unsigned char *ready, int (*check)(void *context), void *context)
{
    if ((consumers == NULL || ready == NULL) && count != 0)
        return -EINVAL;
    for (size_t i = 0; i < count; i++)
        if (consumers[i] == NULL)
            return -EINVAL;
    int64_t start = shmq_now_ns();
    int64_t deadline = timeout_ns < 0 || timeout_ns > INT64_MAX - start ? -1 : start + timeout_ns;
    int use_futex = count <= SHMQ_WAIT_ANY_FUTEX_MAX;
    for (;;) {
        int rc = take_interrupts(consumers, count);
        if (rc < 0)
            return rc;
        size_t found = mark_ready(consumers, count, ready);
        if (found > 0)
            return (int)(found > INT32_MAX ? INT32_MAX : found);
        int64_t now = shmq_now_ns();
        if (count == 0 && deadline < 0)
            return -EINVAL; /* nothing could ever end the wait */
        if (deadline >= 0 && now >= deadline)
            return 0;
        int64_t until = now + SLEEP_SLICE_NS;
        if (deadline >= 0 && deadline < until)
            until = deadline;
        int slept = -ETIMEDOUT;
        if (count == 0) {
            struct timespec ts = timespec_of(until);
            slept = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR ? -EINTR
                                                                                        : -ETIMEDOUT;
        } else {
            if (use_futex) {
                slept = futex_slice(consumers, count, until, ready, &found);
                if (slept == -ENOSYS)
                    use_futex = 0;
            }
            if (!use_futex)
                slept = descriptor_slice(consumers, count, until, ready, &found);
            if (found > 0)
                return (int)(found > INT32_MAX ? INT32_MAX : found);
        }
        if (slept == -ENOMEM)
            return slept;
        if (slept == -EINTR || slept == -ETIMEDOUT || slept == 0) {
            if (check != NULL && (slept != 0 || shmq_now_ns() >= until) && check(context) != 0)
                return -EINTR;
            if (check == NULL && slept == -EINTR)
                return -EINTR;
        }
    }
}

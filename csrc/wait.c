/*
 * Sleeping on 32-bit words with the futex syscalls, and ending such sleeps
 * from outside (shmq_*_interrupt).
 *
 * The futexes in the queue's memory are process-shared (no
 * FUTEX_PRIVATE_FLAG): a private futex is keyed by virtual address, and each
 * process maps the memory at its own address, so a private wake would never
 * reach another process. FUTEX_WAIT_BITSET and futex_waitv take an absolute
 * CLOCK_MONOTONIC deadline, so a spurious wake-up or a retry never stretches
 * the total wait.
 *
 * INTERRUPTS. Each handle has a private interrupt word. shmq_*_interrupt
 * bumps it and wakes it; a waiter sleeps with futex_waitv (Linux 5.16) on both
 * the shared word it waits for and its interrupt word, so no interrupt is
 * lost between the waiter's check and its sleep: the kernel compares both
 * words with what the waiter expected before it sleeps. Where futex_waitv is
 * missing the waiter sleeps on the shared word alone, which the interrupt
 * also wakes; an interrupt that lands between the check and the sleep then
 * waits for the end of the slice (at most 100 ms).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ring_internal.h"

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449 /* the same number on every architecture */
#endif

/* The kernel's struct futex_waitv and its flags, spelled out here so the
 * library builds against headers older than the syscall. */
struct waitv_entry {
    uint64_t val;
    uint64_t uaddr;
    uint32_t flags;
    uint32_t reserved;
};
#define WAITV_U32 0x02u
#define WAITV_PRIVATE 128u

/* Relaxed: a cache of whether the kernel has futex_waitv; racing threads at
 * worst each find out for themselves. */
static _Atomic int waitv_missing;

static int errno_result(void)
{
    if (errno == EAGAIN)
        return 0; /* a word already differed: re-check */
    return errno == ETIMEDOUT ? -ETIMEDOUT : errno == EINTR ? -EINTR : -errno;
}

/* Returns 0 when woken (or the word already differed: EAGAIN), -ETIMEDOUT,
 * or -EINTR. Callers re-check the ring either way. */
int shmq_futex_wait(_Atomic uint32_t *word, uint32_t expected, const struct timespec *deadline)
{
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, expected, deadline, NULL,
                      FUTEX_BITSET_MATCH_ANY);
    return rc == 0 ? 0 : errno_result();
}

void shmq_futex_wake_all(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void shmq_futex_wake_one(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

void shmq_waiter_interrupt(struct shmq_waiter *w, _Atomic uint32_t *shared)
{
    /* Seq_cst: pairs with the seq_cst load of interrupt_word in
     * shmq_waiter_sleep; either that load sees the bump, or the kernel's
     * compare in futex_waitv does and the sleep does not start. */
    shmq_fetch_add_seq_cst(&w->interrupt_word, 1);
    syscall(SYS_futex, (uint32_t *)&w->interrupt_word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    /* Without futex_waitv the waiter sleeps on the shared word; waking every
     * sleeper there costs the others one spurious re-check. */
    if (shared != NULL && shmq_load_relaxed(&waitv_missing))
        shmq_futex_wake_all(shared);
}

int shmq_waiter_take_interrupt(struct shmq_waiter *w)
{
    /* Seq_cst: as in shmq_waiter_interrupt. */
    uint32_t now = shmq_load_seq_cst(&w->interrupt_word);
    if (now == w->answered)
        return 0;
    w->answered = now;
    return SHMQ_INTERRUPTED;
}

int shmq_waiter_sleep(struct shmq_waiter *w, _Atomic uint32_t *shared, uint32_t expected,
                      const struct timespec *deadline)
{
    /* Seq_cst: as in shmq_waiter_interrupt. */
    uint32_t interrupts = shmq_load_seq_cst(&w->interrupt_word);
    if (interrupts != w->answered)
        return 0; /* the caller's loop takes the interrupt */
    if (!shmq_load_relaxed(&waitv_missing)) {
        struct waitv_entry entries[2] = {
            {.val = expected, .uaddr = (uintptr_t)shared, .flags = WAITV_U32},
            {.val = interrupts, .uaddr = (uintptr_t)&w->interrupt_word,
             .flags = WAITV_U32 | WAITV_PRIVATE},
        };
        long rc = syscall(SYS_futex_waitv, entries, 2u, 0u, deadline, CLOCK_MONOTONIC);
        if (rc >= 0)
            return 0;
        if (errno != ENOSYS)
            return errno_result();
        shmq_store_relaxed(&waitv_missing, 1);
    }
    return shmq_futex_wait(shared, expected, deadline);
}

int shmq_futex_wait_many(_Atomic uint32_t *const *words, const uint32_t *expected,
                         const unsigned char *private_word, size_t count,
                         const struct timespec *deadline)
{
    if (count == 0 || count > SHMQ_WAITV_MAX)
        return -EINVAL;
    if (shmq_load_relaxed(&waitv_missing))
        return -ENOSYS;
    struct waitv_entry entries[SHMQ_WAITV_MAX];
    for (size_t i = 0; i < count; i++)
        entries[i] = (struct waitv_entry){
            .val = expected[i],
            .uaddr = (uintptr_t)words[i],
            .flags = WAITV_U32 | (private_word[i] ? WAITV_PRIVATE : 0u),
        };
    long rc = syscall(SYS_futex_waitv, entries, (unsigned)count, 0u, deadline, CLOCK_MONOTONIC);
    if (rc >= 0)
        return 0;
    if (errno == ENOSYS) {
        shmq_store_relaxed(&waitv_missing, 1);
        return -ENOSYS;
    }
    return errno_result();
}

int shmq_waiter_between(struct shmq_waiter *w, int signalled)
{
    int rc = shmq_waiter_take_interrupt(w);
    if (rc < 0)
        return rc;
    if (w->check != NULL) {
        if (w->check(w->context) != 0)
            return -EINTR;
        /* The check may have run code that interrupted us (a signal
         * handler that closes the handle, say). */
        return shmq_waiter_take_interrupt(w);
    }
    return signalled ? -EINTR : 0;
}

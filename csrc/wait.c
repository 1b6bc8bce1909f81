/*
 * Sleeping on a 32-bit word in the shared segment, with the futex syscall.
 *
 * The futexes are process-shared (no FUTEX_PRIVATE_FLAG): a private futex is
 * keyed by virtual address, and each process maps the segment at its own
 * address, so a private wake would never reach another process.
 * FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so a spurious
 * wake-up or a retry never stretches the total wait.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ring_internal.h"

/* Returns 0 when woken (or the word already differed: EAGAIN), -ETIMEDOUT,
 * or -EINTR. Callers re-check the ring either way. */
int shmq_futex_wait(_Atomic uint32_t *word, uint32_t expected, const struct timespec *deadline)
{
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, expected, deadline, NULL,
                      FUTEX_BITSET_MATCH_ANY);
    if (rc == 0 || errno == EAGAIN)
        return 0;
    return errno == ETIMEDOUT ? -ETIMEDOUT : errno == EINTR ? -EINTR : -errno;
}

void shmq_futex_wake_all(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void shmq_futex_wake_one(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

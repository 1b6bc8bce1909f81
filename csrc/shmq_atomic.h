/*
 * Every memory-ordering primitive shmq uses, in one place.
 *
 * The ring lives in memory shared between processes, so its atomics must be
 * lock-free: a lock-based fallback would keep its lock in per-process memory
 * and silently stop being atomic across processes. The asserts below make that
 * a build failure instead.
 *
 * Call sites name the store their acquire pairs with; this file only gives the
 * orderings short names so the protocol in producer.c and consumer.c reads
 * as a protocol.
 */
#ifndef SHMQ_ATOMIC_H
#define SHMQ_ATOMIC_H

#include <stdatomic.h>
#include <stdint.h>

_Static_assert(ATOMIC_LONG_LOCK_FREE == 2 || ATOMIC_LLONG_LOCK_FREE == 2,
               "64-bit atomics must be lock-free to be shared between processes");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2,
               "32-bit atomics must be lock-free to be shared between processes");
_Static_assert(sizeof(_Atomic uint64_t) == 8 && sizeof(_Atomic uint32_t) == 4,
               "atomics must have the size of the plain type: the layout depends on it");

#define shmq_load_relaxed(p) atomic_load_explicit((p), memory_order_relaxed)
#define shmq_load_acquire(p) atomic_load_explicit((p), memory_order_acquire)
#define shmq_load_seq_cst(p) atomic_load_explicit((p), memory_order_seq_cst)
#define shmq_load_ordered(p, order) atomic_load_explicit((p), (order))
#define shmq_store_relaxed(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define shmq_store_release(p, v) atomic_store_explicit((p), (v), memory_order_release)
#define shmq_store_seq_cst(p, v) atomic_store_explicit((p), (v), memory_order_seq_cst)
#define shmq_exchange_seq_cst(p, v) atomic_exchange_explicit((p), (v), memory_order_seq_cst)
#define shmq_fetch_add_seq_cst(p, v) atomic_fetch_add_explicit((p), (v), memory_order_seq_cst)
#define shmq_fetch_or_seq_cst(p, v) atomic_fetch_or_explicit((p), (v), memory_order_seq_cst)
#define shmq_fetch_add_relaxed(p, v) atomic_fetch_add_explicit((p), (v), memory_order_relaxed)
#define shmq_cas_relaxed(p, expected, v)                                                         \
    atomic_compare_exchange_strong_explicit((p), (expected), (v), memory_order_relaxed,          \
                                            memory_order_relaxed)
#define shmq_cas_seq_cst(p, expected, v)                                                         \
    atomic_compare_exchange_strong_explicit((p), (expected), (v), memory_order_seq_cst,        \
                                            memory_order_seq_cst)
#define shmq_fence_acquire() atomic_thread_fence(memory_order_acquire)
#define shmq_fence_release() atomic_thread_fence(memory_order_release)
#define shmq_fence_seq_cst() atomic_thread_fence(memory_order_seq_cst)

/* A hint to the core that we are spinning; it saves power and, on SMT cores,
 * leaves the pipeline to the sibling thread. It orders nothing. */
static inline void shmq_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

#endif

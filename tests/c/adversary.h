/*
 * Small helpers for the adversarial C tests: self-checking messages, memory
 * shared with forked children, one-byte pipe signals, crafting ring slots
 * the way a producer would have left them, and watching other processes
 * from outside. Include it instead of helpers.h; it brings helpers.h and
 * ring_internal.h (these tests reach into handles on purpose).
 */
#ifndef SHMQ_TEST_ADVERSARY_H
#define SHMQ_TEST_ADVERSARY_H

#include "helpers.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>

#include "ring_internal.h"

/*
 * A self-checking message: sequence u64 | incarnation u64 | PRNG bytes drawn
 * from (sequence, incarnation) | FNV-1a of all before u64. Its length is drawn
 * from the same PRNG, MSG_MIN..max_len, so a copy torn between two messages,
 * or a sequence number reused for another payload, cannot pass msg_check.
 */
#define MSG_MIN 24u

static inline uint64_t msg_seed(uint64_t sequence, uint64_t incarnation)
{
    return (sequence * UINT64_C(0x9E3779B97F4A7C15)) ^ (incarnation * UINT64_C(0xC2B2AE3D27D4EB4F)) ^
           UINT64_C(0x5851F42D4C957F2D);
}

/* Writes the message for (sequence, incarnation) into msg (max_len bytes at
 * least, max_len >= MSG_MIN) and returns its length. */
static inline size_t msg_make(unsigned char *msg, size_t max_len, uint64_t sequence,
                              uint64_t incarnation)
{
    uint64_t rng = msg_seed(sequence, incarnation);
    size_t len = MSG_MIN + (size_t)(xorshift(&rng) % (max_len - MSG_MIN + 1));
    memcpy(msg, &sequence, 8);
    memcpy(msg + 8, &incarnation, 8);
    for (size_t i = 16; i < len - 8; i++)
        msg[i] = (unsigned char)xorshift(&rng);
    uint64_t sum = checksum(msg, len - 8);
    memcpy(msg + len - 8, &sum, 8);
    return len;
}

/* 1 if msg (len bytes) is exactly the message its header names; then
 * *sequence, *incarnation and *sum say which one it is. */
static inline int msg_check(const unsigned char *msg, size_t len, size_t max_len,
                            uint64_t *sequence, uint64_t *incarnation, uint64_t *sum)
{
    if (len < MSG_MIN || len > max_len)
        return 0;
    memcpy(sequence, msg, 8);
    memcpy(incarnation, msg + 8, 8);
    unsigned char want[max_len];
    size_t want_len = msg_make(want, max_len, *sequence, *incarnation);
    if (want_len != len || memcmp(want, msg, len) != 0)
        return 0;
    memcpy(sum, msg + len - 8, 8);
    return 1;
}

/* Anonymous memory shared with the children forked after this call. */
static inline void *shared_alloc(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    CHECK(p != MAP_FAILED);
    return p;
}

static inline void sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* One byte through a pipe: "I am ready", "I got it". */
static inline void signal_fd(int fd)
{
    char x = 1;
    CHECK(write(fd, &x, 1) == 1);
}

/* Waits for one byte; 0 if the writer went away instead. */
static inline int wait_fd(int fd)
{
    char x;
    ssize_t n;
    do
        n = read(fd, &x, 1);
    while (n < 0 && errno == EINTR);
    return n == 1;
}

/* fork() for the tests: the child gets SIGKILL if the test process dies
 * first (a failed CHECK, the alarm), so no child of a failed test lives on
 * in pause() or a loop. */
static inline pid_t fork_child(void)
{
    pid_t parent = getpid();
    pid_t kid = fork();
    CHECK(kid >= 0);
    if (kid == 0 && (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent))
        _exit(99); /* the parent is already gone */
    return kid;
}

static inline void kill_and_reap(pid_t pid)
{
    kill(pid, SIGKILL);
    CHECK(wait_child(pid) == 128 + SIGKILL);
}

/* The scheduler state letter of a process ('S': asleep, 'R': running), or 0. */
static inline char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *close_paren = strrchr(buf, ')'); /* the command name may hold anything */
    return close_paren && close_paren[1] == ' ' ? close_paren[2] : 0;
}

/* Waits (up to 5 s) until the wake flag of p's queue is raised and every one
 * of the n processes in kids sleeps: consumers asleep in a blocking poll.
 * Returns 0 if that never happened. */
static inline int wait_asleep(struct shmq_producer *p, const pid_t *kids, int n)
{
    CHECK(p->consumers.wake != NULL);
    for (int tries = 0; tries < 5000; tries++) {
        int asleep = atomic_load(&p->consumers.wake->wake_flag) != 0;
        for (int k = 0; k < n && asleep; k++)
            asleep = proc_state(kids[k]) == 'S';
        if (asleep)
            return 1;
        usleep(1000);
    }
    return 0;
}

/*
 * Writes producer p's next message the way a publish does (producer.c),
 * but never stores head: step 1, the length and first slot (through a
 * loan), the payload, then, if `final`, the final stamp. With final == 0
 * the record is left as a producer killed in the middle of the write would
 * leave it (and p is done with: its loan stays open).
 */
static inline void craft_record(struct shmq_producer *p, const void *data, size_t length,
                                int final)
{
    void *buf;
    if (shmq_producer_claim(p, length, &buf) != 0)
        abort();
    memcpy(buf, data, length);
    if (!final)
        return;
    struct shmq_record *record = shmq_record_at(p->index, &p->geometry, p->next);
    atomic_store(&record->stamp, p->next);
    if (p->geometry.spanning) {
        p->record_slots[p->next & (p->geometry.capacity - 1)] =
            (uint32_t)(p->plan_slot & (p->geometry.capacity - 1));
        p->next_slot = p->plan_end;
    }
    p->next++;
    p->claimed = 0;
    p->refusal = 0;
}

#endif

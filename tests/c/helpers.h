/*
 * Shared by the C tests: each test is one program that exits 0 (pass),
 * 1 (fail) or 77 (skip). Queue names are unique per process and every name
 * handed out is unlinked at exit, so no test leaves a segment in /dev/shm.
 */
#ifndef SHMQ_TEST_HELPERS_H
#define SHMQ_TEST_HELPERS_H

#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shmq.h"

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

#define CHECK_RC(expr, want)                                                               \
    do {                                                                                   \
        int rc_ = (expr);                                                                  \
        if (rc_ != (want)) {                                                               \
            fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d (%s)\n", __FILE__,    \
                    __LINE__, #expr, rc_, shmq_strerror(rc_), (want), shmq_strerror(want)); \
            exit(1);                                                                       \
        }                                                                                  \
    } while (0)

#define MAX_TEST_NAMES 64
static char test_names[MAX_TEST_NAMES][64];
static int test_name_count;
static pid_t test_owner_pid;

static void unlink_test_names(void)
{
    if (getpid() != test_owner_pid)
        return; /* children share the names; the parent cleans up */
    for (int i = 0; i < test_name_count; i++)
        shmq_unlink(test_names[i], SHMQ_UNLINK_FORCE);
}

/* A fresh queue name, unlinked when the test process exits. */
static inline const char *test_name(const char *what)
{
    if (test_name_count == 0) {
        test_owner_pid = getpid();
        atexit(unlink_test_names);
    }
    CHECK(test_name_count < MAX_TEST_NAMES);
    char *name = test_names[test_name_count++];
    snprintf(name, 64, "test-%s-%d-%d", what, (int)getpid(), test_name_count);
    shmq_unlink(name, SHMQ_UNLINK_FORCE);
    return name;
}

static inline void test_start(unsigned seconds)
{
    alarm(seconds); /* a hung test fails instead of hanging CI */
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: cheap, good enough for payloads and sleep choices. */
static inline uint64_t xorshift(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * UINT64_C(2685821657736338717);
}

/* FNV-1a over a buffer. */
static inline uint64_t checksum(const unsigned char *p, size_t n)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * UINT64_C(1099511628211);
    return h;
}

/* Waits for a child and returns its exit status, or 128+signal. */
static inline int wait_child(pid_t pid)
{
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

static inline struct shmq_producer *make_producer(const char *name, uint32_t slot_size,
                                                  uint32_t capacity, uint64_t first)
{
    struct shmq_config config = {.slot_size = slot_size, .capacity = capacity,
                                 .first_sequence = first};
    struct shmq_producer *p = NULL;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    return p;
}

#endif

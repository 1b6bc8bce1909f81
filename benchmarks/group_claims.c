/*
 * What claiming costs a consumer group, from C (no interpreter in the way).
 *
 *   group_claims MESSAGES
 *
 * One producer process publishes MESSAGES 64-byte messages into a lossless
 * queue; readers in other processes take them. Rows: one plain consumer
 * (the ceiling), and 1, 2 and 4 members of one group claiming one message
 * per poll (every claim a compare-and-swap on the group's cursor line) and
 * 64 per shmq_consumer_poll_many (one compare-and-swap a batch). Each row
 * prints msgs/s from the producer's first publish to the last reader's end,
 * and checks that the readers together got every message exactly once.
 * On a machine with fewer cores than processes the rows measure time
 * sharing as much as contention: the ratios between rows are what to read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shmq.h"

#define MAX_READERS 4
#define BATCH 64

struct board {
    _Atomic int ready;
    _Atomic uint64_t received[MAX_READERS];
    _Atomic uint64_t sum[MAX_READERS];
    _Atomic uint64_t duplicates;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void reader(const char *name, const char *group, int batch, int index,
                   struct board *board, unsigned char *seen, uint64_t messages)
{
    struct shmq_consumer_options options = {.start = SHMQ_START_EARLIEST, .group = group,
                                            .spin = 2000};
    struct shmq_consumer *c;
    int rc = shmq_consumer_open_with(&c, name, &options);
    if (rc < 0) {
        fprintf(stderr, "open: %s\n", shmq_strerror(rc));
        _exit(1);
    }
    board->ready++;
    unsigned char buf[BATCH * 64];
    size_t lengths[BATCH];
    uint64_t received = 0, sum = 0;
    for (;;) {
        int n;
        if (batch > 1) {
            n = shmq_consumer_poll_many(c, buf, sizeof(buf), lengths, BATCH);
        } else {
            n = shmq_consumer_poll(c, buf, 64, lengths) == 0 ? 1 : SHMQ_EMPTY;
        }
        if (n == SHMQ_EMPTY || n == 0) {
            rc = shmq_consumer_wait(c, 1000000000);
            if (rc == SHMQ_ENDED || rc == -ETIMEDOUT)
                break;
            continue;
        }
        if (n < 0) {
            fprintf(stderr, "poll: %s\n", shmq_strerror(n));
            _exit(1);
        }
        for (int i = 0; i < n; i++) {
            uint64_t value;
            memcpy(&value, buf + (size_t)i * 64, 8);
            if (value < messages && atomic_exchange((_Atomic unsigned char *)&seen[value], 1))
                board->duplicates++;
            sum += value;
        }
        received += (uint64_t)n;
    }
    board->received[index] = received;
    board->sum[index] = sum;
    shmq_consumer_close(c);
    _exit(0);
}

static int row(const char *label, const char *group, int readers, int batch, uint64_t messages)
{
    char name[64];
    snprintf(name, sizeof(name), "group-claims-%d", (int)getpid());
    struct shmq_config config = {.slot_size = 64, .capacity = 4096, .delivery = SHMQ_LOSSLESS};
    struct shmq_producer *p;
    int rc = shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL);
    if (rc < 0) {
        fprintf(stderr, "producer: %s\n", shmq_strerror(rc));
        return 1;
    }
    struct board *board = mmap(NULL, sizeof(*board), PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    unsigned char *seen = mmap(NULL, messages, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                               -1, 0);
    if (board == MAP_FAILED || seen == MAP_FAILED)
        return 1;
    memset(board, 0, sizeof(*board));
    pid_t pids[MAX_READERS];
    for (int r = 0; r < readers; r++) {
        pids[r] = fork();
        if (pids[r] == 0)
            reader(name, group, batch, r, board, seen, messages);
    }
    while (board->ready < readers)
        usleep(1000);
    unsigned char msg[64] = {0};
    double start = now();
    for (uint64_t i = 0; i < messages; i++) {
        memcpy(msg, &i, 8);
        rc = shmq_producer_publish_wait(p, msg, sizeof(msg), NULL, -1);
        if (rc < 0) {
            fprintf(stderr, "publish: %s\n", shmq_strerror(rc));
            return 1;
        }
    }
    shmq_producer_close(p); /* ends the stream: the readers stop */
    for (int r = 0; r < readers; r++)
        waitpid(pids[r], NULL, 0);
    double elapsed = now() - start;
    uint64_t received = 0, sum = 0;
    for (int r = 0; r < readers; r++) {
        received += board->received[r];
        sum += board->sum[r];
    }
    int readers_in_sum = group != NULL ? 1 : readers;
    int ok = received == messages * (uint64_t)readers_in_sum &&
             sum == readers_in_sum * (messages * (messages - 1) / 2) && board->duplicates == 0;
    printf("%-34s %12.0f msgs/s  %s\n", label, (double)messages / elapsed,
           ok ? "every message once" : "MISMATCH");
    shmq_unlink(name, SHMQ_UNLINK_FORCE);
    munmap(board, sizeof(*board));
    munmap(seen, messages);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    uint64_t messages = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000;
    int failed = 0;
    printf("%llu messages of 64 bytes, lossless ring of 4096 slots, %ld cores\n",
           (unsigned long long)messages, sysconf(_SC_NPROCESSORS_ONLN));
    failed |= row("plain consumer, poll", NULL, 1, 1, messages);
    failed |= row("plain consumer, poll_many(64)", NULL, 1, BATCH, messages);
    static const int sizes[] = {1, 2, 4};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        char label[64];
        snprintf(label, sizeof(label), "group of %d, poll (claim 1)", sizes[i]);
        failed |= row(label, "bench", sizes[i], 1, messages);
        snprintf(label, sizeof(label), "group of %d, poll_many (claim 64)", sizes[i]);
        failed |= row(label, "bench", sizes[i], BATCH, messages);
    }
    return failed;
}

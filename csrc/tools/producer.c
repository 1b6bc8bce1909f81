/*
 * producer NAME [--count N] [--size BYTES] [--max-message BYTES] [--rate MSGS_PER_SEC]
 *               [--slot-size B] [--capacity N] [--lossless]
 *
 * Creates queue NAME (or attaches to it and continues its sequence) and
 * publishes self-checking messages (pattern.h): --count of them, or until
 * SIGINT/SIGTERM. --rate 0 (the default) means as fast as possible. Every
 * message is --size bytes; with --max-message (the queue's max_message_size
 * when it creates one) their sizes are drawn between --size and it, evenly
 * over the powers of two between them, so that most are small and a few
 * span many slots.
 * With --lossless the queue is created (or must already be) lossless; on a
 * lossless queue, whether created here or found, each message waits for as long as it takes until every live registered
 * consumer has room for it; SIGINT/SIGTERM still stop a waiting producer
 * within 50 ms (it waits in 50 ms slices, since a signal that arrives while
 * it spins rather than sleeps would not interrupt a wait without end).
 * Ends with one line: published=N seconds=S rate=R/s
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../shmq.h"
#include "cli.h"
#include "pattern.h"

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

/* A size in [low, high]: a power of two between them chosen evenly, then a
 * size evenly within it. */
static uint64_t drawn_size(uint64_t *rng, uint64_t low, uint64_t high)
{
    *rng ^= *rng << 13, *rng ^= *rng >> 7, *rng ^= *rng << 17;
    int from = 63 - __builtin_clzll(low), to = 63 - __builtin_clzll(high);
    int bits = from + (int)(*rng % (uint64_t)(to - from + 1));
    uint64_t base = UINT64_C(1) << bits;
    uint64_t size = base + (*rng >> 8) % base;
    return size < low ? low : size > high ? high : size;
}

static void usage(void)
{
    fprintf(stderr, "usage: producer NAME [--count N] [--size BYTES] [--max-message BYTES] "
                    "[--rate MSGS_PER_SEC] [--slot-size B] [--capacity N] [--lossless]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *name = NULL;
    uint64_t count = UINT64_MAX, size = 64, largest = 0;
    double rate = 0;
    struct shmq_config config = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--count")) count = cli_u64("producer", a, v), i++;
        else if (!strcmp(a, "--size")) size = cli_u64("producer", a, v), i++;
        else if (!strcmp(a, "--max-message")) largest = cli_u64("producer", a, v), i++;
        else if (!strcmp(a, "--rate")) rate = cli_double("producer", a, v), i++;
        else if (!strcmp(a, "--slot-size")) config.slot_size = (uint32_t)cli_u64("producer", a, v), i++;
        else if (!strcmp(a, "--capacity")) config.capacity = (uint32_t)cli_u64("producer", a, v), i++;
        else if (!strcmp(a, "--lossless")) config.delivery = SHMQ_LOSSLESS;
        else if (a[0] == '-' || name) usage();
        else name = a;
    }
    if (name == NULL)
        usage();
    if (size < SHMQ_PATTERN_MIN) {
        fprintf(stderr, "producer: --size must be at least %d (the message number)\n", SHMQ_PATTERN_MIN);
        return 2;
    }
    if (largest != 0 && largest < size) {
        fprintf(stderr, "producer: --max-message must be at least --size\n");
        return 2;
    }
    if (config.slot_size == 0 && size > SHMQ_DEFAULT_SLOT_SIZE)
        config.slot_size = (uint32_t)size;
    config.max_message_size = largest;

    struct shmq_producer *p;
    int rc = shmq_producer_open(&p, name, &config, SHMQ_CREATE);
    if (rc < 0) {
        fprintf(stderr, "producer: %s: %s\n", name, shmq_strerror(rc));
        return 1;
    }
    uint64_t most = largest ? largest : size;
    if (most > shmq_producer_max_message_size(p)) {
        fprintf(stderr, "producer: %llu bytes is larger than the queue's max_message_size %llu\n",
                (unsigned long long)most, (unsigned long long)shmq_producer_max_message_size(p));
        shmq_producer_close(p);
        return 2;
    }
    /* No SA_RESTART: a signal ends a lossless producer's sleep at once. */
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int lossless = shmq_producer_lossless(p);

    unsigned char *msg = malloc(most);
    if (msg == NULL) {
        fprintf(stderr, "producer: no memory for a %llu-byte message\n", (unsigned long long)most);
        shmq_producer_close(p);
        return 1;
    }
    uint64_t rng = 0x9E3779B97F4A7C15u;
    double start = cli_now();
    uint64_t sent = 0;
    while (sent < count && !stop) {
        if (rate > 0) {
            double due = start + (double)sent / rate;
            while (cli_now() < due && !stop)
                ;
        }
        uint64_t length = largest ? drawn_size(&rng, size, largest) : size;
        shmq_pattern_fill(msg, length, sent);
        if (lossless) {
            /* Waits without end, in slices so that `stop` is looked at. */
            do
                rc = shmq_producer_publish_wait(p, msg, length, NULL, 50 * 1000 * 1000);
            while ((rc == -ETIMEDOUT || rc == -EINTR) && !stop);
            if (rc == -ETIMEDOUT || rc == -EINTR)
                break; /* stopped while waiting: the message was not published */
        } else {
            rc = shmq_producer_publish(p, msg, length, NULL);
        }
        if (rc < 0) {
            fprintf(stderr, "producer: publish: %s\n", shmq_strerror(rc));
            break;
        }
        sent++;
    }
    double seconds = cli_now() - start;
    printf("published=%llu seconds=%.3f rate=%.0f/s\n", (unsigned long long)sent, seconds,
           seconds > 0 ? (double)sent / seconds : 0.0);
    free(msg);
    shmq_producer_close(p);
    return rc < 0 && !stop ? 1 : 0;
}

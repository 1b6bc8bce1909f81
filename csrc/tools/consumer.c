/*
 * consumer NAME [--count N] [--timeout SECONDS] [--from earliest|latest] [--spin N]
 *               [--no-register] [--group NAME]
 *
 * Reads queue NAME, verifies every byte of every message (pattern.h), and
 * stops after --count messages have been received or lost, when nothing
 * arrives for --timeout seconds (default 10; "inf" waits forever), or on
 * SIGINT/SIGTERM. Ends with exactly one line:
 *   received=N lost=M corrupt=K
 *
 * It can be started before its producer, and outlives producer runs:
 * - A queue that does not exist yet is waited for (the wait counts against
 *   --timeout) and read from its earliest message: all of it is newer than
 *   this consumer, so nothing published before the open is missed.
 * - When a producer closes the stream, it waits on for the next producer
 *   run (SHMQ_WAIT_PAST_END) rather than exiting.
 * - When the queue it reads was removed (shmq rm, shmq_unlink), it reads what
 *   is left, then waits for a queue of that name to appear again and reads
 *   that one from its earliest message; counts carry over.
 * --from says where to start in a queue that exists at the start: latest
 * (default), only what is published from then on; earliest, the oldest
 * message still in the ring.
 *
 * Before sleeping it polls --spin times (default 20000, a few tens of
 * microseconds): a consumer that sleeps whenever it catches up makes the
 * producer pay a wake-up syscall for nearly every message.
 * On a lossless queue the consumer registers, so the producer waits for it
 * and it loses nothing; with --no-register it takes no consumer entry and
 * reads as a lossy observer, counting what it loses.
 * With --group NAME it joins consumer group NAME: the group's members split
 * the stream, and lost= is the group's count (see GROUPS in shmq.h).
 * Exit status: 0 when --count was reached (or none was given), 3 when the
 * timeout ended it first (or the queue never appeared), 1 on error (one line
 * on stderr, and no counts).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../shmq.h"
#include "cli.h"
#include "pattern.h"

/* Longest sleep between two looks at whether the queue was removed. */
#define UNLINK_CHECK_NS (100 * 1000 * 1000)

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }
/* The wait check of every open and wait: SIGINT/SIGTERM end them at once. */
static int stop_requested(void *context) { (void)context; return stop; }

static void usage(void)
{
    fprintf(stderr, "usage: consumer NAME [--count N] [--timeout SECONDS|inf] [--from earliest|latest] "
                    "[--spin N] [--no-register] [--group NAME]\n");
    exit(2);
}

/* Nanoseconds until `deadline` (cli_now seconds; INFINITY: -1, forever), at least 0. */
static int64_t ns_until(double deadline)
{
    if (isinf(deadline))
        return -1;
    double left = deadline - cli_now();
    if (left > 1e9) /* over 30 years: forever, and no overflow */
        return -1;
    return left > 0 ? (int64_t)(left * 1e9) : 0;
}

/* Reading state that outlives one handle: counts carry across reattaching. */
struct reader {
    const char *name;
    struct shmq_consumer *c;
    struct shmq_consumer_options options;
    uint32_t spin;
    unsigned char *buf;
    size_t buf_size;
    uint64_t lost_before; /* lost by the handles closed before c */
};

static uint64_t reader_lost(const struct reader *r)
{
    return r->lost_before + (r->c ? shmq_consumer_lost(r->c) : 0);
}

/* Opens r->c; a queue that is missing (or still being made) is waited for
 * until `deadline`, and then read from its earliest message. Returns 0 or a
 * negative errno (-ENOENT: it did not appear in time). */
static int reader_open(struct reader *r, enum shmq_start start, double deadline)
{
    r->options.start = start;
    r->options.wait_ns = 0;
    int rc = shmq_consumer_open_with(&r->c, r->name, &r->options);
    if (rc == -ENOENT || rc == -ENODATA) {
        r->options.start = SHMQ_START_EARLIEST;
        r->options.wait_ns = ns_until(deadline);
        rc = r->options.wait_ns == 0 ? rc : shmq_consumer_open_with(&r->c, r->name, &r->options);
    }
    if (rc < 0) {
        r->c = NULL;
        return rc;
    }
    shmq_consumer_set_spin(r->c, r->spin);
    shmq_consumer_set_wait_check(r->c, stop_requested, NULL);
    size_t need = (size_t)shmq_consumer_max_message_size(r->c);
    if (need > r->buf_size) {
        unsigned char *buf = realloc(r->buf, need);
        if (buf == NULL) {
            shmq_consumer_close(r->c);
            r->c = NULL;
            return -ENOMEM;
        }
        r->buf = buf;
        r->buf_size = need;
    }
    return 0;
}

static void reader_close(struct reader *r)
{
    r->lost_before = reader_lost(r);
    shmq_consumer_close(r->c);
    r->c = NULL;
}

int main(int argc, char **argv)
{
    const char *name = NULL;
    uint64_t count = 0;
    double timeout = 10;
    uint64_t spin = 20000;
    enum shmq_start start = SHMQ_START_LATEST;
    int no_register = 0;
    const char *group = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--count")) count = cli_u64("consumer", a, v), i++;
        else if (!strcmp(a, "--timeout")) timeout = cli_double("consumer", a, v), i++;
        else if (!strcmp(a, "--spin")) spin = cli_u64("consumer", a, v), i++;
        else if (!strcmp(a, "--no-register")) no_register = 1;
        else if (!strcmp(a, "--group") && v) group = v, i++;
        else if (!strcmp(a, "--from")) {
            if (v && !strcmp(v, "earliest")) start = SHMQ_START_EARLIEST;
            else if (v && !strcmp(v, "latest")) start = SHMQ_START_LATEST;
            else usage();
            i++;
        } else if (a[0] == '-' || name) usage();
        else name = a;
    }
    if (name == NULL)
        usage();
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: EINTR ends a wait */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    struct reader r = {
        .name = name,
        .options = {.no_entry = no_register, .wait_check = stop_requested, .group = group},
        .spin = spin > UINT32_MAX ? UINT32_MAX : (uint32_t)spin,
    };
    /* Nothing has arrived for --timeout seconds once cli_now() passes idle_until. */
    double idle_until = cli_now() + timeout;
    int rc = reader_open(&r, start, idle_until);
    int status = 0;
    if ((rc == -ENOENT || rc == -ENODATA) && !stop) {
        fprintf(stderr, "consumer: %s: no such queue after %g s\n", name, timeout);
        status = 3;
    } else if (rc < 0 && !stop) {
        fprintf(stderr, "consumer: %s: %s\n", name, shmq_strerror(rc));
        return 1;
    }
    uint64_t received = 0, corrupt = 0;
    while (!stop && r.c != NULL && (count == 0 || received + corrupt + reader_lost(&r) < count)) {
        size_t len;
        rc = shmq_consumer_poll(r.c, r.buf, r.buf_size, &len);
        if (rc == 0) {
            uint64_t i;
            if (shmq_pattern_check(r.buf, len, &i))
                received++;
            else
                corrupt++;
            idle_until = cli_now() + timeout;
            continue;
        }
        if (rc == SHMQ_CORRUPT) {
            corrupt++;
            continue;
        }
        if (rc != SHMQ_EMPTY) {
            fprintf(stderr, "consumer: poll: %s\n", shmq_strerror(rc));
            status = 1;
            break;
        }
        int64_t left = ns_until(idle_until);
        if (left == 0) {
            status = count ? 3 : 0;
            break;
        }
        /* Past the end of a stream it waits on for the next producer run; in
         * slices, to notice that the queue was removed. */
        int64_t slice = left < 0 || left > UNLINK_CHECK_NS ? UNLINK_CHECK_NS : left;
        rc = shmq_consumer_wait_flags(r.c, slice, SHMQ_WAIT_PAST_END);
        if (rc == 0 || rc == -EINTR)
            continue;
        if (rc != -ETIMEDOUT) {
            fprintf(stderr, "consumer: wait: %s\n", shmq_strerror(rc));
            status = 1;
            break;
        }
        if (shmq_consumer_unlinked(r.c) == 1) {
            /* Removed, and nothing came for a whole slice: the name may
             * belong to a new queue, or will. */
            reader_close(&r);
            rc = reader_open(&r, SHMQ_START_EARLIEST, idle_until);
            if (rc == -ENOENT || rc == -ENODATA || (rc < 0 && stop)) {
                status = count && !stop ? 3 : 0;
                break;
            }
            if (rc < 0) {
                fprintf(stderr, "consumer: %s: %s\n", name, shmq_strerror(rc));
                status = 1;
                break;
            }
        }
    }
    printf("received=%llu lost=%llu corrupt=%llu\n", (unsigned long long)received,
           (unsigned long long)reader_lost(&r), (unsigned long long)corrupt);
    free(r.buf);
    shmq_consumer_close(r.c);
    return status;
}

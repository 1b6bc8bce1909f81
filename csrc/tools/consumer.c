/*
 * consumer NAME [--count N] [--timeout SECONDS] [--from earliest|latest] [--spin N]
 *               [--no-register]
 *
 * Attaches to queue NAME (waiting up to --timeout for it to appear), verifies
 * every byte of every message (pattern.h), and stops after --count messages
 * have been received or lost, when no message arrives for --timeout seconds
 * (default 10), or on SIGINT/SIGTERM. Ends with exactly one line:
 *   received=N lost=M corrupt=K
 * Before sleeping it polls --spin times (default 20000, a few tens of
 * microseconds): a consumer that sleeps whenever it catches up makes the
 * producer pay a wake-up syscall for nearly every message.
 * On a lossless queue the consumer registers, so the producer waits for it
 * and it loses nothing; with --no-register it takes no consumer entry and
 * reads as a lossy observer, counting what it loses.
 * Exit status: 0 when --count was reached (or none was given), 3 when the
 * timeout ended it first, 1 on error (one line on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../shmq.h"
#include "cli.h"
#include "pattern.h"

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void usage(void)
{
    fprintf(stderr, "usage: consumer NAME [--count N] [--timeout SECONDS] [--from earliest|latest] [--spin N] "
                    "[--no-register]\n");
    exit(2);
}

static int open_when_ready(struct shmq_consumer **c, const char *name,
                           const struct shmq_consumer_options *options, double timeout)
{
    double give_up = cli_now() + timeout;
    for (;;) {
        int rc = shmq_consumer_open_with(c, name, options);
        /* A queue that is missing, or still being created, may appear soon. */
        if ((rc != -ENOENT && rc != -ENODATA) || cli_now() >= give_up || stop)
            return rc;
        usleep(2000);
    }
}

int main(int argc, char **argv)
{
    const char *name = NULL;
    uint64_t count = 0;
    double timeout = 10;
    uint64_t spin = 20000;
    enum shmq_start start = SHMQ_START_LATEST;
    int no_register = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--count")) count = cli_u64("consumer", a, v), i++;
        else if (!strcmp(a, "--timeout")) timeout = cli_double("consumer", a, v), i++;
        else if (!strcmp(a, "--spin")) spin = cli_u64("consumer", a, v), i++;
        else if (!strcmp(a, "--no-register")) no_register = 1;
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

    struct shmq_consumer *c;
    struct shmq_consumer_options options = {.start = start, .no_entry = no_register};
    int rc = open_when_ready(&c, name, &options, timeout);
    if (rc < 0) {
        fprintf(stderr, "consumer: %s: %s\n", name, shmq_strerror(rc));
        return 1;
    }
    shmq_consumer_set_spin(c, spin > UINT32_MAX ? UINT32_MAX : (uint32_t)spin);
    size_t buf_size = shmq_consumer_slot_size(c);
    unsigned char *buf = malloc(buf_size ? buf_size : 1);
    uint64_t received = 0, corrupt = 0;
    int status = 0;
    int64_t timeout_ns = (int64_t)(timeout * 1e9);
    while (!stop && (count == 0 || received + corrupt + shmq_consumer_lost(c) < count)) {
        size_t len;
        rc = shmq_consumer_poll_wait(c, buf, buf_size, &len, timeout_ns);
        if (rc == -EINTR)
            continue;
        if (rc == -ETIMEDOUT) {
            status = count ? 3 : 0;
            break;
        }
        if (rc == SHMQ_CORRUPT) {
            corrupt++;
            continue;
        }
        if (rc == SHMQ_ENDED) {
            fprintf(stderr, "consumer: the producer closed the stream\n");
            status = count && received + corrupt + shmq_consumer_lost(c) < count ? 3 : 0;
            break;
        }
        if (rc < 0) {
            fprintf(stderr, "consumer: poll: %s\n", shmq_strerror(rc));
            status = 1;
            break;
        }
        uint64_t i;
        if (shmq_pattern_check(buf, len, &i))
            received++;
        else
            corrupt++;
    }
    printf("received=%llu lost=%llu corrupt=%llu\n", (unsigned long long)received,
           (unsigned long long)shmq_consumer_lost(c), (unsigned long long)corrupt);
    free(buf);
    shmq_consumer_close(c);
    return status;
}

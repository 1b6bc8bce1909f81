/*
 * The herd benchmark (issue 7): what blocking consumers cost the producer.
 *
 *   cc -O2 -Icsrc benchmarks/herd.c csrc/[a-z]*.c -lpthread -o build/herd
 *   build/herd [--seconds S] [--repeats R] [--rate MSGS_PER_S] [--quick]
 *              [--counts N,N,...] [--spin ITERATIONS] [--nap-us MICROSECONDS]
 *              [--pin] [--batch] [--waiters futex,descriptor]
 *
 * Writes Markdown tables to stdout (docs/herd.md has a run and what it
 * means). Exit 0, or 1 if a consumer saw a bad payload, a sequence out of
 * order, or received + lost != published.
 *
 * SCENARIOS
 *   flat out      For N = 0, 1, 4, 16, 64 blocking consumers (--counts
 *                 picks others), the producer publishes 64-byte messages as
 *                 fast as it can for S seconds (default 2). Repeated R times
 *                 (default 3), the N values interleaved within each round,
 *                 so that a slow drift of the machine spreads over every N.
 *   fixed rate    The same N, with the producer pacing itself to a fixed
 *                 rate (default 100,000 msgs/s), so that consumers keep up
 *                 and sleep between messages.
 *   killed sleeper One blocking consumer sleeps, is SIGKILLed asleep, and the
 *                 producer publishes flat out for one second after.
 *
 * CONSUMERS
 *   Each is a forked process that opens its own consumer (start latest,
 *   spin 0: it sleeps as soon as the ring is empty) before the producer
 *   starts, then loops on shmq_consumer_poll_wait(timeout 1 s) until
 *   SHMQ_ENDED. A poll that finds nothing before poll_wait counts as a
 *   "blocking entry": the consumer is about to sleep, so that is where it
 *   raises the wake flag (docs/consumer-state.md); the sum over consumers
 *   approximates the sleep episodes the producer must answer. Every
 *   payload carries its sequence in each of its eight words (xored with the
 *   word's index), checked in full; sequences must increase, and at the end
 *   received + lost must equal published.
 *
 *   --waiters picks how consumers wait, one table per kind, the kinds
 *   interleaved within each round for each N (their order alternating
 *   between rounds), plus a table of their ratios:
 *     futex       (the default) shmq_consumer_poll_wait, as above;
 *     descriptor  the consumer takes shmq_consumer_fileno and loops: poll
 *                 until SHMQ_EMPTY (that poll arms the descriptor), then
 *                 poll(2) on the descriptor (timeout 1 s), until the stream
 *                 has ended and a last poll finds nothing. A poll that finds
 *                 nothing before poll(2) is its "blocking entry".
 *   The killed sleeper runs once per kind too.
 *
 *   Two knobs for experiments, both off by default: --spin gives the
 *   consumers a spin budget before they sleep (shmq_consumer_set_spin;
 *   futex sleepers only, as poll_wait is what spins);
 *   --nap-us makes a consumer that finds the ring empty first sleep that
 *   long without raising the wake flag (nanosleep) and poll again, and only
 *   then block: a stand-in, through the public API, for the re-arm delay
 *   that docs/herd.md proposes for the core. --pin puts the producer on
 *   CPU 0 and every consumer on CPU 1, to tell the cost of sharing a CPU
 *   with the herd from the cost of waking it. --batch runs the consumers
 *   under SCHED_BATCH, so that waking them does not preempt the producer.
 *
 * MEASURES
 *   rate          messages published / seconds publishing, by the producer
 *   wakes/msg     shmq_producer_wakeups() / messages: FUTEX_WAKE calls per
 *                 published message (read before close, whose own wake-up
 *                 of the sleepers would add one)
 *   datagrams/msg shmq_producer_descriptor_wakeups() / messages: datagrams
 *                 sent to descriptor waiters per published message (read
 *                 before close, as above)
 *   delivered     received / published, averaged over consumers (the rest
 *                 was lost to overrun: the producer never waits)
 *   on CPU        the producer's user + system time / wall time while
 *                 publishing (getrusage): below 100% it was runnable but not
 *                 running, or blocked
 *   us/wake       the producer's system time / its FUTEX_WAKE calls and
 *                 datagrams: what one wake costs it in the kernel (it makes
 *                 no other syscalls while publishing, but for listing the
 *                 consumer entries when a descriptor waiter joins;
 *                 clock_gettime is in the vDSO)
 *   preempted     the producer's involuntary context switches per 1000
 *                 messages
 *
 * SAFETY
 *   One queue name per run (herd-PID-K), unlinked with SHMQ_UNLINK_FORCE
 *   after it and on every exit path; consumers die with the parent
 *   (PR_SET_PDEATHSIG); alarm() ends a hung run, killing its consumers and
 *   unlinking its queue, so the program terminates on its own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shmq.h"

#define MESSAGE_SIZE 64
#define MAX_CONSUMERS 64
#define PAYLOAD_MIX UINT64_C(0x9e3779b97f4a7c15)

/* How a consumer waits for the ring (--waiters). */
enum waiter { WAITER_FUTEX, WAITER_DESCRIPTOR, WAITER_KINDS };
static const char *const waiter_names[WAITER_KINDS] = {"futex", "descriptor"};
static const char *const waiter_titles[WAITER_KINDS] = {"futex sleepers (shmq_consumer_poll_wait)",
                                                        "descriptor waiters (poll(2) on shmq_consumer_fileno)"};
static enum waiter waiter_kinds[WAITER_KINDS] = {WAITER_FUTEX};
static size_t waiter_n = 1;

/* Consumer behaviour, set from the command line before any fork. */
static uint32_t consumer_spin;
static int64_t consumer_nap_ns;
static int pin_cpus;
static int consumer_batch;

static void pin_to(int cpu)
{
    if (!pin_cpus)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0)
        perror("herd: sched_setaffinity");
}

/* The N values, in the order each round runs them (--counts changes them). */
#define MAX_COUNTS 8
static int consumer_counts[MAX_COUNTS] = {0, 1, 4, 16, 64};
static size_t count_n = 5;
#define COUNTS MAX_COUNTS

/* ------------------------------------------------------------ plumbing */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* What a consumer reports back, in memory shared with the parent. */
struct consumer_result {
    uint64_t received;
    uint64_t lost;
    uint64_t blocking; /* polls that found nothing, followed by a blocking wait */
    uint64_t timeouts; /* waits that ran their whole second out */
    uint64_t spurious; /* descriptor readable, nothing to read */
    uint64_t bad;      /* payloads that failed the check */
    uint64_t disorder; /* sequences that did not increase */
    int entry;         /* consumer-state entry, -1: none (would sleep unwoken) */
    int finished;
};

struct board {
    _Atomic int ready;
    struct consumer_result results[MAX_CONSUMERS];
};

/* The run in progress, for the alarm handler: which processes to kill and
 * which segments to remove. */
static char current_name[64];
static char current_paths[3][128];
static volatile pid_t current_pids[MAX_CONSUMERS];
static volatile int current_count;
static unsigned alarm_seconds;

static void set_current(const char *name)
{
    snprintf(current_name, sizeof(current_name), "%s", name);
    snprintf(current_paths[0], sizeof(current_paths[0]), "/dev/shm/" SHMQ_NAME_PREFIX "%s", name);
    snprintf(current_paths[1], sizeof(current_paths[1]), "/dev/shm/" SHMQ_NAME_PREFIX "%s.consumers",
             name);
    snprintf(current_paths[2], sizeof(current_paths[2]), "/dev/shm/" SHMQ_NAME_PREFIX "%s.producer",
             name);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "herd: a run exceeded its time limit; killing its consumers\n";
    ssize_t ignored = write(2, msg, sizeof(msg) - 1);
    (void)ignored;
    for (int i = 0; i < current_count; i++)
        if (current_pids[i] > 0)
            kill(current_pids[i], SIGKILL);
    /* unlink is async-signal-safe; shmq_unlink does more than we may here. */
    unlink(current_paths[0]);
    unlink(current_paths[1]);
    unlink(current_paths[2]);
    _exit(2);
}

static void remove_current(void)
{
    if (current_name[0] != '\0')
        shmq_unlink(current_name, SHMQ_UNLINK_FORCE);
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "herd: %s: %s\n", what, shmq_strerror(rc));
    for (int i = 0; i < current_count; i++)
        if (current_pids[i] > 0)
            kill(current_pids[i], SIGKILL);
    remove_current();
    exit(2);
}

static void fill_message(uint64_t *words, uint64_t sequence)
{
    for (uint64_t i = 0; i < MESSAGE_SIZE / 8; i++)
        words[i] = (sequence ^ (PAYLOAD_MIX * i)) + i;
}

static int message_ok(const uint64_t *words, uint64_t *sequence)
{
    *sequence = words[0];
    for (uint64_t i = 1; i < MESSAGE_SIZE / 8; i++)
        if (words[i] != (words[0] ^ (PAYLOAD_MIX * i)) + i)
            return 0;
    return 1;
}

/* --------------------------------------------------------- the consumer */

/* The descriptor twin of shmq_consumer_poll_wait(timeout 1 s), for a
 * consumer whose last poll found nothing and so armed its descriptor:
 * poll(2) until readable, then poll the ring. Returns 0 with a message,
 * SHMQ_ENDED, -ETIMEDOUT, SHMQ_EMPTY when it was readable with nothing to
 * read (a wake-up that raced a poll), or a negative errno. */
static int wait_on_descriptor(struct shmq_consumer *c, int fd, uint64_t *words, size_t *length)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int n = poll(&pfd, 1, 1000);
    if (n < 0)
        return -errno;
    int rc = shmq_consumer_poll(c, words, MESSAGE_SIZE, length);
    if (rc != SHMQ_EMPTY)
        return rc;
    if (shmq_consumer_ended(c)) {
        /* Whoever sees the end sees every message published before it: one
         * more poll finds the last of them, if our first raced the close. */
        rc = shmq_consumer_poll(c, words, MESSAGE_SIZE, length);
        return rc == SHMQ_EMPTY ? SHMQ_ENDED : rc;
    }
    return n == 0 ? -ETIMEDOUT : SHMQ_EMPTY;
}

static void consumer_main(const char *name, struct board *board, int index, enum waiter waiter)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        _exit(3);
    pin_to(1);
    if (consumer_batch) {
        struct sched_param param = {0};
        if (sched_setscheduler(0, SCHED_BATCH, &param) != 0)
            perror("herd: SCHED_BATCH");
    }
    struct consumer_result *r = &board->results[index];
    struct shmq_consumer_options options = {.start = SHMQ_START_LATEST, .spin = consumer_spin};
    struct shmq_consumer *c;
    int rc = shmq_consumer_open_with(&c, name, &options);
    if (rc < 0) {
        fprintf(stderr, "herd: consumer %d: open: %s\n", index, shmq_strerror(rc));
        _exit(3);
    }
    r->entry = shmq_consumer_entry(c);
    int fd = -1;
    if (waiter == WAITER_DESCRIPTOR) {
        /* Before we count as ready, so that the producer lists us first. */
        fd = shmq_consumer_fileno(c);
        if (fd < 0) {
            fprintf(stderr, "herd: consumer %d: fileno: %s\n", index, shmq_strerror(fd));
            _exit(3);
        }
    }
    atomic_fetch_add(&board->ready, 1);
    uint64_t words[MESSAGE_SIZE / 8];
    uint64_t expected_min = 0;
    int first = 1;
    for (;;) {
        size_t length;
        rc = shmq_consumer_poll(c, words, sizeof(words), &length);
        if (rc == SHMQ_EMPTY && consumer_nap_ns > 0) {
            struct timespec nap = {.tv_sec = 0, .tv_nsec = consumer_nap_ns};
            nanosleep(&nap, NULL);
            rc = shmq_consumer_poll(c, words, sizeof(words), &length);
        }
        if (rc == SHMQ_EMPTY) {
            r->blocking++;
            if (waiter == WAITER_DESCRIPTOR)
                rc = wait_on_descriptor(c, fd, words, &length);
            else
                rc = shmq_consumer_poll_wait(c, words, sizeof(words), &length, 1000000000);
        }
        if (rc == 0) {
            uint64_t sequence;
            if (length != MESSAGE_SIZE || !message_ok(words, &sequence)) {
                r->bad++;
            } else {
                if (!first && sequence < expected_min)
                    r->disorder++;
                expected_min = sequence + 1;
                first = 0;
            }
            r->received++;
        } else if (rc == -ETIMEDOUT) {
            r->timeouts++;
        } else if (rc == SHMQ_ENDED) {
            break;
        } else if (rc == SHMQ_EMPTY) {
            r->spurious++;
        } else if (rc != -EINTR) {
            fprintf(stderr, "herd: consumer %d: poll: %s\n", index, shmq_strerror(rc));
            _exit(3);
        }
    }
    r->lost = shmq_consumer_lost(c);
    r->finished = 1;
    shmq_consumer_close(c);
    _exit(0);
}

/* ---------------------------------------------------------- a run */

struct run_result {
    int consumers;
    enum waiter waiter;
    uint64_t published;
    double seconds;
    double rate;
    uint64_t wakeups;
    uint64_t datagrams; /* shmq_producer_descriptor_wakeups */
    double delivered; /* mean received / published over consumers */
    uint64_t blocking; /* sum over consumers */
    uint64_t timeouts;
    uint64_t spurious;
    int no_entry;      /* consumers without an entry */
    double cpu_share;  /* producer (user + system) / wall while publishing */
    double system_s;   /* producer system time while publishing */
    uint64_t preempted; /* producer involuntary context switches */
    int failures;      /* invariant violations */
};

struct run_plan {
    int consumers;
    enum waiter waiter;
    double seconds;
    double rate; /* 0: flat out */
};

static unsigned run_serial;

/* Publishes for `seconds`, flat out (rate 0) or paced to `rate`. Returns
 * the number published; *elapsed gets the time it took. */
static uint64_t publish_for(struct shmq_producer *p, double seconds, double rate, double *elapsed)
{
    uint64_t words[MESSAGE_SIZE / 8];
    int64_t start = now_ns();
    int64_t end = start + (int64_t)(seconds * 1e9);
    uint64_t sent = 0;
    double interval_ns = rate > 0 ? 1e9 / rate : 0;
    for (;;) {
        if (rate > 0) {
            /* Due time of this message; when behind, catch up without
             * sleeping, so the average rate holds. */
            int64_t due = start + (int64_t)((double)sent * interval_ns);
            int64_t now = now_ns();
            if (now >= end)
                break;
            if (due > now) {
                struct timespec ts = {.tv_sec = due / 1000000000, .tv_nsec = due % 1000000000};
                clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
            }
        } else if ((sent & 255) == 0 && now_ns() >= end) {
            break;
        }
        fill_message(words, shmq_producer_next_sequence(p));
        int rc = shmq_producer_publish(p, words, sizeof(words), NULL);
        if (rc < 0)
            die("publish", rc);
        sent++;
    }
    *elapsed = (double)(now_ns() - start) / 1e9;
    return sent;
}

/* Creates a queue, starts the consumers and waits until each has opened. */
static struct shmq_producer *start_queue(int consumers, enum waiter waiter, struct board *board)
{
    char name[64];
    snprintf(name, sizeof(name), "herd-%d-%u", (int)getpid(), ++run_serial);
    shmq_unlink(name, SHMQ_UNLINK_FORCE);
    set_current(name);
    struct shmq_config config = {.slot_size = MESSAGE_SIZE, .max_consumers = 2 * MAX_CONSUMERS};
    struct shmq_producer *p;
    int rc = shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL);
    if (rc < 0)
        die("producer open", rc);
    memset(board, 0, sizeof(*board));
    current_count = 0;
    for (int i = 0; i < consumers; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork", -errno);
        if (pid == 0)
            consumer_main(name, board, i, waiter);
        current_pids[i] = pid;
        current_count = i + 1;
    }
    while (atomic_load(&board->ready) < consumers)
        usleep(1000);
    /* Let them reach their first sleep, as "blocking consumers" should be. */
    usleep(20000);
    return p;
}

/* Ends the stream, collects the consumers and removes the queue; returns
 * the number of invariant violations. */
static int finish_queue(struct shmq_producer *p, struct board *board, int consumers,
                        uint64_t published, struct run_result *out)
{
    shmq_producer_close(p);
    int failures = 0;
    for (int i = 0; i < current_count; i++) {
        int status;
        if (waitpid(current_pids[i], &status, 0) < 0)
            continue;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "herd: consumer %d ended with status %d\n", i, status);
            failures++;
        }
        current_pids[i] = 0;
    }
    current_count = 0;
    remove_current();
    if (out == NULL)
        return failures;
    double delivered = 0;
    for (int i = 0; i < consumers; i++) {
        const struct consumer_result *r = &board->results[i];
        if (r->bad || r->disorder || r->received + r->lost != published) {
            fprintf(stderr,
                    "herd: consumer %d of %d: received %llu + lost %llu != published %llu, "
                    "bad %llu, out of order %llu\n",
                    i, consumers, (unsigned long long)r->received, (unsigned long long)r->lost,
                    (unsigned long long)published, (unsigned long long)r->bad,
                    (unsigned long long)r->disorder);
            failures++;
        }
        delivered += published ? (double)r->received / (double)published : 1.0;
        out->blocking += r->blocking;
        out->timeouts += r->timeouts;
        out->spurious += r->spurious;
        out->no_entry += r->entry < 0;
    }
    out->delivered = consumers ? delivered / consumers : 0;
    return failures;
}

static double seconds_of(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void run_once(const struct run_plan *plan, struct board *board, struct run_result *out)
{
    memset(out, 0, sizeof(*out));
    out->consumers = plan->consumers;
    out->waiter = plan->waiter;
    alarm(alarm_seconds);
    struct shmq_producer *p = start_queue(plan->consumers, plan->waiter, board);
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    out->published = publish_for(p, plan->seconds, plan->rate, &out->seconds);
    getrusage(RUSAGE_SELF, &after);
    out->system_s = seconds_of(after.ru_stime) - seconds_of(before.ru_stime);
    out->cpu_share = (seconds_of(after.ru_utime) - seconds_of(before.ru_utime) + out->system_s) /
                     out->seconds;
    out->preempted = (uint64_t)(after.ru_nivcsw - before.ru_nivcsw);
    out->wakeups = shmq_producer_wakeups(p);
    out->datagrams = shmq_producer_descriptor_wakeups(p);
    out->rate = (double)out->published / out->seconds;
    out->failures = finish_queue(p, board, plan->consumers, out->published, out);
    alarm(0);
}

/* ----------------------------------------------------- killed sleeper */

struct kill_result {
    double alone;        /* flat-out rate, no consumer yet */
    double before;       /* flat-out rate with the blocking consumer alive */
    double after;        /* flat-out rate in the second after its death */
    double first_10ms;   /* ... in the first 10 ms of that second */
    uint64_t wakes_after; /* FUTEX_WAKE calls and datagrams in that second */
};

static uint64_t wakes_of(const struct shmq_producer *p)
{
    return shmq_producer_wakeups(p) + shmq_producer_descriptor_wakeups(p);
}

static void run_killed_sleeper(double seconds, enum waiter waiter, struct board *board,
                               struct kill_result *k)
{
    alarm(alarm_seconds + 3 * (unsigned)seconds);
    struct shmq_producer *p = start_queue(0, waiter, board);
    double elapsed;
    uint64_t n = publish_for(p, seconds, 0, &elapsed);
    k->alone = (double)n / elapsed;

    /* One consumer, started late: open it now, on a queue that is running. */
    pid_t pid = fork();
    if (pid < 0)
        die("fork", -errno);
    if (pid == 0)
        consumer_main(current_name, board, 0, waiter);
    current_pids[0] = pid;
    current_count = 1;
    while (atomic_load(&board->ready) < 1)
        usleep(1000);
    usleep(20000);
    n = publish_for(p, seconds, 0, &elapsed);
    k->before = (double)n / elapsed;

    /* Quiet: the consumer drains the ring, raises the wake flag and sleeps. */
    usleep(100000);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    current_pids[0] = 0;
    current_count = 0;

    uint64_t wakes = wakes_of(p);
    n = publish_for(p, 0.01, 0, &elapsed);
    k->first_10ms = (double)n / elapsed;
    uint64_t rest = publish_for(p, seconds - elapsed, 0, &elapsed);
    k->after = (double)(n + rest) / (elapsed + 0.01);
    k->wakes_after = wakes_of(p) - wakes;
    finish_queue(p, board, 0, 0, NULL);
    alarm(0);
}

/* ------------------------------------------------------------ reporting */

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct stat3 {
    double median, min, max;
};

static struct stat3 stats(double *values, int n)
{
    qsort(values, (size_t)n, sizeof(double), compare_doubles);
    struct stat3 s = {values[n / 2], values[0], values[n - 1]};
    if (n % 2 == 0)
        s.median = (values[n / 2 - 1] + values[n / 2]) / 2;
    return s;
}

/* A rate with a unit that keeps three significant figures or so. */
static void format_rate(char *out, size_t size, double rate)
{
    if (rate >= 1e6)
        snprintf(out, size, "%.2f M", rate / 1e6);
    else if (rate >= 1e3)
        snprintf(out, size, "%.1f k", rate / 1e3);
    else
        snprintf(out, size, "%.0f", rate);
}

static void print_rate(struct stat3 s)
{
    char median[32], min[32], max[32];
    format_rate(median, sizeof(median), s.median);
    format_rate(min, sizeof(min), s.min);
    format_rate(max, sizeof(max), s.max);
    printf(" %s (%s - %s) |", median, min, max);
}

static void print_ratio(struct stat3 s)
{
    printf(" %.4f (%.4f-%.4f) |", s.median, s.min, s.max);
}

/* One table: a row per N, medians with (min-max) over the repeats. */
static void report(const char *title, struct run_result results[][COUNTS], int repeats)
{
    /* "vs N=1": against the N = 1 row, when there is one. */
    double base = 0, base_rate[16];
    for (size_t i = 0; i < count_n; i++)
        if (consumer_counts[i] == 1) {
            for (int r = 0; r < repeats; r++)
                base_rate[r] = results[r][i].rate;
            base = stats(base_rate, repeats).median;
        }
    uint64_t timeouts = 0, spurious = 0;
    printf("\n### %s\n\n", title);
    printf("| consumers | msgs/s | vs N=1 | wakes/msg | datagrams/msg | blocking entries/msg "
           "| wakes per blocking entry | delivered | producer on CPU | us/wake "
           "| preempted per 1k msgs |\n");
    printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < count_n; i++) {
        double rate[16], wakes[16], datagrams[16], entries[16], per_entry[16], delivered[16],
            cpu[16], per_wake[16], preempted[16];
        int no_entry = 0;
        for (int r = 0; r < repeats; r++) {
            const struct run_result *x = &results[r][i];
            double published = x->published ? (double)x->published : 1;
            /* Both kinds of wake-up: one syscall each for the producer. */
            uint64_t woken = x->wakeups + x->datagrams;
            rate[r] = x->rate;
            wakes[r] = (double)x->wakeups / published;
            datagrams[r] = (double)x->datagrams / published;
            entries[r] = (double)x->blocking / published;
            per_entry[r] = x->blocking ? (double)woken / (double)x->blocking : 0;
            delivered[r] = x->delivered;
            cpu[r] = x->cpu_share;
            per_wake[r] = woken ? x->system_s * 1e6 / (double)woken : 0;
            preempted[r] = 1000.0 * (double)x->preempted / published;
            timeouts += x->timeouts;
            spurious += x->spurious;
            no_entry += x->no_entry;
        }
        printf("| %d%s |", consumer_counts[i], no_entry ? " (some without entry)" : "");
        struct stat3 rs = stats(rate, repeats);
        print_rate(rs);
        if (base > 0)
            printf(" %.1f%% |", 100 * rs.median / base);
        else
            printf(" - |");
        print_ratio(stats(wakes, repeats));
        print_ratio(stats(datagrams, repeats));
        print_ratio(stats(entries, repeats));
        if (consumer_counts[i] == 0) {
            printf(" - | - |");
        } else {
            print_ratio(stats(per_entry, repeats));
            struct stat3 d = stats(delivered, repeats);
            printf(" %.1f%% (%.1f-%.1f) |", 100 * d.median, 100 * d.min, 100 * d.max);
        }
        printf(" %.0f%% |", 100 * stats(cpu, repeats).median);
        if (consumer_counts[i] == 0)
            printf(" - |");
        else
            printf(" %.1f |", stats(per_wake, repeats).median);
        printf(" %.3f |\n", stats(preempted, repeats).median);
    }
    if (timeouts)
        printf("\n%llu blocking polls ran their 1 s timeout out.\n", (unsigned long long)timeouts);
    if (spurious)
        printf("\n%llu times a descriptor was readable with nothing to read.\n",
               (unsigned long long)spurious);
}

/* Descriptor waiters against futex sleepers: per N, each kind's median
 * rate and the median (min-max) of the per-round ratios, which compare
 * runs made seconds apart. */
static void compare(const char *title, struct run_result results[][15][COUNTS], int repeats)
{
    printf("\n### %s\n\n", title);
    printf("| consumers | futex sleepers msgs/s | descriptor waiters msgs/s | descriptor / futex "
           "| FUTEX_WAKE/msg (futex) | datagrams/msg (descriptor) "
           "| readable with nothing to read, per blocking entry (descriptor) |\n");
    printf("|---:|---:|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < count_n; i++) {
        double futex[16], descriptor[16], ratio[16], wakes[16], datagrams[16], spurious[16];
        for (int r = 0; r < repeats; r++) {
            const struct run_result *f = &results[WAITER_FUTEX][r][i];
            const struct run_result *d = &results[WAITER_DESCRIPTOR][r][i];
            futex[r] = f->rate;
            descriptor[r] = d->rate;
            ratio[r] = f->rate > 0 ? d->rate / f->rate : 0;
            wakes[r] = (double)f->wakeups / (double)(f->published ? f->published : 1);
            datagrams[r] = (double)d->datagrams / (double)(d->published ? d->published : 1);
            spurious[r] = d->blocking ? (double)d->spurious / (double)d->blocking : 0;
        }
        printf("| %d |", consumer_counts[i]);
        print_rate(stats(futex, repeats));
        print_rate(stats(descriptor, repeats));
        print_ratio(stats(ratio, repeats));
        print_ratio(stats(wakes, repeats));
        print_ratio(stats(datagrams, repeats));
        if (consumer_counts[i] == 0)
            printf(" - |");
        else
            print_ratio(stats(spurious, repeats));
        printf("\n");
    }
}

/* A table's title, naming the waiters when there is more than one kind. */
static const char *titled(const char *title, enum waiter waiter)
{
    static char out[160];
    if (waiter_n == 1 && waiter == WAITER_FUTEX)
        snprintf(out, sizeof(out), "%s", title);
    else
        snprintf(out, sizeof(out), "%s, %s", title, waiter_titles[waiter]);
    return out;
}

/* Every N of every waiter kind, `repeats` rounds; within a round the kinds
 * run back to back for each N, in an order that alternates between rounds,
 * so that drift in the machine's load reaches both alike. Returns the
 * number of invariant violations. */
static int run_scenario(const char *label, double seconds, double rate, struct board *board,
                        struct run_result results[][15][COUNTS], int repeats)
{
    int failures = 0;
    for (int r = 0; r < repeats; r++)
        for (size_t i = 0; i < count_n; i++)
            for (size_t k = 0; k < waiter_n; k++) {
                enum waiter w = waiter_kinds[r % 2 == 0 ? k : waiter_n - 1 - k];
                struct run_plan plan = {consumer_counts[i], w, seconds, rate};
                struct run_result *x = &results[w][r][i];
                run_once(&plan, board, x);
                failures += x->failures;
                double published = (double)(x->published ? x->published : 1);
                fprintf(stderr,
                        "%-9s round %d N=%2d %-10s: %.3f M msgs/s, %.4f wakes/msg, "
                        "%.4f datagrams/msg\n",
                        label, r, plan.consumers, waiter_names[w], x->rate / 1e6,
                        (double)x->wakeups / published, (double)x->datagrams / published);
            }
    return failures;
}

static void report_killed_sleeper(double seconds, enum waiter waiter, struct board *board,
                                  int repeats)
{
    double alone[15], before[15], after[15], first[15], rel[15];
    uint64_t wakes_after_max = 0, wakes_after_min = UINT64_MAX;
    for (int r = 0; r < repeats; r++) {
        struct kill_result k;
        run_killed_sleeper(seconds, waiter, board, &k);
        alone[r] = k.alone;
        before[r] = k.before;
        after[r] = k.after;
        first[r] = k.first_10ms;
        rel[r] = k.after / k.before;
        if (k.wakes_after > wakes_after_max)
            wakes_after_max = k.wakes_after;
        if (k.wakes_after < wakes_after_min)
            wakes_after_min = k.wakes_after;
        fprintf(stderr,
                "killed sleeper (%s) round %d: before %.2f M, after %.2f M, %llu wakes after\n",
                waiter_names[waiter], r, k.before / 1e6, k.after / 1e6,
                (unsigned long long)k.wakes_after);
    }
    char title[96];
    snprintf(title, sizeof(title), "Killed sleeper (windows of %.1f s)", seconds);
    printf("\n### %s\n\n", titled(title, waiter));
    printf("| no consumer yet | blocking consumer alive | after SIGKILL, first 10 ms | after SIGKILL, whole window | after / before | wakes after the kill |\n");
    printf("|---:|---:|---:|---:|---:|---:|\n");
    printf("|");
    print_rate(stats(alone, repeats));
    print_rate(stats(before, repeats));
    print_rate(stats(first, repeats));
    print_rate(stats(after, repeats));
    print_ratio(stats(rel, repeats));
    printf(" %llu-%llu |\n", (unsigned long long)wakes_after_min,
           (unsigned long long)wakes_after_max);
}

static void usage(const char *argv0);

/* "futex,descriptor": each kind once. */
static void parse_waiters(const char *list, const char *argv0)
{
    waiter_n = 0;
    for (const char *at = list; *at != '\0';) {
        size_t len = strcspn(at, ",");
        size_t k;
        for (k = 0; k < WAITER_KINDS; k++)
            if (strlen(waiter_names[k]) == len && strncmp(at, waiter_names[k], len) == 0)
                break;
        if (k == WAITER_KINDS)
            usage(argv0);
        for (size_t j = 0; j < waiter_n; j++)
            if (waiter_kinds[j] == (enum waiter)k)
                usage(argv0);
        waiter_kinds[waiter_n++] = (enum waiter)k;
        at += len;
        if (*at == ',' && *++at == '\0')
            usage(argv0);
    }
    if (waiter_n == 0)
        usage(argv0);
}

/* "0,1,64": up to MAX_COUNTS values of N, each 0..MAX_CONSUMERS. */
static void parse_counts(const char *list, const char *argv0)
{
    count_n = 0;
    for (const char *at = list; *at != '\0';) {
        char *end;
        long n = strtol(at, &end, 10);
        if (end == at || n < 0 || n > MAX_CONSUMERS || count_n == MAX_COUNTS ||
            (*end != ',' && *end != '\0'))
            usage(argv0);
        consumer_counts[count_n++] = (int)n;
        at = *end == ',' ? end + 1 : end;
    }
    if (count_n == 0)
        usage(argv0);
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [--seconds S] [--repeats R] [--rate MSGS_PER_S] [--quick]\n"
            "          [--counts N,N,...] [--spin ITERATIONS] [--nap-us MICROSECONDS]\n"
            "          [--pin] [--batch] [--waiters futex,descriptor]\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    double seconds = 2, rate = 100000;
    int repeats = 3;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--repeats") == 0 && i + 1 < argc)
            repeats = atoi(argv[++i]);
        else if (strcmp(argv[i], "--rate") == 0 && i + 1 < argc)
            rate = atof(argv[++i]);
        else if (strcmp(argv[i], "--spin") == 0 && i + 1 < argc)
            consumer_spin = (uint32_t)atol(argv[++i]);
        else if (strcmp(argv[i], "--nap-us") == 0 && i + 1 < argc)
            consumer_nap_ns = (int64_t)(atof(argv[++i]) * 1000);
        else if (strcmp(argv[i], "--counts") == 0 && i + 1 < argc)
            parse_counts(argv[++i], argv[0]);
        else if (strcmp(argv[i], "--waiters") == 0 && i + 1 < argc)
            parse_waiters(argv[++i], argv[0]);
        else if (strcmp(argv[i], "--pin") == 0)
            pin_cpus = 1;
        else if (strcmp(argv[i], "--batch") == 0)
            consumer_batch = 1;
        else if (strcmp(argv[i], "--quick") == 0) {
            seconds = 0.2;
            repeats = 1;
        } else
            usage(argv[0]);
    }
    if (seconds <= 0 || seconds > 60 || repeats < 1 || repeats > 15 || rate <= 0 ||
        consumer_nap_ns < 0 || consumer_nap_ns >= 1000000000)
        usage(argv[0]);
    if (pin_cpus && sysconf(_SC_NPROCESSORS_ONLN) < 2) {
        fprintf(stderr, "herd: --pin needs two CPUs\n");
        return 2;
    }
    pin_to(0);
    /* A run: consumers start, publish, drain; 64 forks and a drained ring
     * take well under the 10 s of slack. */
    alarm_seconds = (unsigned)seconds + 10;
    signal(SIGALRM, on_alarm);
    /* Sleeps of a few microseconds are what pacing needs; the default 50 us
     * of timer slack would halve a 100k/s rate. */
    prctl(PR_SET_TIMERSLACK, 1UL);
    atexit(remove_current);
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct board *board = mmap(NULL, sizeof(struct board), PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (board == MAP_FAILED)
        die("mmap", -errno);
    static struct run_result flat[WAITER_KINDS][15][COUNTS], paced[WAITER_KINDS][15][COUNTS];
    int failures = 0;

    printf("## herd: %ld CPUs, %d-byte messages, %d repeats of %.1f s, medians (min-max)\n\n",
           sysconf(_SC_NPROCESSORS_ONLN), MESSAGE_SIZE, repeats, seconds);
    printf("Consumers: spin %u, nap before blocking %.0f us, %s; %s; waiting:", consumer_spin,
           (double)consumer_nap_ns / 1000, consumer_batch ? "SCHED_BATCH" : "SCHED_OTHER",
           pin_cpus ? "producer pinned to CPU 0, consumers to CPU 1" : "no pinning");
    for (size_t k = 0; k < waiter_n; k++)
        printf("%s %s", k ? "," : "", waiter_names[waiter_kinds[k]]);
    printf(".\n");

    failures += run_scenario("flat out", seconds, 0, board, flat, repeats);
    for (size_t k = 0; k < waiter_n; k++)
        report(titled("Flat out", waiter_kinds[k]), flat[waiter_kinds[k]], repeats);
    if (waiter_n == WAITER_KINDS)
        compare("Flat out: descriptor waiters against futex sleepers", flat, repeats);

    failures += run_scenario("paced", seconds, rate, board, paced, repeats);
    char paced_title[96];
    snprintf(paced_title, sizeof(paced_title), "Fixed rate, %.0f msgs/s asked", rate);
    for (size_t k = 0; k < waiter_n; k++)
        report(titled(paced_title, waiter_kinds[k]), paced[waiter_kinds[k]], repeats);
    if (waiter_n == WAITER_KINDS) {
        snprintf(paced_title, sizeof(paced_title),
                 "Fixed rate, %.0f msgs/s asked: descriptor waiters against futex sleepers", rate);
        compare(paced_title, paced, repeats);
    }

    for (size_t k = 0; k < waiter_n; k++)
        report_killed_sleeper(seconds < 1 ? seconds : 1, waiter_kinds[k], board, repeats);

    if (failures) {
        fprintf(stderr, "herd: %d invariant violations\n", failures);
        return 1;
    }
    return 0;
}

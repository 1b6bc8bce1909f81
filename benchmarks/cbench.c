/*
 * C side of the benchmark suite (driven by shmq/_bench.py), one JSON line out.
 *
 *   cbench throughput shmq|ref SIZE SECONDS   1 producer -> 1 consumer process
 *   cbench pingpong shmq-spin|shmq-block|ref ITERATIONS
 *
 * "ref" is the simplest shared-memory SPSC ring we could write, as a yardstick
 * for what the hardware allows: fixed slots, a head and a tail index on their
 * own cache lines, each side caching the other's index, memcpy payloads, the
 * producer waiting when full (lossless). Its ping-pong is a bare cache-line
 * ping-pong: two counters, each side spinning on the other's.
 * The producer runs on CPU 0 and the consumer on CPU 1 when there are two.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
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

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void pin(int cpu)
{
    if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof(set), &set);
}

static void *shared(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return p;
}

/* Results the children hand back, and a start line they wait at. */
struct board {
    _Atomic int ready;
    _Atomic int go;
    _Atomic uint64_t sent;
    _Atomic int done;
    double start, producer_end, consumer_end;
    uint64_t received, lost;
};

/* ------------------------------------------------------------ reference ring */

#define REF_SLOTS 4096u
struct ref_ring {
    _Alignas(128) _Atomic uint64_t head; /* written by the producer */
    _Alignas(128) _Atomic uint64_t tail; /* written by the consumer */
    _Alignas(128) unsigned char slots[];
};

static void ref_throughput(size_t size, double seconds, struct board *b)
{
    size_t stride = (size + 8 + 63) & ~(size_t)63;
    struct ref_ring *r = shared(sizeof(*r) + REF_SLOTS * stride);
    pid_t kid = fork();
    if (kid == 0) {
        pin(1);
        unsigned char buf[65536];
        uint64_t tail = 0, head_cache = 0, got = 0;
        b->ready++;
        for (;;) {
            if (tail == head_cache) {
                head_cache = atomic_load_explicit(&r->head, memory_order_acquire);
                if (tail == head_cache) {
                    if (atomic_load(&b->done) && tail == atomic_load(&b->sent))
                        break;
                    continue;
                }
            }
            unsigned char *slot = r->slots + (tail % REF_SLOTS) * stride;
            uint64_t len;
            memcpy(&len, slot, 8);
            memcpy(buf, slot + 8, len);
            tail++;
            got++;
            atomic_store_explicit(&r->tail, tail, memory_order_release);
        }
        b->consumer_end = now();
        b->received = got;
        _exit(0);
    }
    pin(0);
    while (b->ready < 1)
        ;
    unsigned char msg[65536];
    memset(msg, 7, size);
    uint64_t head = 0, tail_cache = 0;
    double end = now() + seconds;
    b->start = now();
    for (;;) {
        if ((head & 1023) == 0 && now() >= end)
            break;
        if (head - tail_cache == REF_SLOTS) {
            tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
            if (head - tail_cache == REF_SLOTS)
                continue;
        }
        unsigned char *slot = r->slots + (head % REF_SLOTS) * stride;
        uint64_t len = size;
        memcpy(slot, &len, 8);
        memcpy(slot + 8, msg, size);
        head++;
        atomic_store_explicit(&r->head, head, memory_order_release);
    }
    b->producer_end = now();
    atomic_store(&b->sent, head);
    atomic_store(&b->done, 1);
    waitpid(kid, NULL, 0);
}

/* ------------------------------------------------------------------ shmq */

static void shmq_throughput(size_t size, double seconds, struct board *b)
{
    char name[64];
    snprintf(name, sizeof(name), "cbench-%d", (int)getpid());
    shmq_unlink(name, SHMQ_UNLINK_FORCE);
    struct shmq_config config = {.slot_size = (uint32_t)size, .capacity = 1u << 16};
    struct shmq_producer *p;
    int rc = shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL);
    if (rc < 0) {
        fprintf(stderr, "cbench: %s\n", shmq_strerror(rc));
        exit(1);
    }
    pid_t kid = fork();
    if (kid == 0) {
        pin(1);
        struct shmq_consumer *c;
        if (shmq_consumer_open(&c, name, SHMQ_START_LATEST) < 0)
            _exit(1);
        unsigned char buf[65536];
        uint64_t got = 0;
        size_t len;
        b->ready++;
        for (;;) {
            rc = shmq_consumer_poll(c, buf, sizeof(buf), &len);
            if (rc == 0) {
                got++;
                continue;
            }
            if (atomic_load(&b->done) && shmq_consumer_position(c) >= atomic_load(&b->sent))
                break;
        }
        b->consumer_end = now();
        b->received = got;
        b->lost = shmq_consumer_lost(c);
        _exit(0);
    }
    pin(0);
    while (b->ready < 1)
        ;
    unsigned char msg[65536];
    memset(msg, 7, size);
    uint64_t sent = 0;
    double end = now() + seconds;
    b->start = now();
    for (;;) {
        if ((sent & 1023) == 0 && now() >= end)
            break;
        shmq_producer_publish(p, msg, size, NULL);
        sent++;
    }
    b->producer_end = now();
    atomic_store(&b->sent, sent);
    atomic_store(&b->done, 1);
    waitpid(kid, NULL, 0);
    shmq_producer_close(p);
    shmq_unlink(name, SHMQ_UNLINK_FORCE);
}

/* ------------------------------------------------------------- ping-pong */

static int compare(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report_latency(const char *what, double *rtt, long n)
{
    qsort(rtt, (size_t)n, sizeof(double), compare);
    printf("{\"shape\": \"pingpong\", \"contender\": \"%s\", \"iterations\": %ld, "
           "\"p50_us\": %.3f, \"p99_us\": %.3f, \"p999_us\": %.3f, \"max_us\": %.3f, \"cdf_us\": [",
           what, n, rtt[n / 2] * 1e6, rtt[(long)(n * 0.99)] * 1e6, rtt[(long)(n * 0.999)] * 1e6,
           rtt[n - 1] * 1e6);
    for (int q = 0; q < 100; q++) /* percentiles 0..99, then the maximum */
        printf("%.3f, ", rtt[(long)n * q / 100] * 1e6);
    printf("%.3f]}\n", rtt[n - 1] * 1e6);
}

static void ref_pingpong(long n)
{
    struct {
        _Alignas(128) _Atomic uint64_t ping;
        _Alignas(128) _Atomic uint64_t pong;
    } *lines = shared(256);
    pid_t kid = fork();
    if (kid == 0) {
        pin(1);
        for (uint64_t i = 1; i <= (uint64_t)n + 1000; i++) {
            while (atomic_load_explicit(&lines->ping, memory_order_acquire) != i)
                ;
            atomic_store_explicit(&lines->pong, i, memory_order_release);
        }
        _exit(0);
    }
    pin(0);
    double *rtt = malloc(sizeof(double) * (size_t)n);
    for (uint64_t i = 1; i <= (uint64_t)n + 1000; i++) {
        double t0 = now();
        atomic_store_explicit(&lines->ping, i, memory_order_release);
        while (atomic_load_explicit(&lines->pong, memory_order_acquire) != i)
            ;
        if (i > 1000) /* warm-up */
            rtt[i - 1001] = now() - t0;
    }
    waitpid(kid, NULL, 0);
    report_latency("c-ref-cacheline", rtt, n);
    free(rtt);
}

static void shmq_pingpong(long n, int blocking)
{
    char ping[64], pong[64];
    snprintf(ping, sizeof(ping), "cbench-ping-%d", (int)getpid());
    snprintf(pong, sizeof(pong), "cbench-pong-%d", (int)getpid());
    struct shmq_config config = {.slot_size = 64, .capacity = 1024};
    struct shmq_producer *to_echo, *to_client;
    shmq_unlink(ping, SHMQ_UNLINK_FORCE);
    shmq_unlink(pong, SHMQ_UNLINK_FORCE);
    /* Create both queues, then let each process open its own producer: a
     * producer handle inherited across fork() refuses to publish. */
    if (shmq_producer_open(&to_client, pong, &config, SHMQ_CREATE | SHMQ_EXCL) < 0)
        exit(1);
    shmq_producer_close(to_client);
    if (shmq_producer_open(&to_echo, ping, &config, SHMQ_CREATE | SHMQ_EXCL) < 0)
        exit(1);
    struct shmq_consumer *from_echo, *from_client;
    if (shmq_consumer_open(&from_echo, pong, SHMQ_START_LATEST) < 0 ||
        shmq_consumer_open(&from_client, ping, SHMQ_START_LATEST) < 0)
        exit(1);
    int64_t wait = blocking ? -1 : 0;
    _Atomic int *ready = shared(sizeof(int));
    pid_t kid = fork();
    if (kid == 0) {
        pin(1);
        if (shmq_producer_open(&to_client, pong, NULL, 0) < 0)
            _exit(1);
        *ready = 1;
        unsigned char msg[64];
        size_t len;
        for (long i = 0; i < n + 1000; i++) {
            while (shmq_consumer_poll_wait(from_client, msg, 64, &len, wait) != 0)
                ;
            shmq_producer_publish(to_client, msg, len, NULL);
        }
        _exit(0);
    }
    while (!*ready)
        usleep(100);
    pin(0);
    double *rtt = malloc(sizeof(double) * (size_t)n);
    unsigned char msg[64] = {0};
    size_t len;
    for (long i = 0; i < n + 1000; i++) {
        double t0 = now();
        shmq_producer_publish(to_echo, msg, 64, NULL);
        while (shmq_consumer_poll_wait(from_echo, msg, 64, &len, wait) != 0)
            ;
        if (i >= 1000)
            rtt[i - 1000] = now() - t0;
    }
    waitpid(kid, NULL, 0);
    report_latency(blocking ? "shmq-c-block" : "shmq-c-spin", rtt, n);
    free(rtt);
    shmq_unlink(ping, SHMQ_UNLINK_FORCE);
    shmq_unlink(pong, SHMQ_UNLINK_FORCE);
}

int main(int argc, char **argv)
{
    if (argc >= 5 && strcmp(argv[1], "throughput") == 0) {
        size_t size = strtoul(argv[3], NULL, 10);
        double seconds = strtod(argv[4], NULL);
        if (size == 0 || size > 65536 - 8) {
            fprintf(stderr, "cbench: bad size\n");
            return 2;
        }
        struct board *b = shared(sizeof(struct board));
        int ref = strcmp(argv[2], "ref") == 0;
        if (ref)
            ref_throughput(size, seconds, b);
        else
            shmq_throughput(size, seconds, b);
        double secs = b->consumer_end - b->start;
        printf("{\"shape\": \"1p1c\", \"contender\": \"%s\", \"size\": %zu, \"sent\": %llu, "
               "\"received\": %llu, \"lost\": %llu, \"seconds\": %.6f, "
               "\"publish_rate\": %.1f, \"delivered_rate\": %.1f}\n",
               ref ? "c-ref-ring" : "shmq-c", size, (unsigned long long)b->sent,
               (unsigned long long)b->received, (unsigned long long)b->lost, secs,
               (double)b->sent / (b->producer_end - b->start), (double)b->received / secs);
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "pingpong") == 0) {
        long n = strtol(argv[3], NULL, 10);
        if (n < 100)
            return 2;
        if (strcmp(argv[2], "ref") == 0)
            ref_pingpong(n);
        else
            shmq_pingpong(n, strcmp(argv[2], "shmq-block") == 0);
        return 0;
    }
    fprintf(stderr, "usage: cbench throughput shmq|ref SIZE SECONDS | cbench pingpong shmq-spin|shmq-block|ref N\n");
    return 2;
}

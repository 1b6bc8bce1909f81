/*
 * Waiting on descriptors and on many queues (shmq.h, DESCRIPTORS):
 *   - a consumer's descriptor is readable when it is made only if a poll
 *     would find something, quiet after a poll that finds nothing, readable after a publish from another
 *     process, quiet again once drained, and readable for good once the
 *     producer closes;
 *   - no wake-up is lost: a producer thread publishes bursts with random
 *     gaps while a consumer thread sleeps in poll(2) on its descriptor;
 *     every message arrives in order and no sleep ends only by its timeout;
 *   - shmq_wait_any over 3 queues (futex_waitv) and over 100 (descriptors)
 *     returns exactly the queue published to, from another process; a
 *     timeout of 0 never sleeps; a timeout returns 0; an interrupt from
 *     another thread returns SHMQ_INTERRUPTED;
 *   - a lossless producer's descriptor turns readable when a consumer frees
 *     room after shmq_producer_wait_room(p, 0) said SHMQ_FULL;
 *   - datagrams from anyone without the socket's key never make it
 *     readable; with the key, one poll that finds nothing quiets it;
 *   - shmq_producer_wait_consumers counts consumers that attach.
 * Built under ASan (make test) and under TSan (make tsan).
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>

#include <sys/socket.h>
#include <sys/un.h>

#include "helpers.h"
#include "ring_internal.h" /* the wake key, to play a consumer of the queue */

static int readable(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int rc = poll(&p, 1, timeout_ms);
    CHECK(rc >= 0);
    return rc == 1 && (p.revents & POLLIN);
}

static void publish_u64(struct shmq_producer *p, uint64_t v)
{
    CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), 0);
}

static struct shmq_producer *open_producer(const char *name, uint32_t capacity, int lossless)
{
    struct shmq_config cfg = {.slot_size = 64, .capacity = capacity, .delivery = lossless ? SHMQ_LOSSLESS : SHMQ_LOSSY};
    struct shmq_producer *p;
    CHECK_RC(shmq_producer_open(&p, name, &cfg, SHMQ_CREATE), 0);
    return p;
}

static void readiness(void)
{
    const char *name = test_name("fd");
    struct shmq_producer *p = open_producer(name, 16, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    int fd = shmq_consumer_fileno(c);
    CHECK(fd >= 0 && shmq_consumer_fileno(c) == fd);
    CHECK(!readable(fd, 0)); /* made armed: nothing to read */
    uint64_t v;
    size_t len;
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), &len), SHMQ_EMPTY);
    CHECK(!readable(fd, 0));
    /* A consumer with a message waiting gets a readable descriptor. */
    publish_u64(p, 6);
    struct shmq_consumer *late;
    CHECK_RC(shmq_consumer_open(&late, name, SHMQ_START_EARLIEST), 0);
    CHECK(readable(shmq_consumer_fileno(late), 0));
    shmq_consumer_close(late);
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), &len), 0);
    CHECK(v == 6);
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), &len), SHMQ_EMPTY);
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), &len), SHMQ_EMPTY); /* stays quiet */
    CHECK(!readable(fd, 50));
    publish_u64(p, 7);
    CHECK(readable(fd, 1000));
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), &len), 0);
    CHECK(v == 7);
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), &len), SHMQ_EMPTY);
    CHECK(!readable(fd, 0));
    shmq_producer_close(p);
    CHECK(readable(fd, 1000)); /* the end of the stream */
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), &len), SHMQ_EMPTY);
    CHECK(readable(fd, 0)); /* and it stays readable */
    shmq_consumer_close(c);
}

/* Datagrams from anyone else: without the key the kernel drops them; with
 * it (a reader of the queue can know it) the descriptor turns readable, and
 * the next poll that finds nothing quiets it again: never readable for
 * nothing for longer than one poll. */
static void stray_datagrams(void)
{
    const char *name = test_name("stray");
    struct shmq_producer *p = open_producer(name, 16, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    int fd = shmq_consumer_fileno(c);
    CHECK(fd >= 0 && !readable(fd, 0));
    struct sockaddr_un addr;
    socklen_t len = sizeof(addr);
    CHECK(getsockname(fd, (struct sockaddr *)&addr, &len) == 0);
    int stranger = socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK(stranger >= 0);
    uint64_t guess = 0x0123456789abcdefULL;
    for (int i = 0; i < 100; i++, guess *= 6364136223846793005ULL)
        CHECK(sendto(stranger, &guess, sizeof(guess), 0, (struct sockaddr *)&addr, len) ==
              (ssize_t)sizeof(guess)); /* accepted by the kernel, then dropped */
    CHECK(sendto(stranger, "x", 1, 0, (struct sockaddr *)&addr, len) == 1);
    CHECK(!readable(fd, 20));
    uint64_t key = c->wake_key;
    for (int round = 0; round < 100; round++) {
        CHECK(sendto(stranger, &key, sizeof(key), 0, (struct sockaddr *)&addr, len) ==
              (ssize_t)sizeof(key));
        CHECK(readable(fd, 0));
        uint64_t v;
        size_t n;
        CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), &n), SHMQ_EMPTY);
        CHECK(!readable(fd, 0));
    }
    publish_u64(p, 5); /* and real wake-ups still come */
    CHECK(readable(fd, 1000));
    close(stranger);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

/* A publish from another process wakes the descriptor. */
static void readiness_across_processes(void)
{
    const char *name = test_name("fdproc");
    int ready_pipe[2], go_pipe[2];
    CHECK(pipe(ready_pipe) == 0 && pipe(go_pipe) == 0);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        /* Only the parent's ends stay open elsewhere: if it dies, reads end. */
        close(ready_pipe[0]);
        close(go_pipe[1]);
        alarm(60);
        struct shmq_producer *p = open_producer(name, 16, 0);
        char b = 0;
        CHECK(write(ready_pipe[1], &b, 1) == 1);
        CHECK(read(go_pipe[0], &b, 1) == 1);
        struct timespec gap = {0, 100 * 1000 * 1000};
        nanosleep(&gap, NULL);
        publish_u64(p, 42);
        CHECK(read(go_pipe[0], &b, 1) == 1);
        shmq_producer_close(p);
        _exit(0);
    }
    char b = 0;
    CHECK(read(ready_pipe[0], &b, 1) == 1);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    int fd = shmq_consumer_fileno(c);
    CHECK(fd >= 0);
    uint64_t v;
    size_t len;
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), &len), SHMQ_EMPTY);
    CHECK(!readable(fd, 0));
    CHECK(write(go_pipe[1], &b, 1) == 1);
    CHECK(readable(fd, 5000));
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), &len), 0);
    CHECK(v == 42);
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), &len), SHMQ_EMPTY);
    CHECK(!readable(fd, 0));
    CHECK(write(go_pipe[1], &b, 1) == 1); /* the producer closes: readable */
    CHECK(readable(fd, 5000));
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    shmq_consumer_close(c);
    close(ready_pipe[0]);
    close(ready_pipe[1]);
    close(go_pipe[0]);
    close(go_pipe[1]);
}

/* ------------------------------------------------ no lost wake-up (threads) */

#define STRESS_MESSAGES 20000

struct stress {
    struct shmq_producer *p;
    _Atomic int done;
};

static void *stress_producer(void *arg)
{
    struct stress *s = arg;
    unsigned seed = 12345;
    for (uint64_t i = 0; i < STRESS_MESSAGES;) {
        unsigned burst = 1 + rand_r(&seed) % 8;
        for (unsigned k = 0; k < burst && i < STRESS_MESSAGES; k++, i++) {
            while (shmq_producer_publish(s->p, &i, sizeof(i), NULL) == SHMQ_FULL)
                sched_yield();
        }
        unsigned r = rand_r(&seed) % 4;
        if (r == 0) {
            struct timespec gap = {0, (long)(rand_r(&seed) % 200) * 1000};
            nanosleep(&gap, NULL);
        } else if (r == 1) {
            sched_yield();
        }
    }
    atomic_store(&s->done, 1);
    return NULL;
}

static void no_lost_wakeups(void)
{
    const char *name = test_name("fdstress");
    struct stress s = {.p = open_producer(name, 1024, 1)};
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    int fd = shmq_consumer_fileno(c);
    CHECK(fd >= 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, stress_producer, &s) == 0);
    uint64_t expect = 0;
    while (expect < STRESS_MESSAGES) {
        uint64_t v;
        size_t len;
        int rc = shmq_consumer_poll(c, &v, sizeof(v), &len);
        if (rc == 0) {
            CHECK(v == expect);
            expect++;
            continue;
        }
        CHECK_RC(rc, SHMQ_EMPTY);
        /* Quiet now: a publish must make it readable well within 5 s. */
        if (!readable(fd, 5000)) {
            fprintf(stderr, "lost wake-up at message %llu\n", (unsigned long long)expect);
            exit(1);
        }
    }
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(shmq_consumer_lost(c) == 0);
    shmq_consumer_close(c);
    shmq_producer_close(s.p);
}

/* ------------------------------------------------------------ wait_any */

struct interrupter {
    struct shmq_consumer *c;
};

static void *interrupt_soon(void *arg)
{
    struct interrupter *in = arg;
    struct timespec gap = {0, 50 * 1000 * 1000};
    nanosleep(&gap, NULL);
    shmq_consumer_interrupt(in->c);
    return NULL;
}

static void wait_any_over(size_t count)
{
    const char **names = calloc(count, sizeof(*names));
    struct shmq_consumer **cs = calloc(count, sizeof(*cs));
    unsigned char *ready = calloc(count, 1);
    CHECK(names && cs && ready);
    static char storage[128][48];
    for (size_t i = 0; i < count; i++) {
        snprintf(storage[i], sizeof(storage[i]), "test-any-%d-%zu", (int)getpid(), i);
        names[i] = storage[i];
    }
    /* Producers live in a child; the parent only reads. */
    int ready_pipe[2], go_pipe[2];
    CHECK(pipe(ready_pipe) == 0 && pipe(go_pipe) == 0);
    size_t target = count * 2 / 3;
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        close(ready_pipe[0]);
        close(go_pipe[1]);
        alarm(60);
        struct shmq_producer **ps = calloc(count, sizeof(*ps));
        for (size_t i = 0; i < count; i++) {
            struct shmq_config cfg = {.slot_size = 64, .capacity = 16};
            CHECK_RC(shmq_producer_open(&ps[i], names[i], &cfg, SHMQ_CREATE | SHMQ_UNLINK_ON_CLOSE),
                     0);
        }
        char b = 0;
        CHECK(write(ready_pipe[1], &b, 1) == 1);
        CHECK(read(go_pipe[0], &b, 1) == 1);
        publish_u64(ps[target], 99);
        CHECK(read(go_pipe[0], &b, 1) == 1);
        for (size_t i = 0; i < count; i++)
            shmq_producer_close(ps[i]);
        free(ps);
        _exit(0);
    }
    char b = 0;
    CHECK(read(ready_pipe[0], &b, 1) == 1);
    for (size_t i = 0; i < count; i++) {
        CHECK_RC(shmq_consumer_open(&cs[i], names[i], SHMQ_START_LATEST), 0);
    }
    /* Nothing yet: a zero timeout only looks, a short one times out. */
    CHECK_RC(shmq_wait_any(cs, count, 0, ready, NULL, NULL), 0);
    int64_t t0 = (int64_t)now_ns();
    CHECK_RC(shmq_wait_any(cs, count, 30 * 1000 * 1000, ready, NULL, NULL), 0);
    CHECK((int64_t)now_ns() - t0 >= 29 * 1000 * 1000);
    /* An interrupt of any of them ends the wait. */
    struct interrupter in = {.c = cs[count / 2]};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, interrupt_soon, &in) == 0);
    CHECK_RC(shmq_wait_any(cs, count, 5LL * 1000 * 1000 * 1000, ready, NULL, NULL),
             SHMQ_INTERRUPTED);
    CHECK(pthread_join(t, NULL) == 0);
    /* A publish on one, from the other process. */
    CHECK(write(go_pipe[1], &b, 1) == 1);
    CHECK_RC(shmq_wait_any(cs, count, 5LL * 1000 * 1000 * 1000, ready, NULL, NULL), 1);
    for (size_t i = 0; i < count; i++)
        CHECK(ready[i] == (i == target));
    uint64_t v;
    size_t len;
    CHECK_RC(shmq_consumer_poll(cs[target], &v, sizeof(v), &len), 0);
    CHECK(v == 99);
    /* The end of a stream counts as ready. */
    CHECK(write(go_pipe[1], &b, 1) == 1);
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(shmq_wait_any(cs, count, 0, ready, NULL, NULL) == (int)count);
    for (size_t i = 0; i < count; i++)
        shmq_consumer_close(cs[i]);
    free(names);
    free(cs);
    free(ready);
    close(ready_pipe[0]);
    close(ready_pipe[1]);
    close(go_pipe[0]);
    close(go_pipe[1]);
}

/* ------------------------------------------------ the producer's descriptor */

static void producer_descriptor(void)
{
    const char *name = test_name("pfd");
    struct shmq_producer *p = open_producer(name, 8, 1);
    CHECK_RC(shmq_producer_wait_consumers(p, 1, 0), -ETIMEDOUT);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    CHECK_RC(shmq_producer_wait_consumers(p, 1, 0), 1);
    int fd = shmq_producer_fileno(p);
    CHECK(fd >= 0 && shmq_producer_fileno(p) == fd);
    for (uint64_t i = 0; i < 8; i++)
        publish_u64(p, i);
    CHECK_RC(shmq_producer_publish(p, "x", 1, NULL), SHMQ_FULL);
    CHECK_RC(shmq_producer_wait_room(p, 0), SHMQ_FULL); /* arms it */
    CHECK(!readable(fd, 20));
    uint64_t v;
    size_t len;
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), &len), 0); /* a quarter of 8: two */
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), &len), 0);
    CHECK(readable(fd, 1000));
    CHECK_RC(shmq_producer_wait_room(p, 0), 0);
    CHECK_RC(shmq_producer_publish(p, "x", 1, NULL), 0);
    shmq_consumer_close(c);
    shmq_producer_close(p);

    struct shmq_producer *lossy = open_producer(test_name("pfdlossy"), 8, 0);
    CHECK_RC(shmq_producer_fileno(lossy), -EOPNOTSUPP);
    shmq_producer_close(lossy);
}

int main(void)
{
    test_start(120);
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
    readiness();
    readiness_across_processes();
    stray_datagrams();
    no_lost_wakeups();
    wait_any_over(3);
    wait_any_over(100);
    producer_descriptor();
    return 0;
}

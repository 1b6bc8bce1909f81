/*
 * Waits end on request (shmq.h, WAITING):
 *   - shmq_consumer_interrupt from another thread ends a blocking poll with
 *     SHMQ_INTERRUPTED, 1,000 times in a row, each well within a slice;
 *   - shmq_producer_interrupt ends a lossless producer's wait for room, and
 *     a claim_wait, the same way;
 *   - an interrupt from a signal handler (SIGALRM at random moments of the
 *     wait) ends the wait too;
 *   - an interrupt with no wait in progress ends the next wait at once, and
 *     only that one;
 *   - a wait check that says stop ends the wait with -EINTR.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <sys/time.h>

#include "helpers.h"

#define ROUNDS 1000

struct waiter {
    struct shmq_consumer *c;
    struct shmq_producer *p;
    int kind; /* 0 poll, 1 publish_wait, 2 claim_wait */
    _Atomic int started;
    int rc;
};

static void *wait_forever(void *arg)
{
    struct waiter *w = arg;
    uint64_t v = 0;
    size_t len;
    atomic_store(&w->started, 1);
    if (w->kind == 0) {
        w->rc = shmq_consumer_poll_wait(w->c, &v, sizeof(v), &len, -1);
    } else if (w->kind == 1) {
        w->rc = shmq_producer_publish_wait(w->p, &v, sizeof(v), NULL, -1);
    } else {
        void *data;
        w->rc = shmq_producer_claim_wait(w->p, 8, &data, -1);
        if (w->rc == 0)
            shmq_producer_abort(w->p);
    }
    return NULL;
}

/* Starts a waiter, lets it reach its sleep most of the time (and not
 * always: some interrupts land before it sleeps), interrupts it. */
static uint64_t interrupt_round(struct waiter *w, uint64_t *rng)
{
    pthread_t t;
    atomic_store(&w->started, 0);
    w->rc = 1;
    CHECK(pthread_create(&t, NULL, wait_forever, w) == 0);
    while (!atomic_load(&w->started))
        ;
    if (xorshift(rng) % 4 != 0)
        usleep((useconds_t)(xorshift(rng) % 300));
    uint64_t start = now_ns();
    if (w->kind == 0)
        shmq_consumer_interrupt(w->c);
    else
        shmq_producer_interrupt(w->p);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_RC(w->rc, SHMQ_INTERRUPTED);
    return now_ns() - start;
}

static void report(const char *what, uint64_t worst, uint64_t total)
{
    printf("%-44s %d rounds, mean %.3f ms, worst %.3f ms\n", what, ROUNDS,
           (double)total / ROUNDS / 1e6, (double)worst / 1e6);
}

static void consumer_interrupted_from_another_thread(void)
{
    const char *name = test_name("int-c");
    struct shmq_producer *p = make_producer(name, 8, 64, 0);
    struct waiter w = {0};
    CHECK_RC(shmq_consumer_open(&w.c, name, SHMQ_START_LATEST), 0);
    uint64_t rng = 11, worst = 0, total = 0;
    for (int i = 0; i < ROUNDS; i++) {
        uint64_t took = interrupt_round(&w, &rng);
        worst = took > worst ? took : worst;
        total += took;
    }
    report("blocking poll interrupted by a thread:", worst, total);
    /* Far within one 100 ms slice: the interrupt word wakes the sleeper. */
    CHECK(worst < 90 * 1000000ull);
    /* Still usable. */
    uint64_t v = 5, got;
    CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), 0);
    CHECK_RC(shmq_consumer_poll_wait(w.c, &got, sizeof(got), NULL, -1), 0);
    CHECK(got == 5);
    shmq_consumer_close(w.c);
    shmq_producer_close(p);
}

/* A lossless queue held full by a registered consumer that never reads. */
static struct shmq_producer *full_lossless(const char *name, struct shmq_consumer **stuck)
{
    struct shmq_config config = {.slot_size = 8, .capacity = 4, .delivery = SHMQ_LOSSLESS};
    struct shmq_producer *p;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    CHECK_RC(shmq_consumer_open(stuck, name, SHMQ_START_LATEST), 0);
    uint64_t v = 0;
    for (int i = 0; i < 4; i++)
        CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), 0);
    CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), SHMQ_FULL);
    return p;
}

static void producer_interrupted_from_another_thread(void)
{
    const char *name = test_name("int-p");
    struct shmq_consumer *stuck;
    struct waiter w = {0};
    w.p = full_lossless(name, &stuck);
    uint64_t rng = 12;
    for (w.kind = 1; w.kind <= 2; w.kind++) {
        uint64_t worst = 0, total = 0;
        for (int i = 0; i < ROUNDS; i++) {
            uint64_t took = interrupt_round(&w, &rng);
            worst = took > worst ? took : worst;
            total += took;
        }
        report(w.kind == 1 ? "lossless publish_wait interrupted:" : "lossless claim_wait interrupted:",
               worst, total);
        CHECK(worst < 90 * 1000000ull);
    }
    shmq_consumer_close(stuck);
    shmq_producer_close(w.p);
}

static struct shmq_consumer *signal_target;
static void interrupt_on_alarm(int sig)
{
    (void)sig;
    shmq_consumer_interrupt(signal_target);
}

static void consumer_interrupted_from_a_signal_handler(void)
{
    const char *name = test_name("int-sig");
    struct shmq_producer *p = make_producer(name, 8, 64, 0);
    CHECK_RC(shmq_consumer_open(&signal_target, name, SHMQ_START_LATEST), 0);
    struct sigaction sa = {.sa_handler = interrupt_on_alarm, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGALRM, &sa, NULL) == 0);
    uint64_t rng = 13, worst = 0;
    for (int i = 0; i < 200; i++) {
        struct itimerval in = {.it_value = {.tv_usec = 50 + (suseconds_t)(xorshift(&rng) % 2000)}};
        CHECK(setitimer(ITIMER_REAL, &in, NULL) == 0);
        uint64_t start = now_ns(), v;
        int rc = shmq_consumer_poll_wait(signal_target, &v, sizeof(v), NULL, 5000000000LL);
        uint64_t took = now_ns() - start;
        worst = took > worst ? took : worst;
        CHECK_RC(rc, SHMQ_INTERRUPTED);
    }
    printf("blocking poll interrupted by SIGALRM:        200 rounds, worst %.3f ms\n",
           (double)worst / 1e6);
    CHECK(worst < 200 * 1000000ull);
    signal(SIGALRM, SIG_DFL);
    test_start(60);
    shmq_consumer_close(signal_target);
    shmq_producer_close(p);
}

static int stop_now(void *context)
{
    return ++*(int *)context >= 3;
}

static void interrupt_ends_the_next_wait_once_and_check_ends_with_eintr(void)
{
    const char *name = test_name("int-next");
    struct shmq_producer *p = make_producer(name, 8, 64, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    shmq_consumer_interrupt(c);
    uint64_t v;
    CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), NULL), SHMQ_EMPTY); /* not a wait */
    CHECK_RC(shmq_consumer_poll_wait(c, &v, sizeof(v), NULL, -1), SHMQ_INTERRUPTED);
    CHECK_RC(shmq_consumer_poll_wait(c, &v, sizeof(v), NULL, 20 * 1000000LL), -ETIMEDOUT);
    int calls = 0;
    shmq_consumer_set_wait_check(c, stop_now, &calls);
    uint64_t start = now_ns();
    CHECK_RC(shmq_consumer_poll_wait(c, &v, sizeof(v), NULL, -1), -EINTR);
    CHECK(calls == 3);
    printf("a wait check asked 3 times ended the wait after %.0f ms\n", (now_ns() - start) / 1e6);
    shmq_consumer_set_wait_check(c, NULL, NULL);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

int main(void)
{
    test_start(60);
    setvbuf(stdout, NULL, _IONBF, 0);
    consumer_interrupted_from_another_thread();
    producer_interrupted_from_another_thread();
    consumer_interrupted_from_a_signal_handler();
    interrupt_ends_the_next_wait_once_and_check_ends_with_eintr();
    return 0;
}

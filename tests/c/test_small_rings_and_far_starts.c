/*
 * Two ways an honest reader used to get stuck or misreport:
 *   - on a ring of 2 or 4 slots, a producer publishing flat out laps a
 *     reader again and again within one poll; those laps are explained by
 *     head and must be counted as loss, never reported as corruption
 *     (SHMQ_CORRUPT): received + lost == published, with 0 corrupt;
 *   - a consumer started at a position 2^62 or 2^63 away from head (a
 *     corrupt pickle, say) is clamped into the readable window and reads
 *     the next message, in lossy and lossless mode.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>

#include "helpers.h"

#define PUBLISHED 300000u

struct run {
    struct shmq_producer *p;
    _Atomic int done;
};

static void *publish_flat_out(void *arg)
{
    struct run *r = arg;
    for (uint64_t i = 0; i < PUBLISHED; i++)
        CHECK_RC(shmq_producer_publish(r->p, &i, sizeof(i), NULL), 0);
    atomic_store(&r->done, 1);
    return NULL;
}

static void honest_laps_on_a_tiny_ring_are_loss_not_corruption(uint32_t capacity)
{
    const char *name = test_name("tiny");
    struct run r = {.p = make_producer(name, 8, capacity, 0)};
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, publish_flat_out, &r) == 0);
    uint64_t received = 0, corrupt = 0, last = 0;
    int first = 1;
    for (;;) {
        int done = atomic_load(&r.done);
        uint64_t v;
        int rc = shmq_consumer_poll(c, &v, sizeof(v), NULL);
        if (rc == 0) {
            CHECK(first || v > last);
            first = 0, last = v, received++;
        } else if (rc == SHMQ_CORRUPT) {
            corrupt++;
        } else {
            CHECK_RC(rc, SHMQ_EMPTY);
            if (done)
                break;
        }
    }
    CHECK(pthread_join(t, NULL) == 0);
    uint64_t lost = shmq_consumer_lost(c);
    printf("capacity %u: %u published, %llu received, %llu lost, %llu corrupt\n", capacity,
           PUBLISHED, (unsigned long long)received, (unsigned long long)lost,
           (unsigned long long)corrupt);
    CHECK(corrupt == 0);
    CHECK(received + lost == PUBLISHED);
    shmq_consumer_close(c);
    shmq_producer_close(r.p);
}

static void far_starts_are_clamped(int lossless)
{
    const char *name = test_name(lossless ? "far-ll" : "far");
    struct shmq_config config = {.slot_size = 8, .capacity = 16,
                                 .delivery = lossless ? SHMQ_LOSSLESS : SHMQ_LOSSY};
    struct shmq_producer *p;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    uint64_t v = 0;
    for (int i = 0; i < 40 && !lossless; i++, v++)
        CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), 0);
    uint64_t head = shmq_producer_next_sequence(p);
    const uint64_t away[] = {UINT64_C(1) << 63, (UINT64_C(1) << 63) + 1, (UINT64_C(1) << 63) - 1,
                             UINT64_C(1) << 62, (UINT64_C(1) << 62) + 7, UINT64_MAX / 3};
    for (size_t i = 0; i < sizeof(away) / sizeof(away[0]); i++) {
        for (int sign = 0; sign < 2; sign++) {
            struct shmq_consumer_options o = {.start = SHMQ_START_AT,
                                              .position = sign ? head - away[i] : head + away[i]};
            struct shmq_consumer *c;
            CHECK_RC(shmq_consumer_open_with(&c, name, &o), 0);
            uint64_t pos = shmq_consumer_position(c);
            CHECK(pos <= head && head - pos <= 16);
            CHECK(shmq_consumer_lost(c) < (UINT64_C(1) << 62));
            uint64_t sent = v++, got;
            CHECK_RC(shmq_producer_publish(p, &sent, sizeof(sent), NULL), 0);
            /* It reads the window (lossy) and then the new message. */
            int found = 0;
            for (int n = 0; n < 20 && !found; n++) {
                CHECK_RC(shmq_consumer_poll(c, &got, sizeof(got), NULL), 0);
                found = got == sent;
            }
            CHECK(found);
            shmq_consumer_close(c);
            head = shmq_producer_next_sequence(p);
        }
    }
    printf("%s: starts 2^62 and 2^63 away, either way: clamped, reading\n",
           lossless ? "lossless" : "lossy");
    shmq_producer_close(p);
}

int main(void)
{
    test_start(120);
    setvbuf(stdout, NULL, _IONBF, 0);
    honest_laps_on_a_tiny_ring_are_loss_not_corruption(2);
    honest_laps_on_a_tiny_ring_are_loss_not_corruption(4);
    far_starts_are_clamped(0);
    far_starts_are_clamped(1);
    return 0;
}

/*
 * Torn reads under constant overrun. A 16-slot ring, 10^7 messages of random
 * length whose payload is (sequence, PRNG bytes, checksum). Three consumer
 * processes sleep at random; a fourth stalls for longer than a lap, often.
 * Each consumer checks, for every message it gets:
 *   - the checksum (a torn copy would mix two messages and fail it);
 *   - the sequence inside equals its position (strictly increasing), and the
 *     gap from the previous message equals the growth of its lost count;
 * and at the end, received + lost == published since its start position.
 * With the re-check of the stamp removed from copy_slot, this test fails
 * (bad checksums) within a fraction of a second.
 */
#include <sched.h>

#include "helpers.h"

#define MESSAGES 10000000ull
#define SLOT 64
#define CONSUMERS 4

struct tally {
    uint64_t received, lost, bad_checksum, bad_order, published;
};

static size_t make_message(unsigned char *msg, uint64_t seq)
{
    uint64_t rng = seq * 0x9E3779B97F4A7C15ull + 1;
    size_t len = 24 + (size_t)(xorshift(&rng) % (SLOT - 24 + 1)); /* 24..64 */
    memcpy(msg, &seq, 8);
    for (size_t i = 8; i < len - 8; i++)
        msg[i] = (unsigned char)xorshift(&rng);
    uint64_t sum = checksum(msg, len - 8);
    memcpy(msg + len - 8, &sum, 8);
    return len;
}

static int consume(const char *name, int which, int pipe_fd)
{
    struct shmq_consumer *c;
    if (shmq_consumer_open(&c, name, SHMQ_START_EARLIEST) < 0)
        return 2;
    uint64_t rng = (uint64_t)which * 7919 + 17;
    struct tally t = {0};
    uint64_t start = shmq_consumer_position(c); /* earliest: 0 unless already lapped */
    uint64_t last_seq = 0, last_lost = 0;
    int first = 1;
    unsigned char buf[SLOT];
    while (shmq_consumer_position(c) < MESSAGES) {
        size_t len;
        /* Busy polling keeps the producer free of wake-up syscalls, so the
         * 10^7 messages take seconds; blocking is tested elsewhere. */
        int rc = shmq_consumer_poll(c, buf, sizeof(buf), &len);
        if (rc == SHMQ_EMPTY) {
            sched_yield();
            continue;
        }
        if (rc < 0)
            return 3;
        t.received++;
        uint64_t seq, sum;
        memcpy(&seq, buf, 8);
        memcpy(&sum, buf + len - 8, 8);
        if (len < 24 || checksum(buf, len - 8) != sum)
            t.bad_checksum++;
        uint64_t lost = shmq_consumer_lost(c);
        if (seq != shmq_consumer_position(c) - 1 ||
            (!first && seq - last_seq != 1 + (lost - last_lost)) || (first && seq != start + lost))
            t.bad_order++;
        first = 0;
        last_seq = seq;
        last_lost = lost;
        uint64_t r = xorshift(&rng);
        if (which == CONSUMERS - 1) {
            if (r % 20000 == 0)
                usleep(20000); /* stalled far past a lap */
        } else if (r % 5000 == 0) {
            usleep((useconds_t)(r >> 40) % 500);
        }
    }
    t.lost = shmq_consumer_lost(c);
    t.published = MESSAGES - start;
    shmq_consumer_close(c);
    if (write(pipe_fd, &t, sizeof(t)) != (ssize_t)sizeof(t))
        return 4;
    return 0;
}

int main(void)
{
    test_start(300);
    const char *name = test_name("torn");
    struct shmq_producer *p = make_producer(name, SLOT, 16, 0);
    int fds[CONSUMERS][2];
    pid_t kids[CONSUMERS];
    for (int k = 0; k < CONSUMERS; k++) {
        CHECK(pipe(fds[k]) == 0);
        kids[k] = fork();
        CHECK(kids[k] >= 0);
        if (kids[k] == 0)
            _exit(consume(name, k, fds[k][1]));
    }
    unsigned char msg[SLOT];
    uint64_t start = now_ns();
    for (uint64_t seq = 0; seq < MESSAGES; seq++) {
        size_t len = make_message(msg, seq);
        CHECK_RC(shmq_producer_publish(p, msg, len, NULL), 0);
    }
    double secs = (double)(now_ns() - start) / 1e9;
    int failed = 0;
    for (int k = 0; k < CONSUMERS; k++) {
        CHECK(wait_child(kids[k]) == 0);
        struct tally t;
        CHECK(read(fds[k][0], &t, sizeof(t)) == (ssize_t)sizeof(t));
        printf("consumer %d: received=%llu lost=%llu bad_checksum=%llu bad_order=%llu\n", k,
               (unsigned long long)t.received, (unsigned long long)t.lost,
               (unsigned long long)t.bad_checksum, (unsigned long long)t.bad_order);
        failed |= t.bad_checksum != 0 || t.bad_order != 0 || t.received + t.lost != t.published;
    }
    printf("published %llu in %.2f s\n", MESSAGES, secs);
    shmq_producer_close(p);
    CHECK(!failed);
    return 0;
}

/* One producer at a time, judged by a lock the kernel drops at death:
 * a second producer (another process) gets -EBUSY; after kill -9 of the
 * first, a new one takes over and continues the sequence. A producer killed
 * in the middle of a write leaves nothing a reader would deliver, and a
 * handle inherited across fork() refuses to publish and holds no lock. */
#include "adversary.h"

#include "ring_internal.h"

static void second_producer_is_refused_until_the_first_dies(void)
{
    const char *name = test_name("lock");
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t first = fork();
    CHECK(first >= 0);
    if (first == 0) {
        struct shmq_producer *p = make_producer(name, 8, 16, 0);
        for (uint64_t i = 0; i < 10; i++)
            shmq_producer_publish(p, &i, 8, NULL);
        char x = 1;
        if (write(ready[1], &x, 1) != 1)
            _exit(2);
        pause(); /* holds the lock until killed */
        _exit(0);
    }
    char x;
    CHECK(read(ready[0], &x, 1) == 1);
    struct shmq_producer *p;
    CHECK_RC(shmq_producer_open(&p, name, NULL, SHMQ_CREATE), -EBUSY);
    CHECK_RC(shmq_producer_open(&p, name, NULL, 0), -EBUSY);
    kill(first, SIGKILL);
    CHECK(wait_child(first) == 128 + SIGKILL);
    CHECK_RC(shmq_producer_open(&p, name, NULL, 0), 0);
    CHECK(shmq_producer_next_sequence(p) == 10); /* continues the sequence */
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    uint64_t v = 10, got;
    CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    for (uint64_t i = 0; i <= 10; i++) {
        CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), 0);
        CHECK(got == i);
    }
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

/* Plays the part of a producer killed between two steps of write_slot, by
 * writing the slot through a read-write mapping the way it would have been
 * left, then checks what readers and the next producer make of it. */
static void producer_killed_mid_write_leaves_nothing_torn(void)
{
    const char *name = test_name("midwrite");
    struct shmq_producer *p = make_producer(name, 8, 8, 0);
    uint64_t v = 0;
    CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    /* Died after step 1: message 1 stamped "in progress", payload half there. */
    uint64_t dead = 0xDEAD;
    craft_record(p, &dead, 8, 0);
    p->claimed = 0; /* so that close() does not wait for the loan */
    shmq_producer_close(p);
    uint64_t got;
    /* Closing ended the stream; the half-written message is not delivered. */
    CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), SHMQ_EMPTY);
    CHECK_RC(shmq_consumer_poll_wait(c, &got, 8, NULL, -1), SHMQ_ENDED);
    CHECK_RC(shmq_producer_open(&p, name, NULL, 0), 0);
    CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), SHMQ_EMPTY); /* reopened */
    CHECK(shmq_producer_next_sequence(p) == 1);
    v = 1;
    CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), 0);
    CHECK(got == 1);
    /* Died after step 3: message 2 complete, head not yet advanced. */
    v = 2;
    craft_record(p, &v, 8, 1);
    shmq_producer_close(p);
    CHECK_RC(shmq_producer_open(&p, name, NULL, 0), 0);
    CHECK(shmq_producer_next_sequence(p) == 3); /* message 2 is kept, not reused */
    v = 3;
    CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), 0);
    CHECK(got == 2);
    CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), 0);
    CHECK(got == 3);
    CHECK(shmq_consumer_lost(c) == 0);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

static void inherited_producer_refuses_to_publish_in_the_child(void)
{
    const char *name = test_name("fork");
    struct shmq_producer *p = make_producer(name, 8, 8, 0);
    pid_t kid = fork();
    CHECK(kid >= 0);
    if (kid == 0) {
        uint64_t v = 1;
        _exit(shmq_producer_publish(p, &v, 8, NULL) == -ECHILD ? 0 : 1);
    }
    CHECK(wait_child(kid) == 0);
    uint64_t v = 0;
    CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    shmq_producer_close(p);
}

static void forked_child_does_not_keep_the_queue_locked(void)
{
    const char *name = test_name("forklock");
    struct shmq_producer *p = make_producer(name, 8, 8, 0);
    int forked[2];
    CHECK(pipe(forked) == 0);
    pid_t kid = fork();
    CHECK(kid >= 0);
    if (kid == 0) {
        char x = 1; /* fork() has returned here, so the fork handlers ran */
        if (write(forked[1], &x, 1) != 1)
            _exit(2);
        pause(); /* outlives the parent's producer, with its mapping */
        _exit(0);
    }
    char x;
    CHECK(read(forked[0], &x, 1) == 1);
    shmq_producer_close(p);
    /* The child still runs, but its copy of the descriptor was dropped at
     * fork, so the lock went with the parent's close. */
    CHECK_RC(shmq_producer_open(&p, name, NULL, 0), 0);
    shmq_producer_close(p);
    kill(kid, SIGKILL);
    wait_child(kid);
}

static void geometry_mismatch_is_refused(void)
{
    const char *name = test_name("geometry");
    struct shmq_producer *p = make_producer(name, 64, 16, 0);
    shmq_producer_close(p);
    struct shmq_config config = {.slot_size = 64, .capacity = 32};
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE), -EMEDIUMTYPE);
    config.capacity = 16;
    config.slot_size = 128;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE), -EMEDIUMTYPE);
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), -EEXIST);
    config.slot_size = 64;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE), 0);
    shmq_producer_close(p);
    CHECK_RC(shmq_producer_open(&p, test_name("absent"), NULL, 0), -ENOENT);
}

int main(void)
{
    test_start(30);
    second_producer_is_refused_until_the_first_dies();
    producer_killed_mid_write_leaves_nothing_torn();
    inherited_producer_refuses_to_publish_in_the_child();
    forked_child_does_not_keep_the_queue_locked();
    geometry_mismatch_is_refused();
    return 0;
}

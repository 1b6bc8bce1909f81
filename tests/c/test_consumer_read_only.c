/* A consumer maps the ring read-only: a stray write through it faults (in a
 * child, which must die of SIGSEGV), so it can't corrupt what others read.
 * Its own page (the sleepers' count) is the one writable part. */
#include "helpers.h"

#include "ring_internal.h"

static int write_and_survive(struct shmq_consumer *c, int where)
{
    pid_t kid = fork();
    CHECK(kid >= 0);
    if (kid == 0) {
        signal(SIGSEGV, SIG_DFL);
        if (where == 0)
            atomic_store(&c->control->head, 12345); /* control page */
        else if (where == 1)
            atomic_store(&shmq_slot_at(c->slots, &c->geometry, 0)->stamp, 7); /* a slot */
        else
            atomic_fetch_add(&c->consumers->waiters, 0); /* its own page */
        _exit(0);
    }
    return wait_child(kid);
}

int main(void)
{
    test_start(30);
    const char *name = test_name("readonly");
    struct shmq_producer *p = make_producer(name, 8, 8, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    CHECK(write_and_survive(c, 0) == 128 + SIGSEGV);
    CHECK(write_and_survive(c, 1) == 128 + SIGSEGV);
    CHECK(write_and_survive(c, 2) == 0);
    shmq_consumer_close(c);
    shmq_producer_close(p);
    return 0;
}

/* A consumer maps the ring read-only: a stray write through it faults (in a
 * child, which must die of SIGSEGV), so it can't corrupt what others read.
 * What it may write is the wake page and its own entry; other consumers'
 * entries are not mapped in it at all, and the consumer-state file is not
 * mapped by anyone. */
#include "helpers.h"

#include "ring_internal.h"

/* Where a stray write may land. Computed before fork(): in the child the
 * consumer handle already belongs to the parent (consumer_in_child). */
static unsigned char *target(struct shmq_consumer *c, int where)
{
    switch (where) {
    case 0: return (unsigned char *)&c->control->head; /* control page */
    case 1: return (unsigned char *)shmq_record_at(c->index, &c->geometry, 0); /* a slot */
    case 2: return (unsigned char *)c->consumers.wake; /* the wake page */
    default: return (unsigned char *)c->entry; /* its own entry */
    }
}

static int write_and_survive(struct shmq_consumer *c, int where)
{
    volatile unsigned char *at = target(c, where);
    pid_t kid = fork();
    CHECK(kid >= 0);
    if (kid == 0) {
        signal(SIGSEGV, SIG_DFL);
        at[0] = at[0];
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
    CHECK(c->entry_index == 0);
    CHECK(write_and_survive(c, 2) == 0);
    CHECK(write_and_survive(c, 3) == 0);
    /* Nothing of the consumer state but the wake page and the entry of
     * each consumer of this process is mapped here. */
    CHECK(c->consumers.locks != NULL && shmq_region_base(c->consumers.locks) == NULL);
    CHECK(c->consumers.views == NULL);
    shmq_consumer_close(c);
    shmq_producer_close(p);
    return 0;
}

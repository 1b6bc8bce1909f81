/* A consumer maps the ring read-only: a stray write through it faults (in a
 * child, which must die of SIGSEGV), so it can't corrupt what others read.
 * In the consumer-state segment only the wake page and its own entry are
 * writable; the header and other consumers' entries fault too. */
#include "helpers.h"

#include "ring_internal.h"

/* Where a stray write may land. Computed before fork(): in the child the
 * consumer handle already belongs to the parent (consumer_in_child). */
static unsigned char *target(struct shmq_consumer *c, int where)
{
    switch (where) {
    case 0: return (unsigned char *)&c->control->head; /* control page */
    case 1: return (unsigned char *)shmq_slot_at(c->slots, &c->geometry, 0); /* a slot */
    case 2: return (unsigned char *)c->consumers.wake; /* the wake page */
    case 3: return (unsigned char *)c->entry; /* its own entry */
    case 4: return shmq_region_base(c->consumers.region); /* consumer-state header */
    default: /* another consumer's entry */
        return c->consumers.entries + (size_t)(c->entry_index + 1) * c->consumers.page_size;
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
    CHECK(write_and_survive(c, 4) == 128 + SIGSEGV);
    CHECK(write_and_survive(c, 5) == 128 + SIGSEGV);
    shmq_consumer_close(c);
    shmq_producer_close(p);
    return 0;
}

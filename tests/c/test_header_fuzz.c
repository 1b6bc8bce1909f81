/*
 * Fuzzes header validation and attach: 20,000 rounds of random damage to a
 * valid segment (bit flips and random values in the control page, random
 * sizes). Every open must return 0 or a documented negative code, and when
 * an open succeeds, polling and publishing must stay inside the mapping.
 * ASan and UBSan watch every access; a crash or a report fails the test.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>

#include "helpers.h"

#include "ring_internal.h"

static int documented(int rc)
{
    switch (rc) {
    case 0: case -ENODATA: case -EPROTO: case -EPROTONOSUPPORT: case -EBADMSG: case -EBUSY:
    case -EMEDIUMTYPE:
        return 1;
    default:
        return 0;
    }
}

int main(void)
{
    test_start(120);
    const char *name = test_name("fuzz");
    char path[256];
    snprintf(path, sizeof(path), "/dev/shm/" SHMQ_NAME_PREFIX "%s", name);
    uint64_t rng = 0x5eed;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    int opened = 0;
    for (int round = 0; round < 20000; round++) {
        shmq_unlink(name, SHMQ_UNLINK_FORCE);
        struct shmq_producer *p = make_producer(name, 8 + (uint32_t)(xorshift(&rng) % 64),
                                                1u << (1 + xorshift(&rng) % 6), xorshift(&rng));
        shmq_producer_close(p);
        int fd = open(path, O_RDWR);
        CHECK(fd >= 0);
        unsigned char *h = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        CHECK(h != MAP_FAILED);
        int damage = 1 + (int)(xorshift(&rng) % 4);
        for (int d = 0; d < damage; d++) {
            size_t at = xorshift(&rng) % 80; /* the identity and geometry line, mostly */
            if (xorshift(&rng) & 1)
                h[at] ^= (unsigned char)(1u << (xorshift(&rng) % 8));
            else
                h[at] = (unsigned char)xorshift(&rng);
        }
        if (xorshift(&rng) % 8 == 0) /* restore the magic, so deeper checks run */
            atomic_store(&((struct shmq_control *)h)->magic, SHMQ_MAGIC);
        munmap(h, page);
        if (xorshift(&rng) % 8 == 0)
            CHECK(ftruncate(fd, (off_t)(xorshift(&rng) % (3 * page))) == 0);
        close(fd);

        struct shmq_consumer *c = NULL;
        int rc = shmq_consumer_open(&c, name, (enum shmq_start)(xorshift(&rng) & 1));
        if (!documented(rc)) {
            fprintf(stderr, "round %d: consumer open returned %d (%s)\n", round, rc, shmq_strerror(rc));
            return 1;
        }
        rc = shmq_producer_open(&p, name, NULL, 0);
        if (!documented(rc)) {
            fprintf(stderr, "round %d: producer open returned %d (%s)\n", round, rc, shmq_strerror(rc));
            return 1;
        }
        if (rc == 0) {
            unsigned char msg[64] = {1};
            shmq_producer_publish(p, msg, shmq_producer_slot_size(p) < 64 ? shmq_producer_slot_size(p) : 64, NULL);
            shmq_producer_close(p);
        }
        if (c != NULL) {
            opened++;
            unsigned char buf[128];
            for (int i = 0; i < 4; i++)
                shmq_consumer_poll(c, buf, sizeof(buf), NULL);
            shmq_consumer_close(c);
        }
    }
    printf("20000 damaged segments, %d still valid enough to open\n", opened);
    return 0;
}

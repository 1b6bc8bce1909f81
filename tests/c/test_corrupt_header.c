/* A table of damaged segments. Each one must give its specific error code to
 * both a consumer and a producer, never a crash or a read out of bounds (ASan
 * watches). Also: damaged slots are skipped and counted, not delivered. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>

#include "helpers.h"

#include "ring_internal.h"

typedef void (*damage_fn)(struct shmq_identity *h, int fd);

static void zero_magic(struct shmq_identity *h, int fd) { (void)fd; h->magic = 0; }
static void foreign_magic(struct shmq_identity *h, int fd) { (void)fd; h->magic = 0x1234; }
static void future_version(struct shmq_identity *h, int fd) { (void)fd; h->version = SHMQ_LAYOUT_VERSION + 1; }
static void zero_version(struct shmq_identity *h, int fd) { (void)fd; h->version = 0; }
static void unknown_flag(struct shmq_identity *h, int fd) { (void)fd; h->flags = 0x80; }
static void capacity_not_power_of_two(struct shmq_identity *h, int fd) { (void)fd; h->capacity = 12; }
static void capacity_zero(struct shmq_identity *h, int fd) { (void)fd; h->capacity = 0; }
static void capacity_huge(struct shmq_identity *h, int fd) { (void)fd; h->capacity = 1u << 31; }
static void slot_size_huge(struct shmq_identity *h, int fd) { (void)fd; h->slot_size = 0xFFFFFFF0u; }
static void stride_too_small(struct shmq_identity *h, int fd) { (void)fd; h->slot_stride = 16; }
static void slots_offset_wrong(struct shmq_identity *h, int fd) { (void)fd; h->index_offset = 64; }
static void total_size_lies(struct shmq_identity *h, int fd) { (void)fd; h->total_size *= 2; }
static void page_size_wrong(struct shmq_identity *h, int fd) { (void)fd; h->page_size = 512; }
static void consumer_entries_wrong(struct shmq_identity *h, int fd) { (void)fd; h->consumer_entries = 9999; }
static void instance_zero(struct shmq_identity *h, int fd) { (void)fd; h->instance = 0; }
static void truncated(struct shmq_identity *h, int fd) { (void)h; CHECK(ftruncate(fd, 8192 + 100) == 0); }
static void tiny(struct shmq_identity *h, int fd) { (void)h; CHECK(ftruncate(fd, 10) == 0); }
static void empty(struct shmq_identity *h, int fd) { (void)h; CHECK(ftruncate(fd, 0) == 0); }
static void garbage(struct shmq_identity *h, int fd)
{
    (void)fd;
    uint64_t rng = 99;
    unsigned char *b = (unsigned char *)h;
    for (size_t i = 0; i < 4096; i++)
        b[i] = (unsigned char)xorshift(&rng);
}

static const struct {
    const char *what;
    damage_fn damage;
    int want;
} cases[] = {
    {"zero magic (half-initialised)", zero_magic, -ENODATA},
    {"foreign magic", foreign_magic, -EPROTO},
    {"future layout version", future_version, -EPROTONOSUPPORT},
    {"zero layout version", zero_version, -EPROTONOSUPPORT},
    {"unknown mode flag", unknown_flag, -EPROTONOSUPPORT},
    {"capacity not a power of two", capacity_not_power_of_two, -EBADMSG},
    {"capacity zero", capacity_zero, -EBADMSG},
    {"capacity over the limit", capacity_huge, -EBADMSG},
    {"slot size over the limit", slot_size_huge, -EBADMSG},
    {"slot stride inconsistent", stride_too_small, -EBADMSG},
    {"slots offset wrong", slots_offset_wrong, -EBADMSG},
    {"total size disagrees with header", total_size_lies, -EBADMSG},
    {"page size of another machine", page_size_wrong, -EBADMSG},
    {"consumer table over the limit", consumer_entries_wrong, -EBADMSG},
    {"instance number unset", instance_zero, -EBADMSG},
    {"file truncated into the slots", truncated, -EBADMSG},
    {"file truncated into the header", tiny, -EBADMSG},
    {"file empty", empty, -ENODATA},
    {"random garbage", garbage, -EPROTO},
};

static void damaged_headers_give_specific_errors(void)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *name = test_name("corrupt");
        struct shmq_producer *p = make_producer(name, 64, 64, 0);
        shmq_producer_close(p);
        char path[256];
        snprintf(path, sizeof(path), "/dev/shm/" SHMQ_NAME_PREFIX "%s", name);
        int fd = open(path, O_RDWR);
        CHECK(fd >= 0);
        struct shmq_identity *h = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        CHECK(h != MAP_FAILED);
        cases[i].damage(h, fd);
        munmap(h, 4096);
        close(fd);
        struct shmq_consumer *c = NULL;
        int rc_consumer = shmq_consumer_open(&c, name, SHMQ_START_EARLIEST);
        int rc_producer = shmq_producer_open(&p, name, NULL, SHMQ_CREATE);
        printf("%-36s consumer %-40s producer %s\n", cases[i].what, shmq_strerror(rc_consumer),
               shmq_strerror(rc_producer));
        CHECK_RC(rc_consumer, cases[i].want);
        CHECK_RC(rc_producer, cases[i].want);
        shmq_unlink(name, SHMQ_UNLINK_FORCE);
    }
}

static void damaged_slot_is_skipped_and_counted(void)
{
    const char *name = test_name("badslot");
    struct shmq_producer *p = make_producer(name, 8, 8, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    for (uint64_t v = 0; v < 3; v++)
        CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    atomic_store(&shmq_record_at(p->index, &p->geometry, 1)->length, 1u << 30);
    uint64_t got;
    CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), 0);
    CHECK(got == 0);
    CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), SHMQ_CORRUPT);
    CHECK(shmq_consumer_lost(c) == 1);
    CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), 0);
    CHECK(got == 2);
    /* A stamp from the future reads as an overrun, not as a message. */
    atomic_store(&shmq_record_at(p->index, &p->geometry, 3)->stamp, 1000);
    CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), SHMQ_EMPTY);
    CHECK(shmq_consumer_position(c) > 3);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

int main(void)
{
    test_start(30);
    damaged_headers_give_specific_errors();
    damaged_slot_is_skipped_and_counted();
    return 0;
}

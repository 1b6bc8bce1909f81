/* The shared-memory region on its own: name rules, exclusive creation that
 * never adopts a squatted name, exact permissions whatever the umask, space
 * reserved up front (an impossible size fails at create time and leaves
 * nothing behind), and the segment is exactly header + slots. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>

#include "helpers.h"

static void names_are_validated(void)
{
    const char *good[] = {"a", "ticks", "A-b_c.9", "0", "x..y"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        CHECK_RC(shmq_name_validate(good[i]), 0);
    const char *bad[] = {"", ".", "..", "/x", "a/b", ".hidden", "-x", "_x", "a b", "a\n", "é", "a*"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK_RC(shmq_name_validate(bad[i]), -EINVAL);
    CHECK_RC(shmq_name_validate(NULL), -EINVAL);
    char longname[SHMQ_NAME_MAX + 2];
    memset(longname, 'a', sizeof(longname));
    longname[SHMQ_NAME_MAX] = '\0';
    CHECK_RC(shmq_name_validate(longname), 0);
    longname[SHMQ_NAME_MAX] = 'a';
    longname[SHMQ_NAME_MAX + 1] = '\0';
    CHECK_RC(shmq_name_validate(longname), -ENAMETOOLONG);
    struct shmq_region *r;
    CHECK_RC(shmq_region_create(&r, "../etc", 4096, 0600), -EINVAL);
    CHECK_RC(shmq_region_open(&r, "..", SHMQ_REGION_READ_ONLY), -EINVAL);
}

static void create_is_exclusive_even_against_a_squatter(void)
{
    const char *name = test_name("squat");
    char path[256];
    snprintf(path, sizeof(path), "/dev/shm/" SHMQ_NAME_PREFIX "%s", name);
    int fd = open(path, O_CREAT | O_EXCL | O_RDWR, 0666);
    CHECK(fd >= 0);
    CHECK(write(fd, "not yours", 9) == 9);
    close(fd);
    struct shmq_region *r;
    CHECK_RC(shmq_region_create(&r, name, 4096, 0600), -EEXIST);
    struct shmq_producer *p;
    struct shmq_config config = {.slot_size = 8, .capacity = 8};
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), -EEXIST);
    /* Open-or-create attaches, sees a segment wider open than asked (the
     * squatter's 0644 or 0666) and refuses it before reading a byte. */
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE), -EPERM);
    CHECK(shmq_region_exists(name) == 1);
}

static mode_t mode_of(const char *name)
{
    char path[256];
    struct stat st;
    snprintf(path, sizeof(path), "/dev/shm/" SHMQ_NAME_PREFIX "%s", name);
    CHECK(stat(path, &st) == 0);
    return st.st_mode & 0777;
}

static void permissions_ignore_the_umask(void)
{
    mode_t old = umask(0);
    const char *name = test_name("mode");
    struct shmq_producer *p = make_producer(name, 8, 8, 0);
    CHECK(mode_of(name) == 0600);
    shmq_producer_close(p);
    umask(077);
    name = test_name("mode640");
    struct shmq_config config = {.slot_size = 8, .capacity = 8, .mode = 0640};
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    CHECK(mode_of(name) == 0640);
    shmq_producer_close(p);
    umask(old);
}

static void space_is_reserved_at_creation(void)
{
    const char *name = test_name("huge");
    struct shmq_region *r;
    int rc = shmq_region_create(&r, name, (size_t)1 << 50, 0600); /* 1 PiB */
    CHECK(rc == -ENOSPC || rc == -EFBIG);
    CHECK(shmq_region_exists(name) == 0); /* nothing left behind */
    name = test_name("reserved");
    CHECK_RC(shmq_region_create(&r, name, 1 << 20, 0600), 0);
    struct stat st;
    CHECK(fstat(shmq_region_fd(r), &st) == 0);
    CHECK(st.st_size == 1 << 20);
    CHECK(st.st_blocks * 512 >= 1 << 20); /* pages allocated, not just a size */
    CHECK(shmq_region_size(r) == 1 << 20);
    memset(shmq_region_base(r), 0xAB, 1 << 20);
    shmq_region_close(r);
    CHECK_RC(shmq_region_open(&r, name, SHMQ_REGION_READ_ONLY), 0);
    CHECK(((unsigned char *)shmq_region_base(r))[12345] == 0xAB);
    shmq_region_close(r);
    CHECK_RC(shmq_region_unlink(name), 0);
    CHECK(shmq_region_exists(name) == 0);
}

static void segment_is_exactly_header_plus_slots(void)
{
    const char *name = test_name("size");
    struct shmq_producer *p = make_producer(name, 64, 1024, 0);
    struct shmq_region *r;
    CHECK_RC(shmq_region_open(&r, name, SHMQ_REGION_READ_ONLY), 0);
    long page = sysconf(_SC_PAGESIZE);
    CHECK(shmq_region_size(r) == (size_t)(page + 1024 * (16 + 64)));
    shmq_region_close(r);
    /* The consumer state in /dev/shm: an empty file, used for its locks. */
    char consumers[256];
    snprintf(consumers, sizeof(consumers), "/dev/shm/shmq-%s.consumers", name);
    struct stat st;
    CHECK(stat(consumers, &st) == 0 && st.st_size == 0);
    shmq_producer_close(p);
}

static void descriptors_close_on_exec(void)
{
    const char *name = test_name("cloexec");
    struct shmq_region *r;
    CHECK_RC(shmq_region_create(&r, name, 4096, 0600), 0);
    CHECK(fcntl(shmq_region_fd(r), F_GETFD) & FD_CLOEXEC);
    shmq_region_close(r);
}

int main(void)
{
    test_start(30);
    names_are_validated();
    create_is_exclusive_even_against_a_squatter();
    permissions_ignore_the_umask();
    space_is_reserved_at_creation();
    segment_is_exactly_header_plus_slots();
    descriptors_close_on_exec();
    return 0;
}

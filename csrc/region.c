/*
 * Named POSIX shared-memory regions.
 *
 * Creation is exclusive (O_CREAT|O_EXCL) so we never adopt an object someone
 * else planted under our name; the mode is set again with fchmod because
 * shm_open's mode is filtered through the umask. Space is reserved with
 * posix_fallocate: on tmpfs ftruncate only sets the size, and touching a page
 * that can't be allocated later raises SIGBUS in whoever touches it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "region_internal.h"
#include "ring_internal.h"

struct shmq_region {
    int fd;      /* the descriptor the mapping came from */
    int lock_fd; /* its own open file description for OFD locks, or -1 */
    void *base;
    size_t size;
};

int shmq_name_validate(const char *name)
{
    if (name == NULL || name[0] == '\0')
        return -EINVAL;
    size_t n = strnlen(name, SHMQ_NAME_MAX + 1);
    if (n > SHMQ_NAME_MAX)
        return -ENAMETOOLONG;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)name[i];
        int alnum = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!alnum && (i == 0 || (ch != '.' && ch != '_' && ch != '-')))
            return -EINVAL;
    }
    return 0;
}

/* "/shmq-NAME" plus an optional suffix: the leading slash is what shm_open
 * wants. The suffix is ours (SHMQ_CONSUMERS_SUFFIX), never a caller's. */
static int object_path(char *path, size_t path_size, const char *name, const char *suffix)
{
    int rc = shmq_name_validate(name);
    if (rc < 0)
        return rc;
    snprintf(path, path_size, "/" SHMQ_NAME_PREFIX "%s%s", name, suffix ? suffix : "");
    return 0;
}

#define PATH_SIZE (SHMQ_NAME_MAX + sizeof(SHMQ_NAME_PREFIX) + 32)

/* size 0: a lock file, which is never mapped. */
static int map_region(struct shmq_region **out, int fd, size_t size, int prot)
{
    struct shmq_region *region = malloc(sizeof(*region));
    if (region == NULL)
        return -ENOMEM;
    void *base = size == 0 ? NULL : mmap(NULL, size, prot, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int rc = -errno;
        free(region);
        return rc;
    }
    region->fd = fd;
    region->lock_fd = -1;
    region->base = base;
    region->size = size;
    *out = region;
    return 0;
}

int shmq_region_create(struct shmq_region **out, const char *name, size_t size, mode_t mode)
{
    return shmq_region_create_object(out, name, NULL, size, mode);
}

int shmq_region_create_object(struct shmq_region **out, const char *name, const char *suffix,
                              size_t size, mode_t mode)
{
    char path[PATH_SIZE];
    int rc = object_path(path, sizeof(path), name, suffix);
    if (rc < 0)
        return rc;
    if ((size == 0 && suffix == NULL) || size > (size_t)LLONG_MAX)
        return -EINVAL;
    mode &= 0777;
    int fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    if (fchmod(fd, mode) != 0) {
        rc = -errno;
        goto fail;
    }
    rc = size == 0 ? 0 : posix_fallocate(fd, 0, (off_t)size); /* returns the error number */
    if (rc != 0) {
        rc = -rc;
        goto fail;
    }
    rc = map_region(out, fd, size, PROT_READ | PROT_WRITE);
    if (rc == 0)
        return 0;
fail:
    shm_unlink(path);
    close(fd);
    return rc;
}

/* Opens an object without following a symlink and without blocking on a
 * FIFO (O_NONBLOCK only matters there: a regular file never blocks). */
static int open_object(const char *path, int flags)
{
    int fd = shm_open(path, flags | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC, 0);
    if (fd >= 0)
        return fd;
    /* A symlink under the name (ELOOP), a directory (shm_open says EINVAL,
     * open EISDIR) or a socket (ENXIO): not ours, as a FIFO is not. The
     * name itself was validated before. */
    return errno == ELOOP || errno == EINVAL || errno == EISDIR || errno == ENXIO ? -EPROTO
                                                                                  : -errno;
}

int shmq_region_open(struct shmq_region **out, const char *name, enum shmq_region_access access)
{
    return shmq_region_open_object(out, name, NULL, access);
}

int shmq_region_open_object(struct shmq_region **out, const char *name, const char *suffix,
                            enum shmq_region_access access)
{
    char path[PATH_SIZE];
    int rc = object_path(path, sizeof(path), name, suffix);
    if (rc < 0)
        return rc;
    if (access != SHMQ_REGION_READ_ONLY && access != SHMQ_REGION_READ_WRITE &&
        access != SHMQ_REGION_MOSTLY_READ && access != SHMQ_REGION_LOCKS)
        return -EINVAL;
    int fd = open_object(path, access == SHMQ_REGION_READ_ONLY ? O_RDONLY : O_RDWR);
    if (fd < 0)
        return fd;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        goto fail;
    }
    /* Anyone may plant a FIFO, socket or directory under a name in
     * /dev/shm: never read or map one. */
    if (!S_ISREG(st.st_mode)) {
        rc = -EPROTO;
        goto fail;
    }
    if (access == SHMQ_REGION_LOCKS) {
        rc = map_region(out, fd, 0, 0);
        if (rc == 0)
            return 0;
        goto fail;
    }
    if (st.st_size <= 0) {
        rc = -ENODATA;
        goto fail;
    }
    if ((unsigned long long)st.st_size > (unsigned long long)SIZE_MAX) {
        rc = -EFBIG;
        goto fail;
    }
    rc = map_region(out, fd, (size_t)st.st_size,
                    access == SHMQ_REGION_READ_WRITE ? PROT_READ | PROT_WRITE : PROT_READ);
    if (rc == 0)
        return 0;
fail:
    close(fd);
    return rc;
}

void shmq_region_close(struct shmq_region *region)
{
    if (region == NULL)
        return;
    if (region->base != NULL)
        munmap(region->base, region->size);
    shmq_region_drop_lock(region);
    close(region->fd);
    free(region);
}

int shmq_region_unlink(const char *name)
{
    return shmq_region_unlink_object(name, NULL);
}

int shmq_region_unlink_object(const char *name, const char *suffix)
{
    char path[PATH_SIZE];
    int rc = object_path(path, sizeof(path), name, suffix);
    if (rc < 0)
        return rc;
    return shm_unlink(path) == 0 ? 0 : -errno;
}

int shmq_region_exists(const char *name)
{
    char path[PATH_SIZE];
    int rc = object_path(path, sizeof(path), name, NULL);
    if (rc < 0)
        return rc;
    /* A refusal other than ENOENT (permissions, a FIFO or symlink planted
     * under the name) still means the name is taken. */
    int fd = open_object(path, O_RDONLY);
    if (fd >= 0) {
        close(fd);
        return 1;
    }
    return fd == -ENOENT ? 0 : 1;
}

/* The range one lock covers: a single byte, so that locks on different
 * bytes of one object (one per consumer entry) are independent. */
static struct flock lock_range(short type, uint64_t offset)
{
    struct flock range = {.l_type = type, .l_whence = SEEK_SET, .l_start = (off_t)offset, .l_len = 1};
    return range;
}

static int lock_byte(struct shmq_region *region, uint64_t offset);

int shmq_region_lock(struct shmq_region *region)
{
    return shmq_region_lock_byte(region, 0);
}

int shmq_region_lock_byte(struct shmq_region *region, uint64_t offset)
{
    /* fork() must not copy a lock description that is not yet recorded in
     * the region (the child could not drop it): see fork.c. */
    shmq_fork_guard(1);
    int rc = lock_byte(region, offset);
    shmq_fork_guard(0);
    return rc;
}

void shmq_region_unlock_byte(struct shmq_region *region, uint64_t offset)
{
    struct flock range = lock_range(F_UNLCK, offset);
    if (region->lock_fd >= 0)
        fcntl(region->lock_fd, F_OFD_SETLK, &range);
}

static int lock_byte(struct shmq_region *region, uint64_t offset)
{
    /* Open file description (OFD) locks belong to a description, which lives
     * until its last reference goes: descriptors, but also mappings. A forked
     * child inherits the mapping, so a lock on the mapped description would
     * outlive the parent for as long as the child lives. Locks therefore go
     * on a description of their own, opened afresh through /proc and never
     * mapped, which shmq_region_drop_lock can release in a child. OFD locks,
     * unlike classic POSIX locks, are not dropped when some other descriptor
     * of the same file is closed, and unlike flock they can cover one byte. */
    if (region->lock_fd < 0) {
        char path[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", region->fd);
        region->lock_fd = open(path, O_RDWR | O_CLOEXEC);
        if (region->lock_fd < 0)
            return errno == ENOENT ? -ENOTSUP : -errno; /* no /proc */
    }
    struct flock range = lock_range(F_WRLCK, offset);
    if (fcntl(region->lock_fd, F_OFD_SETLK, &range) == 0)
        return 0;
    return errno == EAGAIN || errno == EACCES ? -EBUSY : -errno;
}

int shmq_region_lock_held(const struct shmq_region *region, uint64_t offset)
{
    /* F_OFD_GETLK asks without taking anything, and works on a read-only
     * descriptor. Our own lock_fd is another description, so a lock this
     * process holds there is reported too. Asking as a reader (F_RDLCK)
     * reports write locks only: anyone who can read an object can take a
     * read lock on it, so a read lock must never count as a holder. */
    struct flock range = lock_range(F_RDLCK, offset);
    if (fcntl(region->fd, F_OFD_GETLK, &range) != 0)
        return -errno;
    return range.l_type != F_UNLCK;
}

int shmq_region_lock_held_in(const struct shmq_region *region, uint64_t offset, uint64_t length)
{
    /* As shmq_region_lock_held, over a range. */
    struct flock range = lock_range(F_RDLCK, offset);
    range.l_len = (off_t)length;
    if (fcntl(region->fd, F_OFD_GETLK, &range) != 0)
        return -errno;
    return range.l_type != F_UNLCK;
}

int shmq_region_lock_find(const struct shmq_region *region, uint64_t offset, uint64_t length,
                          uint64_t *start)
{
    uint64_t ignored;
    return shmq_region_lock_span(region, offset, length, start, &ignored);
}

int shmq_region_lock_span(const struct shmq_region *region, uint64_t offset, uint64_t length,
                          uint64_t *start, uint64_t *lock_length)
{
    struct flock range = lock_range(F_RDLCK, offset);
    range.l_len = (off_t)length;
    if (fcntl(region->fd, F_OFD_GETLK, &range) != 0)
        return -errno;
    if (range.l_type == F_UNLCK)
        return 0;
    *start = (uint64_t)range.l_start;
    *lock_length = (uint64_t)range.l_len;
    return 1;
}

void shmq_region_drop_lock(struct shmq_region *region)
{
    if (region->lock_fd >= 0)
        close(region->lock_fd);
    region->lock_fd = -1;
}

int shmq_region_make_writable(struct shmq_region *region, size_t offset, size_t length)
{
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || offset % (size_t)page || length % (size_t)page || offset > region->size ||
        length > region->size - offset)
        return -EINVAL;
    if (region->base == NULL)
        return -EINVAL;
    if (mprotect((char *)region->base + offset, length, PROT_READ | PROT_WRITE) != 0)
        return -errno;
    return 0;
}

void shmq_region_detach_writes(struct shmq_region *region)
{
    if (region->base == NULL)
        return;
    /* Same address, same contents, but copy-on-write: stores through it no
     * longer reach the object. Read-only if even that fails. */
    if (mmap(region->base, region->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED,
             region->fd, 0) == MAP_FAILED)
        mprotect(region->base, region->size, PROT_READ);
}

void *shmq_region_base(const struct shmq_region *region) { return region->base; }
size_t shmq_region_size(const struct shmq_region *region) { return region->size; }
int shmq_region_fd(const struct shmq_region *region) { return region->fd; }

int shmq_region_stat(const struct shmq_region *region, struct stat *st)
{
    return fstat(region->fd, st) == 0 ? 0 : -errno;
}

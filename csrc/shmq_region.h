/*
 * shmq_region: a named POSIX shared-memory object, reserved at creation and
 * mapped with mmap. Usable on its own; the ring (shmq.h) is built on it.
 *
 * Names. A name is 1..SHMQ_NAME_MAX characters from [A-Za-z0-9._-], starting
 * with a letter or digit (so never "." or ".."), with no '/'. The object in
 * /dev/shm is called "shmq-" followed by the name, so every shmq segment can be
 * listed with `ls /dev/shm/shmq-*`.
 *
 * Errors are negative errno values; shmq_strerror() (shmq.h) describes them.
 * Every function may be called from any thread; a region handle itself is not
 * synchronised, so one thread at a time may close it.
 */
#ifndef SHMQ_REGION_H
#define SHMQ_REGION_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHMQ_NAME_MAX 200
#define SHMQ_NAME_PREFIX "shmq-"

struct shmq_region;

/* Checks a name against the rules above.
 * Returns 0, -EINVAL (empty, bad character or bad first character) or
 * -ENAMETOOLONG. */
int shmq_name_validate(const char *name);

/* Creates a region of `size` bytes, exclusively: an existing object of that
 * name is never opened (-EEXIST). The permission bits are exactly `mode & 0777`
 * whatever the umask (0600 is the usual choice). The whole size is reserved
 * now, so a full /dev/shm fails here with -ENOSPC instead of killing the
 * process with SIGBUS later. The mapping is read-write. File descriptors are
 * close-on-exec.
 * Returns 0 and sets *out, or -EINVAL (bad name or size 0), -ENAMETOOLONG,
 * -EEXIST, -EACCES, -ENOSPC, -ENOMEM, -EMFILE. On failure nothing is left in
 * /dev/shm. */
int shmq_region_create(struct shmq_region **out, const char *name, size_t size, mode_t mode);

/* How shmq_region_open opens and maps. */
enum shmq_region_access {
    SHMQ_REGION_READ_ONLY = 0,   /* read-only descriptor, read-only mapping */
    SHMQ_REGION_READ_WRITE = 1,  /* read-write descriptor, read-write mapping */
    SHMQ_REGION_MOSTLY_READ = 2, /* read-write descriptor, read-only mapping whose
                                    pages can be opened up with
                                    shmq_region_make_writable */
    SHMQ_REGION_LOCKS = 3,       /* read-write descriptor, no mapping: an object
                                    used only for its locks, of any size */
};

/* Opens an existing region and maps all of it as `access` says; a write
 * through a read-only mapping faults. The size comes from fstat; an empty
 * object gives -ENODATA (except with SHMQ_REGION_LOCKS). It never follows a
 * symlink and never blocks: anything but a regular file under the name (a
 * FIFO, socket, directory or symlink someone planted) gives -EPROTO.
 * Returns 0 and sets *out, or -EINVAL, -ENAMETOOLONG, -ENOENT, -EACCES,
 * -EPROTO, -ENODATA, -ENOMEM, -EMFILE. */
int shmq_region_open(struct shmq_region **out, const char *name, enum shmq_region_access access);

/* Unmaps and closes. Accepts NULL. The object stays in /dev/shm. */
void shmq_region_close(struct shmq_region *region);

/* Removes the object from /dev/shm; mappings that exist stay valid.
 * Returns 0, -EINVAL, -ENAMETOOLONG, -ENOENT or -EACCES. */
int shmq_region_unlink(const char *name);

/* Returns 1 if an object with this name exists, 0 if not, or -EINVAL /
 * -ENAMETOOLONG for a bad name. */
int shmq_region_exists(const char *name);

/* Takes an exclusive lock on byte 0 of the object (an open-file-description
 * lock) that the kernel drops when this process closes the region or dies,
 * so a crashed holder never blocks anyone. The region must be read-write.
 * Returns 0, -EBUSY when another open region holds it, or -ENOTSUP when /proc
 * is not mounted (the lock needs a fresh open of the object through it). */
int shmq_region_lock(struct shmq_region *region);

/* The same on byte `offset`; locks on different bytes are independent, and
 * one region may hold several. */
int shmq_region_lock_byte(struct shmq_region *region, uint64_t offset);

/* Whether anyone (this process's own region included) holds a write lock,
 * as shmq_region_lock takes, on byte `offset`; takes nothing and works on
 * a read-only region. Read locks do not count: anyone who can read the
 * object can take one.
 * Returns 1, 0 or a negative errno. */
int shmq_region_lock_held(const struct shmq_region *region, uint64_t offset);

/* Releases every lock this region holds but keeps the mapping.
 * Async-signal-safe, so it may run in a child right after fork(), where it
 * leaves the locks to the parent alone. */
void shmq_region_drop_lock(struct shmq_region *region);

/* fstat of the object: owner, mode, size, and st_nlink == 0 once unlinked.
 * Returns 0 or a negative errno. */
int shmq_region_stat(const struct shmq_region *region, struct stat *st);

void *shmq_region_base(const struct shmq_region *region);
size_t shmq_region_size(const struct shmq_region *region);
/* The open file descriptor (owned by the region; do not close it). */
int shmq_region_fd(const struct shmq_region *region);

/* Makes [offset, offset+length) of a SHMQ_REGION_MOSTLY_READ mapping
 * writable. Both must be multiples of the page size and inside the region.
 * Returns 0, -EINVAL, or -EACCES (the descriptor is read-only). */
int shmq_region_make_writable(struct shmq_region *region, size_t offset, size_t length);

#ifdef __cplusplus
}
#endif

#endif

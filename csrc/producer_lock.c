/*
 * The producer lock: who holds a queue, and whether that one is alive.
 *
 * An OFD write lock on byte 0 of /dev/shm/shmq-NAME.producer, an empty file
 * of mode 0600 owned by the queue's owner. The kernel drops the lock when its
 * holder dies, so a crashed producer never blocks a new one. Only the owner
 * can open the file, so nobody else can take a lock on it, not even a read
 * lock: version 2 kept this lock on the ring, which every consumer can open,
 * and a consumer's read lock there both looked like a live producer and
 * blocked the next one (docs/consumer-state.md).
 *
 * Whoever can open the file asks with F_OFD_GETLK. Everybody else (a
 * consumer of another user) finds the lock in /proc/locks, by the file's
 * device and inode from stat(), which needs no permission on the file. A
 * consumer keeps the file open (or its inode) from its open on, so that it
 * asks about the producer of the ring it reads even after the queue was
 * unlinked, and never about another queue made under the name since.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "ring_internal.h"

#define PRODUCER_SUFFIX SHMQ_PRODUCER_SUFFIX

int shmq_producer_lock_take(struct shmq_region **slot, const char *name)
{
    struct shmq_region *lock;
    int rc = shmq_region_create_object(&lock, name, PRODUCER_SUFFIX, 0, 0600);
    if (rc == -EEXIST) {
        rc = shmq_region_open_object(&lock, name, PRODUCER_SUFFIX, SHMQ_REGION_LOCKS);
        if (rc == 0) {
            struct stat st;
            rc = shmq_region_stat(lock, &st);
            /* Another user's file under our name (planted), or one others
             * could open: not a lock only we can take. */
            if (rc == 0 && (st.st_uid != geteuid() || (st.st_mode & 0077) != 0))
                rc = -EPERM;
            if (rc < 0)
                shmq_region_close(lock);
        } else if (rc == -EPROTO || rc == -EACCES) {
            rc = -EPERM;
        }
    }
    if (rc < 0)
        return rc;
    /* Stored in the handle before the lock is taken, so that a child forked
     * meanwhile finds it and drops its copy (fork.c). */
    *slot = lock;
    rc = shmq_region_lock(lock);
    if (rc < 0) {
        *slot = NULL;
        shmq_region_close(lock);
    }
    return rc;
}

/* Looks for a write lock on byte 0 of (dev, ino) in /proc/locks. */
static int listed_in_proc_locks(dev_t dev, ino_t ino)
{
    FILE *f = fopen("/proc/locks", "re");
    if (f == NULL)
        return -errno;
    char line[256];
    int held = 0;
    while (!held && fgets(line, sizeof(line), f) != NULL) {
        /* "N: OFDLCK ADVISORY  WRITE -1 MAJ:MIN:INODE START END"; lines
         * starting "N: ->" are waiters, which sscanf rejects. */
        char kind[16], mode[16], access[16], pid[16], end[24];
        unsigned int major_no, minor_no;
        unsigned long long inode, start;
        if (sscanf(line, "%*d: %15s %15s %15s %15s %x:%x:%llu %llu %23s", kind, mode, access,
                   pid, &major_no, &minor_no, &inode, &start, end) != 9)
            continue;
        held = strcmp(access, "WRITE") == 0 && major_no == major(dev) &&
               minor_no == minor(dev) && inode == (unsigned long long)ino && start == 0;
    }
    fclose(f);
    return held;
}

int shmq_producer_watch_open(struct shmq_producer_watch *w, const char *name, uid_t owner)
{
    memset(w, 0, sizeof(*w));
    snprintf(w->name, sizeof(w->name), "%s", name);
    w->owner = owner;
    int rc = shmq_region_open_object(&w->lock, name, PRODUCER_SUFFIX, SHMQ_REGION_LOCKS);
    if (rc == 0) {
        struct stat st;
        rc = shmq_region_stat(w->lock, &st);
        if (rc == 0 && st.st_uid == owner)
            return 0;
        shmq_region_close(w->lock);
        w->lock = NULL;
        return rc < 0 ? rc : 0; /* not the owner's: nobody's producer */
    }
    if (rc != -EACCES)
        return rc == -ENOENT || rc == -EPROTO ? 0 : rc;
    /* Not ours to open: remember the file, to find its lock in /proc/locks. */
    char path[SHMQ_NAME_MAX + 64];
    snprintf(path, sizeof(path), "/dev/shm/" SHMQ_NAME_PREFIX "%s" PRODUCER_SUFFIX, name);
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == owner) {
        w->dev = st.st_dev;
        w->ino = st.st_ino;
        w->listed = 1;
    }
    return 0;
}

int shmq_producer_watch_alive(struct shmq_producer_watch *w)
{
    /* No lock file when we opened (a queue made by hand, or one whose file
     * was deleted): a producer that came since made one. */
    if (w->lock == NULL && !w->listed && w->name[0] != '\0') {
        char name[sizeof(w->name)];
        memcpy(name, w->name, sizeof(name));
        uid_t owner = w->owner;
        shmq_producer_watch_open(w, name, owner);
    }
    if (w->lock != NULL)
        return shmq_region_lock_held(w->lock, 0);
    if (w->listed)
        return listed_in_proc_locks(w->dev, w->ino);
    return 0;
}

void shmq_producer_watch_close(struct shmq_producer_watch *w)
{
    shmq_region_close(w->lock);
    memset(w, 0, sizeof(*w));
}

int shmq_producer_lock_held(const char *name, uid_t owner)
{
    struct shmq_producer_watch w;
    int rc = shmq_producer_watch_open(&w, name, owner);
    if (rc == 0)
        rc = shmq_producer_watch_alive(&w);
    shmq_producer_watch_close(&w);
    return rc;
}

int shmq_producer_lock_unlink(const char *name)
{
    return shmq_region_unlink_object(name, PRODUCER_SUFFIX);
}

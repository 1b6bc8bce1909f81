/*
 * The System V shared memory of a queue: the wake page and the consumer
 * entries. docs/consumer-state.md says why these live in System V memory and
 * not in /dev/shm: nobody can truncate a System V segment, so a consumer can
 * never make the producer fault. Both are marked for removal as soon as
 * their maker has mapped them, so the kernel frees them with the last
 * mapping and none is ever left behind.
 *
 * Every id read from a place another process could have written is checked
 * with IPC_STAT before it is used: the wake page's size, creator and owner
 * (the ring's owner), an entry's size, owner (the ring's owner) and mode
 * (nobody but its creator and owner may map it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#include "ring_internal.h"

/* ------------------------------------------------------------- segments */

int shmq_sysv_page_create(key_t key, mode_t mode, size_t size)
{
    int id = shmget(key, size, IPC_CREAT | IPC_EXCL | (int)(mode & 0777));
    return id < 0 ? -errno : id;
}

int shmq_sysv_page_stat(int id, struct shmid_ds *ds)
{
    if (id < 0)
        return -EBADMSG;
    if (shmctl(id, IPC_STAT, ds) != 0)
        return errno == EACCES ? -EACCES : -ENOENT;
    return 0;
}

int shmq_sysv_page_give(int id, uid_t owner)
{
    struct shmid_ds ds;
    if (shmctl(id, IPC_STAT, &ds) != 0)
        return -errno;
    if (ds.shm_perm.uid == owner)
        return 0;
    ds.shm_perm.uid = owner;
    return shmctl(id, IPC_SET, &ds) == 0 ? 0 : -errno;
}

void *shmq_sysv_page_attach(int id, int read_only)
{
    void *base = shmat(id, NULL, read_only ? SHM_RDONLY : 0);
    return base == (void *)-1 ? NULL : base;
}

void shmq_sysv_page_detach(void *base)
{
    if (base != NULL)
        shmdt(base);
}

void shmq_sysv_page_remove(int id)
{
    if (id >= 0)
        shmctl(id, IPC_RMID, NULL);
}


/*
 * shmq_inspect: a queue seen from outside, for tools (`shmq ls`, `shmq
 * stat`). It opens the ring as a consumer does (read-only, validated), takes
 * no entry and writes nothing; liveness comes from the kernel (the producer's
 * lock on NAME.producer, the entries' locks), never from pids.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "ring_internal.h"

int shmq_inspect(const char *name, struct shmq_queue_info *info, struct shmq_consumer_info *out,
                 size_t max)
{
    if (info == NULL || (out == NULL && max != 0))
        return -EINVAL;
    struct shmq_consumer_options options = {.start = SHMQ_START_LATEST, .no_entry = 1};
    struct shmq_consumer *c;
    int rc = shmq_consumer_open_with(&c, name, &options);
    if (rc < 0)
        return rc;
    struct stat st;
    rc = shmq_region_stat(c->region, &st);
    if (rc < 0)
        goto done;
    memset(info, 0, sizeof(*info));
    info->slot_size = c->geometry.slot_size;
    info->max_message_size = c->geometry.max_message;
    info->capacity = c->geometry.capacity;
    info->max_consumers = c->geometry.consumer_entries;
    info->lossless = c->geometry.lossless;
    info->first_sequence = c->geometry.first_sequence;
    /* Acquire: pairs with the producer's release store of head. */
    info->head = shmq_load_acquire(&c->control->head);
    rc = shmq_consumer_producer_alive(c);
    info->producer_alive = rc == 1;
    info->ended = shmq_consumer_ended(c);
    info->owner_uid = st.st_uid;
    info->mode = st.st_mode & 0777;
    info->ring_bytes = (uint64_t)st.st_size;
    info->state_bytes = c->consumers.wake != NULL ? c->geometry.page_size : 0;
    rc = 0;
    const struct shmq_consumer_state *cs = &c->consumers;
    for (uint32_t i = 0; cs->locks != NULL && i < cs->entry_count; i++) {
        if (shmq_consumers_entry_live(cs, i) != 1)
            continue;
        info->state_bytes += c->geometry.page_size;
        /* Listed even when its page is not ours to read (uid unknown), or
         * cannot be told (unclear). */
        struct shmq_consumer_info entry;
        shmq_consumers_snapshot(cs, i, &entry, info->head, &c->geometry);
        if ((size_t)rc < max)
            out[rc] = entry;
        rc++;
    }
done:
    shmq_consumer_close(c);
    return rc;
}

int shmq_inspect_groups(const char *name, struct shmq_group_info *out, size_t max)
{
    if (out == NULL && max != 0)
        return -EINVAL;
    struct shmq_consumer_options options = {.start = SHMQ_START_LATEST, .no_entry = 1};
    struct shmq_consumer *c;
    int rc = shmq_consumer_open_with(&c, name, &options);
    if (rc < 0)
        return rc;
    /* Acquire: pairs with the producer's release store of head. */
    uint64_t head = shmq_load_acquire(&c->control->head);
    const struct shmq_consumer_state *cs = &c->consumers;
    int n = 0;
    for (uint32_t g = 0; cs->locks != NULL && g < SHMQ_GROUPS_MAX && (size_t)n < max; g++) {
        if (shmq_consumers_group_live(cs, g) != 1)
            continue;
        n += shmq_consumers_group_snapshot(cs, g, out + n, max - (size_t)n, head, &c->geometry);
    }
    shmq_consumer_close(c);
    return n;
}

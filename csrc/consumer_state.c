/*
 * The consumer-state object, /dev/shm/shmq-NAME.consumers: the only memory
 * a consumer writes. Why it exists and how it is used is in
 * docs/consumer-state.md; its bytes are drawn in shmq_layout.h.
 *
 * The producer creates it next to the ring, tagged with the ring's random
 * instance number, and replaces it whenever it finds it missing, foreign,
 * malformed or from another incarnation of the ring. A consumer uses it only
 * if it passes the same checks, and maps it read-only except for the wake
 * page and, once claimed, its own entry. A consumer that cannot use it still
 * reads the ring; it just cannot ask to be woken (it sleeps in short slices)
 * and does not appear in the list of consumers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "ring_internal.h"

static uint64_t entry_offset(const struct shmq_consumer_state *s, uint32_t index)
{
    return (2 + (uint64_t)index) * s->page_size;
}

static uint64_t total_size_for(uint32_t entry_count, uint32_t page_size)
{
    return (2 + (uint64_t)entry_count) * page_size;
}

/* Whoever may read the ring may write the consumer state: consuming needs
 * both. */
static mode_t consumers_mode(mode_t ring_mode)
{
    return (ring_mode | ((ring_mode & 0444) >> 1)) & 0777;
}

static void point_into(struct shmq_consumer_state *s, uint32_t entry_count, uint32_t page_size)
{
    unsigned char *base = shmq_region_base(s->region);
    s->entry_count = entry_count;
    s->page_size = page_size;
    s->wake = (struct shmq_wake_page *)(base + page_size);
    s->entries = base + 2 * (size_t)page_size;
}

/* Reads the header once, checks it against the ring and the object's real
 * size; 0 or -EBADMSG (anything wrong means "not ours to trust"). */
static int read_header(const struct shmq_region *region, const struct shmq_geometry *g)
{
    size_t size = shmq_region_size(region);
    if (size < sizeof(struct shmq_consumers_header))
        return -EBADMSG;
    struct shmq_consumers_header *shared = shmq_region_base(region);
    /* Acquire: pairs with the release store of magic in create; seeing the
     * magic means seeing the fields stored before it. */
    if (shmq_load_acquire(&shared->magic) != SHMQ_CONSUMERS_MAGIC)
        return -EBADMSG;
    struct shmq_consumers_header copy;
    memcpy(&copy, shared, sizeof(copy));
    if (copy.version != SHMQ_LAYOUT_VERSION || copy.page_size != g->page_size ||
        copy.entry_count != g->consumer_entries || copy.ring_instance != g->instance ||
        copy.total_size != total_size_for(copy.entry_count, copy.page_size) ||
        copy.total_size != size)
        return -EBADMSG;
    return 0;
}

int shmq_consumers_create(struct shmq_consumer_state *s, const char *name,
                          const struct shmq_geometry *g, mode_t ring_mode)
{
    memset(s, 0, sizeof(*s));
    /* Whatever is there belongs to no live ring of ours: we hold the ring's
     * producer lock and are (re)creating its consumer state. */
    shmq_region_unlink_object(name, SHMQ_CONSUMERS_SUFFIX);
    uint64_t size = total_size_for(g->consumer_entries, g->page_size);
    int rc = shmq_region_create_object(&s->region, name, SHMQ_CONSUMERS_SUFFIX, (size_t)size,
                                       consumers_mode(ring_mode));
    if (rc < 0)
        return rc;
    struct shmq_consumers_header *h = shmq_region_base(s->region);
    h->version = SHMQ_LAYOUT_VERSION;
    h->entry_count = g->consumer_entries;
    h->page_size = g->page_size;
    h->ring_instance = g->instance;
    h->total_size = size;
    /* Release: pairs with the acquire load of magic in read_header. The rest
     * of the object is zero from posix_fallocate: no flag, free entries. */
    shmq_store_release(&h->magic, SHMQ_CONSUMERS_MAGIC);
    point_into(s, g->consumer_entries, g->page_size);
    return 0;
}

int shmq_consumers_attach_producer(struct shmq_consumer_state *s, const char *name,
                                   const struct shmq_geometry *g, mode_t ring_mode)
{
    memset(s, 0, sizeof(*s));
    int rc = shmq_region_open_object(&s->region, name, SHMQ_CONSUMERS_SUFFIX,
                                     SHMQ_REGION_READ_WRITE);
    if (rc == 0) {
        struct stat st;
        if (shmq_region_stat(s->region, &st) == 0 && st.st_uid == geteuid() &&
            (st.st_mode & 0777 & ~consumers_mode(ring_mode)) == 0 && read_header(s->region, g) == 0) {
            point_into(s, g->consumer_entries, g->page_size);
            return 0;
        }
        shmq_region_close(s->region);
        s->region = NULL;
    }
    return shmq_consumers_create(s, name, g, ring_mode);
}

int shmq_consumers_attach_consumer(struct shmq_consumer_state *s, const char *name,
                                   const struct shmq_geometry *g, uid_t ring_owner)
{
    memset(s, 0, sizeof(*s));
    int rc = shmq_region_open_object(&s->region, name, SHMQ_CONSUMERS_SUFFIX,
                                     SHMQ_REGION_MOSTLY_READ);
    if (rc < 0)
        return rc;
    struct stat st;
    rc = shmq_region_stat(s->region, &st);
    if (rc == 0 && st.st_uid != ring_owner)
        rc = -EPERM;
    if (rc == 0)
        rc = read_header(s->region, g);
    if (rc == 0)
        rc = shmq_region_make_writable(s->region, g->page_size, g->page_size);
    if (rc == 0) {
        point_into(s, g->consumer_entries, g->page_size);
        return 0;
    }
    shmq_region_close(s->region);
    s->region = NULL;
    return rc;
}

int shmq_consumers_claim(struct shmq_consumer_state *s, struct shmq_consumer_entry **entry)
{
    if (s->region == NULL)
        return -ENOENT;
    for (uint32_t i = 0; i < s->entry_count; i++) {
        uint64_t offset = entry_offset(s, i);
        int rc = shmq_region_lock_byte(s->region, offset);
        if (rc == -EBUSY)
            continue;
        if (rc < 0)
            return rc;
        rc = shmq_region_make_writable(s->region, (size_t)offset, s->page_size);
        if (rc < 0) {
            shmq_region_drop_lock(s->region);
            return rc;
        }
        *entry = (struct shmq_consumer_entry *)(shmq_region_base(s->region) + offset);
        return (int)i;
    }
    return -EUSERS;
}

struct shmq_consumer_entry *shmq_consumers_entry(const struct shmq_consumer_state *s, uint32_t index)
{
    return (struct shmq_consumer_entry *)(shmq_region_base(s->region) + entry_offset(s, index));
}

int shmq_consumers_entry_live(const struct shmq_consumer_state *s, uint32_t index)
{
    if (s->region == NULL || index >= s->entry_count)
        return -EINVAL;
    return shmq_region_lock_held(s->region, entry_offset(s, index));
}

void shmq_consumers_close(struct shmq_consumer_state *s)
{
    shmq_region_close(s->region);
    memset(s, 0, sizeof(*s));
}

int shmq_queue_name_validate(const char *name)
{
    int rc = shmq_name_validate(name);
    if (rc < 0)
        return rc;
    size_t n = strlen(name), suffix = sizeof(SHMQ_CONSUMERS_SUFFIX) - 1;
    if (n >= suffix && strcmp(name + n - suffix, SHMQ_CONSUMERS_SUFFIX) == 0)
        return -EINVAL;
    return 0;
}

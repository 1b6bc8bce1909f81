/*
 * Creating and validating a ring header.
 *
 * A header is initialised completely and only then made valid by storing the
 * magic with release ordering; an attacher loads the magic with acquire, so
 * seeing the magic means seeing every field. Fields are then read exactly once
 * into a private struct shmq_geometry and checked against each other and
 * against the real size of the segment, because a segment is untrusted input:
 * anyone with write access could have put anything there, and a field read
 * twice could change between the check and the use.
 */
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ring_internal.h"

/* Lines in the reserved cursor table: the consumer page minus its first line. */
static uint32_t cursor_entries_for(uint32_t page_size)
{
    return page_size / SHMQ_LINE - 1;
}

static uint32_t system_page_size(void)
{
    long page = sysconf(_SC_PAGESIZE);
    return page > 0 ? (uint32_t)page : 4096u;
}

/* Fills *g from the caller's wishes; -EINVAL for impossible geometry. */
int shmq_geometry_plan(struct shmq_geometry *g, const struct shmq_config *config)
{
    uint32_t slot_size = config && config->slot_size ? config->slot_size : SHMQ_DEFAULT_SLOT_SIZE;
    uint32_t capacity = config && config->capacity ? config->capacity : SHMQ_DEFAULT_CAPACITY;
    if (slot_size > SHMQ_SLOT_SIZE_MAX)
        return -EINVAL;
    if (capacity < 2 || capacity > SHMQ_CAPACITY_MAX || (capacity & (capacity - 1)) != 0)
        return -EINVAL;
    memset(g, 0, sizeof(*g));
    g->slot_size = slot_size;
    g->slot_stride = (uint32_t)shmq_slot_stride_for(slot_size);
    g->capacity = capacity;
    g->page_size = system_page_size();
    g->first_sequence = config ? config->first_sequence : 0;
    g->consumer_area_offset = g->page_size;
    g->slots_offset = 2 * (uint64_t)g->page_size;
    /* Both factors are bounded above (2^30 * ~2^26), so this cannot overflow. */
    g->total_size = g->slots_offset + (uint64_t)capacity * g->slot_stride;
    if (g->total_size > (uint64_t)SIZE_MAX)
        return -EINVAL;
    return 0;
}

void shmq_header_init(void *base, const struct shmq_geometry *g)
{
    struct shmq_control *control = base;
    unsigned char *slots = (unsigned char *)base + g->slots_offset;

    control->version = SHMQ_LAYOUT_VERSION;
    control->flags = 0;
    control->slot_size = g->slot_size;
    control->slot_stride = g->slot_stride;
    control->capacity = g->capacity;
    control->page_size = g->page_size;
    control->first_sequence = g->first_sequence;
    control->consumer_area_offset = g->consumer_area_offset;
    control->slots_offset = g->slots_offset;
    control->total_size = g->total_size;
    control->cursor_entries = cursor_entries_for(g->page_size);
    /* Relaxed: nobody can read these before the magic's release store below. */
    shmq_store_relaxed(&control->head, g->first_sequence);
    shmq_store_relaxed(&control->futex_word, (uint32_t)g->first_sequence);

    /* Each slot starts out stamped with the sequence it held "one lap before"
     * the first message, so a reader waiting for sequence s in that slot sees
     * stamp s - capacity, which compares as "not yet written". Zero would
     * compare as sequence 0, and be delivered as a message. */
    for (uint64_t i = 0; i < g->capacity; i++) {
        uint64_t sequence = g->first_sequence + i;
        struct shmq_slot *slot = shmq_slot_at(slots, g, sequence);
        /* Relaxed: published, like the fields above, by the magic's release. */
        shmq_store_relaxed(&slot->stamp, sequence - g->capacity);
        shmq_store_relaxed(&slot->length, 0);
    }

    /* Release: pairs with the acquire load of magic in shmq_header_read; every
     * store above is visible to whoever sees the magic. */
    shmq_store_release(&control->magic, SHMQ_MAGIC);
}

int shmq_header_read(const void *base, size_t mapped_size, struct shmq_geometry *g)
{
    if (mapped_size < sizeof(struct shmq_control))
        return -EBADMSG;
    const struct shmq_control *control = base;
    /* Acquire: pairs with the release store of magic in shmq_header_init. */
    uint64_t magic = shmq_load_acquire(&((struct shmq_control *)control)->magic);
    if (magic == 0)
        return -ENODATA;
    if (magic != SHMQ_MAGIC)
        return -EPROTO;
    uint32_t version = control->version;
    if (version != SHMQ_LAYOUT_VERSION)
        return -EPROTONOSUPPORT;

    uint32_t flags = control->flags;
    uint32_t cursor_entries = control->cursor_entries;
    g->slot_size = control->slot_size;
    g->slot_stride = control->slot_stride;
    g->capacity = control->capacity;
    g->page_size = control->page_size;
    g->first_sequence = control->first_sequence;
    g->consumer_area_offset = control->consumer_area_offset;
    g->slots_offset = control->slots_offset;
    g->total_size = control->total_size;

    /* From here on only the private copy is used. */
    if ((flags & ~SHMQ_KNOWN_FLAGS) != 0)
        return -EPROTONOSUPPORT;
    if (g->page_size != system_page_size())
        return -EBADMSG;
    if (g->slot_size > SHMQ_SLOT_SIZE_MAX || g->slot_stride != shmq_slot_stride_for(g->slot_size))
        return -EBADMSG;
    if (g->capacity < 2 || g->capacity > SHMQ_CAPACITY_MAX || (g->capacity & (g->capacity - 1)))
        return -EBADMSG;
    if (g->consumer_area_offset != g->page_size || g->slots_offset != 2 * (uint64_t)g->page_size)
        return -EBADMSG;
    if (cursor_entries != cursor_entries_for(g->page_size))
        return -EBADMSG;
    if (g->total_size != g->slots_offset + (uint64_t)g->capacity * g->slot_stride)
        return -EBADMSG;
    if (g->total_size != mapped_size)
        return -EBADMSG;
    return 0;
}

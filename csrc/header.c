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
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "ring_internal.h"

static uint32_t system_page_size(void)
{
    long page = sysconf(_SC_PAGESIZE);
    return page > 0 ? (uint32_t)page : 4096u;
}

/* A number that tells this incarnation of a ring from any other that had
 * its name, so a consumer-state object left from an earlier one is never
 * mistaken for this one's. */
static uint64_t new_instance(void)
{
    uint64_t instance = 0;
    if (getrandom(&instance, sizeof(instance), GRND_NONBLOCK) != (ssize_t)sizeof(instance)) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        instance = ((uint64_t)now.tv_sec << 30) ^ (uint64_t)now.tv_nsec ^ ((uint64_t)getpid() << 40);
    }
    return instance | 1; /* never 0, which reads as "unset" */
}

/* Spanning: the data area starts on the page after the index. Otherwise
 * each slot's payload follows its sequence's index record, one slot_stride
 * apart, as in layout 5. */
static uint64_t data_offset_for(const struct shmq_geometry *g)
{
    if (!g->spanning)
        return g->index_offset + SHMQ_RECORD_BYTES;
    uint64_t end = g->index_offset + (uint64_t)g->capacity * SHMQ_RECORD_BYTES;
    return (end + g->page_size - 1) / g->page_size * g->page_size;
}

static uint64_t total_size_for(const struct shmq_geometry *g)
{
    /* Both factors are bounded above (2^30 * ~2^26), so this cannot overflow. */
    uint64_t slots = (uint64_t)g->capacity * g->slot_stride;
    return g->spanning ? g->data_offset + slots : g->index_offset + slots;
}

/* The fields every side derives from the identity. */
static void derive(struct shmq_geometry *g)
{
    g->record_stride = g->spanning ? SHMQ_RECORD_BYTES : g->slot_stride;
    g->slot_payload = (uint32_t)shmq_slot_payload_for(g->slot_size);
}

/* Fills *g from the caller's wishes; -EINVAL for impossible geometry. */
int shmq_geometry_plan(struct shmq_geometry *g, const struct shmq_config *config)
{
    uint32_t slot_size = config && config->slot_size ? config->slot_size : SHMQ_DEFAULT_SLOT_SIZE;
    uint32_t capacity = config && config->capacity ? config->capacity : SHMQ_DEFAULT_CAPACITY;
    if (slot_size == 0 || slot_size > SHMQ_SLOT_SIZE_MAX)
        return -EINVAL;
    if (capacity < 2 || capacity > SHMQ_CAPACITY_MAX || (capacity & (capacity - 1)) != 0)
        return -EINVAL;
    memset(g, 0, sizeof(*g));
    g->slot_size = slot_size;
    g->capacity = capacity;
    g->page_size = system_page_size();
    g->first_sequence = config ? config->first_sequence : 0;
    g->consumer_entries = config && config->max_consumers ? config->max_consumers
                                                          : SHMQ_DEFAULT_MAX_CONSUMERS;
    if (g->consumer_entries > SHMQ_CONSUMER_ENTRIES_MAX)
        return -EINVAL;
    g->instance = new_instance();
    g->lossless = config && config->delivery == SHMQ_LOSSLESS;
    g->max_message = config && config->max_message_size ? config->max_message_size : slot_size;
    if (g->max_message > (uint64_t)slot_size * capacity || g->max_message > SHMQ_MESSAGE_SIZE_MAX)
        return -EINVAL;
    /* Messages of one slot keep their index record in front of the slot
     * (one cache line from stamp to payload); larger ones need the index
     * apart, so that a payload spans consecutive slots. */
    g->spanning = g->max_message > slot_size;
    g->slot_stride = (uint32_t)shmq_slot_stride_for(slot_size, g->spanning);
    derive(g);
    g->index_offset = g->page_size;
    g->data_offset = data_offset_for(g);
    g->total_size = total_size_for(g);
    if (g->total_size > SHMQ_SEGMENT_MAX || g->total_size > (uint64_t)SIZE_MAX)
        return -EFBIG;
    return 0;
}

void shmq_header_init(void *base, const struct shmq_geometry *g)
{
    struct shmq_control *control = base;
    unsigned char *index = (unsigned char *)base + g->index_offset;
    struct shmq_identity identity = {
        .magic = 0, /* stored last, by shmq_header_publish */
        .version = SHMQ_LAYOUT_VERSION,
        .flags = (g->lossless ? SHMQ_FLAG_LOSSLESS : 0) | (g->spanning ? SHMQ_FLAG_SPANNING : 0),
        .slot_size = g->slot_size,
        .slot_stride = g->slot_stride,
        .capacity = g->capacity,
        .page_size = g->page_size,
        .first_sequence = g->first_sequence,
        .index_offset = g->index_offset,
        .total_size = g->total_size,
        .instance = g->instance,
        .consumer_entries = g->consumer_entries,
        .data_offset = g->data_offset,
        .max_message = g->max_message,
    };
    memcpy(control->identity_rest, (const unsigned char *)&identity + 8, sizeof(identity) - 8);
    /* Relaxed: nobody can read these before the magic's release store in
     * shmq_header_publish. */
    shmq_store_relaxed(&control->head, g->first_sequence);
    shmq_store_relaxed(&control->tail, g->first_sequence);
    shmq_store_relaxed(&control->futex_word, (uint32_t)g->first_sequence);
    shmq_store_relaxed(&control->stream_state, 0);
    shmq_store_relaxed(&control->wake_shm, -1);

    /* Each record starts out marked "being written" for the sequence of
     * its first lap (s - 1 for sequence s), so a reader waiting for s sees
     * "not yet", and no record reads as a whole message of any sequence: a
     * stamp "one lap before" (s - capacity) would read as a message of
     * length 0 under that sequence to whoever looked for it, and zero as
     * message 0. (For the sequence a lap earlier, it is the mark of an
     * overwritten record: producer.c.) */
    for (uint64_t i = 0; i < g->capacity; i++) {
        uint64_t sequence = g->first_sequence + i;
        struct shmq_record *record = shmq_record_at(index, g, sequence);
        /* Relaxed: published, like the fields above, by the magic's release. */
        shmq_store_relaxed(&record->stamp, sequence - 1);
        shmq_store_relaxed(&record->length, 0);
        shmq_store_relaxed(&record->slot, (uint32_t)(sequence & (g->capacity - 1)));
    }
}

void shmq_header_publish(void *base)
{
    /* Release: pairs with the acquire load of magic in shmq_header_read; every
     * store of shmq_header_init is visible to whoever sees the magic. */
    shmq_store_release(&((struct shmq_control *)base)->magic, SHMQ_MAGIC);
}

int shmq_header_read(const void *base, size_t mapped_size, struct shmq_geometry *g)
{
    if (mapped_size < sizeof(struct shmq_control))
        return -EBADMSG;
    struct shmq_control *control = (struct shmq_control *)base;
    /* Acquire: pairs with the release store of magic in shmq_header_publish. */
    uint64_t magic = shmq_load_acquire(&control->magic);
    if (magic == 0)
        return -ENODATA;
    if (magic != SHMQ_MAGIC)
        return -EPROTO;
    /* One copy of the whole line; from here on only the copy is used, so a
     * writer changing the shared header under us cannot make a checked value
     * differ from the used one. */
    struct shmq_identity id;
    memcpy(&id, control, sizeof(id));
    if (id.version != SHMQ_LAYOUT_VERSION)
        return -EPROTONOSUPPORT;
    if ((id.flags & ~SHMQ_KNOWN_FLAGS) != 0)
        return -EPROTONOSUPPORT;

    memset(g, 0, sizeof(*g));
    g->slot_size = id.slot_size;
    g->slot_stride = id.slot_stride;
    g->capacity = id.capacity;
    g->page_size = id.page_size;
    g->first_sequence = id.first_sequence;
    g->index_offset = id.index_offset;
    g->data_offset = id.data_offset;
    g->max_message = id.max_message;
    g->total_size = id.total_size;
    g->instance = id.instance;
    g->consumer_entries = id.consumer_entries;
    g->lossless = (id.flags & SHMQ_FLAG_LOSSLESS) != 0;
    g->spanning = (id.flags & SHMQ_FLAG_SPANNING) != 0;

    if (g->page_size != system_page_size())
        return -EBADMSG;
    if (g->slot_size == 0 || g->slot_size > SHMQ_SLOT_SIZE_MAX ||
        g->slot_stride != shmq_slot_stride_for(g->slot_size, g->spanning))
        return -EBADMSG;
    derive(g);
    if (g->capacity < 2 || g->capacity > SHMQ_CAPACITY_MAX || (g->capacity & (g->capacity - 1)))
        return -EBADMSG;
    if (g->index_offset != g->page_size || g->data_offset != data_offset_for(g))
        return -EBADMSG;
    if (g->max_message > (uint64_t)g->slot_size * g->capacity ||
        g->max_message > SHMQ_MESSAGE_SIZE_MAX || (g->max_message > g->slot_size) != g->spanning)
        return -EBADMSG;
    if (g->consumer_entries > SHMQ_CONSUMER_ENTRIES_MAX || g->instance == 0 ||
        (g->lossless && g->consumer_entries == 0))
        return -EBADMSG;
    if (g->total_size != total_size_for(g))
        return -EBADMSG;
    if (g->total_size != mapped_size || g->total_size > SHMQ_SEGMENT_MAX)
        return -EBADMSG;
    return 0;
}

int64_t shmq_queue_size(const struct shmq_config *config)
{
    struct shmq_geometry g;
    int rc = shmq_geometry_plan(&g, config);
    return rc < 0 ? rc : (int64_t)g.total_size;
}

/*
 * The consumer state: what consumers write, and how the producer finds it.
 * docs/consumer-state.md has the design and its trust argument; the bytes are
 * drawn in shmq_layout.h. In short:
 *
 *   NAME.consumers  an empty file in /dev/shm; entry i is live exactly while
 *                   someone holds an OFD write lock on its byte i. Nobody
 *                   maps it, so truncating it harms nobody.
 *   wake page       System V, made by the producer, id in the ring's line 4,
 *                   writable by consumers, never truncatable.
 *   entry i         System V, made by the consumer holding lock byte i, mode
 *                   0600 plus the ring's read bits (whoever may read the ring
 *                   may read positions) and given to the ring's owner, its
 *                   id told by a second lock of that consumer's: only that
 *                   consumer writes it; the producer maps it read-only.
 *
 * A consumer that cannot use the consumer state still reads the ring (lossy
 * only): it cannot ask to be woken (it sleeps in short slices) and does not
 * appear in the list of consumers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ring_internal.h"

/* Whoever may read the ring may take a consumer entry: consuming needs both. */
static mode_t consumers_mode(mode_t ring_mode)
{
    return (ring_mode | ((ring_mode & 0444) >> 1)) & 0777;
}

static void state_init(struct shmq_consumer_state *s, const struct shmq_geometry *g, uid_t owner)
{
    memset(s, 0, sizeof(*s));
    s->wake_id = -1;
    s->own_id = -1;
    s->own_index = -1;
    s->entry_count = g->consumer_entries;
    s->page_size = g->page_size;
    s->instance = g->instance;
    s->ring_owner = owner;
}

/* ----------------------------------------------------------- the wake page */

/* Checks a wake page id read from the ring (untrusted: the ring may be stale,
 * the id reused by the kernel for another segment). */
static int wake_page_usable(int id, const struct shmq_consumer_state *s)
{
    struct shmid_ds ds;
    int rc = shmq_sysv_page_stat(id, &ds);
    if (rc < 0)
        return rc;
    if (ds.shm_segsz != s->page_size || ds.shm_perm.cuid != s->ring_owner ||
        ds.shm_perm.uid != s->ring_owner)
        return -EBADMSG;
    return 0;
}

static int wake_page_tagged(struct shmq_wake_page *wake, uint64_t instance)
{
    /* Relaxed: the tag was stored before the id's release store in the ring,
     * whose acquire load our caller made; any consumer may have rewritten it
     * since (the page is theirs to write), which makes it a hint that a
     * stale id was reused, never something trusted further. */
    return shmq_load_relaxed(&wake->magic) == SHMQ_WAKE_MAGIC &&
           shmq_load_relaxed(&wake->ring_instance) == instance;
}

/* Producer: attach the wake page the ring names, or make a new one. */
static int producer_wake_page(struct shmq_consumer_state *s, struct shmq_control *control,
                              mode_t ring_mode)
{
    /* Acquire: pairs with the release store of wake_shm below (an earlier
     * producer's); we hold the producer lock, so nobody stores it now. */
    int id = shmq_load_acquire(&control->wake_shm);
    if (wake_page_usable(id, s) == 0) {
        struct shmq_wake_page *wake = shmq_sysv_page_attach(id, 0);
        if (wake != NULL && wake_page_tagged(wake, s->instance)) {
            s->wake = wake;
            s->wake_id = id;
            return 0;
        }
        shmq_sysv_page_detach(wake);
    }
    id = shmq_sysv_page_create(IPC_PRIVATE, consumers_mode(ring_mode), s->page_size);
    if (id < 0)
        return id;
    struct shmq_wake_page *wake = shmq_sysv_page_attach(id, 0);
    /* Marked for removal at once: it lives while anyone is attached, and
     * can never be left behind. Linux lets consumers attach it meanwhile. */
    shmq_sysv_page_remove(id);
    if (wake == NULL)
        return -ENOMEM;
    /* Relaxed: published by the release store of wake_shm below. */
    shmq_store_relaxed(&wake->magic, SHMQ_WAKE_MAGIC);
    shmq_store_relaxed(&wake->ring_instance, s->instance);
    s->wake = wake;
    s->wake_id = id;
    /* Release: pairs with the acquire loads of wake_shm by consumers; whoever
     * reads the id sees the tag. */
    shmq_store_release(&control->wake_shm, id);
    return 0;
}

int shmq_consumers_attach_wake(struct shmq_consumer_state *s, const struct shmq_control *control)
{
    /* Acquire: pairs with the release store of wake_shm in
     * producer_wake_page. */
    int id = shmq_load_acquire(&((struct shmq_control *)control)->wake_shm);
    s->wake_tried = id;
    if (wake_page_usable(id, s) < 0)
        return -EBADMSG;
    struct shmq_wake_page *wake = shmq_sysv_page_attach(id, 0);
    if (wake == NULL)
        return -EACCES;
    if (!wake_page_tagged(wake, s->instance)) {
        shmq_sysv_page_detach(wake);
        return -EBADMSG;
    }
    s->wake = wake;
    s->wake_id = id;
    return 0;
}

/* ------------------------------------------------------------ the locks */

/* Producer: the lock file, kept when it is ours and sound, made when it is
 * missing. One that is not a regular file of ours with the right mode is
 * replaced; one we cannot replace (another user's, in sticky /dev/shm)
 * leaves the queue without entries. */
static int producer_locks(struct shmq_consumer_state *s, const char *name, mode_t ring_mode)
{
    mode_t mode = consumers_mode(ring_mode);
    int rc = shmq_region_open_object(&s->locks, name, SHMQ_CONSUMERS_SUFFIX, SHMQ_REGION_LOCKS);
    if (rc == 0) {
        struct stat st;
        if (shmq_region_stat(s->locks, &st) == 0 && st.st_uid == geteuid() &&
            (st.st_mode & 0777) == mode)
            return 0;
        shmq_region_close(s->locks);
        s->locks = NULL;
    } else if (rc != -ENOENT && rc != -EPROTO && rc != -EACCES) {
        return rc; /* EMFILE, ENOMEM...: leave what is there alone */
    }
    if (rc != -ENOENT)
        shmq_region_unlink_object(name, SHMQ_CONSUMERS_SUFFIX);
    rc = shmq_region_create_object(&s->locks, name, SHMQ_CONSUMERS_SUFFIX, 0, mode);
    if (rc == -EEXIST || rc == -EACCES || rc == -EPERM) {
        s->locks = NULL;
        return -EPERM; /* someone else's file holds the name */
    }
    return rc;
}

int shmq_consumers_entry_live(const struct shmq_consumer_state *s, uint32_t index)
{
    if (s->locks == NULL || index >= s->entry_count)
        return -EINVAL;
    return shmq_region_lock_held(s->locks, index);
}

/* Marks in live[] the bytes base + [from, to) that someone holds a lock on
 * (entries, or a group's members), asking the kernel about whole ranges and
 * splitting only those that hold a lock: about two questions per live one,
 * not one per byte. */
static void find_live(const struct shmq_consumer_state *s, uint64_t base, uint32_t from,
                      uint32_t to, unsigned char *live, int depth)
{
    if (from >= to)
        return;
    if (shmq_region_lock_held_in(s->locks, base + from, to - from) != 1)
        return;
    if (to - from == 1 || depth > 40) {
        live[from] = 1;
        return;
    }
    uint32_t middle = from + (to - from) / 2;
    find_live(s, base, from, middle, live, depth + 1);
    find_live(s, base, middle, to, live, depth + 1);
}

/* ------------------------------------------------------------- entries */

static uint64_t id_range(uint32_t index)
{
    return SHMQ_ENTRY_ID_BASE + (uint64_t)index * SHMQ_ENTRY_ID_SPAN;
}

/* The id of live entry `index`'s page, from the lock its holder keeps in
 * id_range(index): the id, -ENOENT (none yet: it is still claiming), or
 * -EBADMSG when the range holds more than one lock (another consumer
 * planted one; see shmq_backpressure_has_room for what that costs). */
static int entry_id(const struct shmq_consumer_state *s, uint32_t index)
{
    uint64_t from = id_range(index), start;
    if (shmq_region_lock_find(s->locks, from, SHMQ_ENTRY_ID_SPAN, &start) != 1)
        return -ENOENT;
    /* A lock that begins before the range covers it: planted, not told. */
    if (start < from)
        return -EBADMSG;
    uint64_t id = start - from, after = SHMQ_ENTRY_ID_SPAN - id - 1;
    /* Only non-empty ranges are asked about: a length of 0 means "to the
     * end of the file" to the kernel. */
    if ((id > 0 && shmq_region_lock_held_in(s->locks, from, id) != 0) ||
        (after > 0 && shmq_region_lock_held_in(s->locks, start + 1, after) != 0))
        return -EBADMSG;
    return (int)id;
}

static void drop_view(struct shmq_entry_view *v)
{
    shmq_sysv_page_detach(v->entry);
    v->entry = NULL;
    v->shm_id = -1;
    if (v->sender >= 0)
        close(v->sender);
    v->sender = -1;
}

/* Attaches entry page `id` read-only if it is sound: one page, the ring
 * owner's (given to it by its creator, or made by it), writable by nobody
 * else. Its contents are the consumer's and are validated where they are
 * used. */
static int attach_entry(const struct shmq_consumer_state *s, int id,
                        struct shmq_consumer_entry **entry, uid_t *creator)
{
    struct shmid_ds ds;
    int rc = shmq_sysv_page_stat(id, &ds);
    if (rc < 0)
        return rc;
    if (ds.shm_segsz != s->page_size || ds.shm_perm.uid != s->ring_owner ||
        (ds.shm_perm.mode & 0022) != 0)
        return -EBADMSG;
    *creator = ds.shm_perm.cuid;
    *entry = shmq_sysv_page_attach(id, 1);
    return *entry == NULL ? -EACCES : 0;
}

/* Brings view i up to date with what the kernel tells (live: whether lock
 * byte i is held). */
static void refresh_view(struct shmq_consumer_state *s, uint32_t i, int live)
{
    struct shmq_entry_view *v = &s->views[i];
    int id = live ? entry_id(s, i) : -ENOENT;
    v->unclear = id == -EBADMSG;
    if (id >= 0 && id == v->shm_id)
        return;
    if (v->entry != NULL)
        drop_view(v);
    struct shmq_consumer_entry *entry;
    uid_t creator;
    if (id >= 0 && attach_entry(s, id, &entry, &creator) == 0) {
        v->entry = entry;
        v->shm_id = id;
    }
}

void shmq_consumers_discover(struct shmq_consumer_state *s)
{
    if (s->locks == NULL)
        return;
    unsigned char live[SHMQ_CONSUMER_ENTRIES_MAX] = {0};
    find_live(s, 0, 0, s->entry_count, live, 0);
    for (uint32_t i = 0; i < s->entry_count; i++)
        refresh_view(s, i, live[i]);
    shmq_consumers_discover_groups(s);
}

void shmq_consumers_discover_one(struct shmq_consumer_state *s, uint32_t index)
{
    if (s->locks == NULL || s->views == NULL || index >= s->entry_count)
        return;
    refresh_view(s, index, shmq_region_lock_held(s->locks, index) == 1);
}

void shmq_consumers_forget(struct shmq_consumer_state *s, uint32_t index)
{
    if (s->views != NULL && index < s->entry_count) {
        s->views[index].unclear = 0;
        if (s->views[index].entry != NULL)
            drop_view(&s->views[index]);
    }
}

/* ------------------------------------------------------------- groups */

/* The ids that 1-byte locks in [lo, hi) tell (relative to `from`), adding
 * to ids[*n] up to max; -EBADMSG when there are more locks than that. The
 * kernel reports *a* conflicting lock, not the lowest, so the ranges on both
 * sides of each lock it reports are searched: `budget` bounds the questions. */
static int scan_ids(const struct shmq_consumer_state *s, uint64_t from, uint64_t lo, uint64_t hi,
                    int *ids, int *n, int max, int *budget)
{
    if (lo >= hi)
        return 0;
    if (--*budget < 0)
        return -EBADMSG;
    uint64_t start, length;
    int rc = shmq_region_lock_span(s->locks, lo, hi - lo, &start, &length);
    if (rc != 1)
        return rc < 0 ? rc : 0;
    uint64_t end = length == 0 || start + length > hi ? hi : start + length;
    if (start < lo)
        start = lo; /* a lock reaching in from below: nothing under it */
    else if (length == 1) {
        if (*n == max)
            return -EBADMSG;
        ids[(*n)++] = (int)(start - from);
    }
    rc = scan_ids(s, from, lo, start, ids, n, max, budget);
    return rc < 0 ? rc : scan_ids(s, from, end, hi, ids, n, max, budget);
}

/* Every id that 1-byte locks in [from, from + SHMQ_ENTRY_ID_SPAN) tell, at
 * most max: how many, or -EBADMSG when there are more. A member tells its
 * group page's id with one such lock; anyone who can lock bytes of the file
 * can add more (and wider ones, which tell nothing), so each is only a
 * candidate, validated where it is used. */
static int told_ids(const struct shmq_consumer_state *s, uint64_t from, int *ids, int max)
{
    int n = 0, budget = 4 * max + 8;
    int rc = scan_ids(s, from, from, from + SHMQ_ENTRY_ID_SPAN, ids, &n, max, &budget);
    return rc < 0 ? rc : n;
}

int shmq_consumers_group_live(const struct shmq_consumer_state *s, uint32_t group)
{
    if (s->locks == NULL || group >= SHMQ_GROUPS_MAX)
        return -EINVAL;
    return shmq_region_lock_held_in(s->locks, shmq_group_member_byte(group, 0),
                                    SHMQ_GROUP_MEMBERS_MAX);
}

/* Marks in live[] the member bytes of `group` that are locked. */
static void find_live_members(const struct shmq_consumer_state *s, uint32_t group,
                              unsigned char *live)
{
    find_live(s, shmq_group_member_byte(group, 0), 0, SHMQ_GROUP_MEMBERS_MAX, live, 0);
}

int shmq_consumers_group_ids(const struct shmq_consumer_state *s, uint32_t group, int *ids,
                             int max)
{
    if (s->locks == NULL || group >= SHMQ_GROUPS_MAX)
        return -EINVAL;
    unsigned char live[SHMQ_GROUP_MEMBERS_MAX] = {0};
    find_live_members(s, group, live);
    int n = 0;
    int told[SHMQ_GROUP_IDS_MAX];
    if (max > (int)SHMQ_GROUP_IDS_MAX)
        max = (int)SHMQ_GROUP_IDS_MAX;
    for (uint32_t m = 0; m < SHMQ_GROUP_MEMBERS_MAX; m++) {
        if (!live[m])
            continue;
        int k = told_ids(s, shmq_group_id_byte(group, m), told, max);
        if (k < 0)
            return k;
        for (int i = 0; i < k; i++) {
            int seen = 0;
            for (int j = 0; j < n && !seen; j++)
                seen = ids[j] == told[i];
            if (seen)
                continue;
            if (n == max)
                return -EBADMSG;
            ids[n++] = told[i];
        }
    }
    return n;
}

struct shmq_group_page *shmq_consumers_group_attach(const struct shmq_consumer_state *s, int id,
                                                    int read_only, uid_t *creator)
{
    struct shmid_ds ds;
    if (shmq_sysv_page_stat(id, &ds) < 0)
        return NULL;
    /* The ring owner's (given to it by its maker), writable by nobody else. */
    if (ds.shm_segsz != shmq_group_page_bytes(s->page_size) || ds.shm_perm.uid != s->ring_owner ||
        (ds.shm_perm.mode & 0022) != 0)
        return NULL;
    if (creator != NULL)
        *creator = ds.shm_perm.cuid;
    struct shmq_group_page *page = shmq_sysv_page_attach(id, read_only);
    if (page == NULL)
        return NULL;
    /* Relaxed: a hint that the id names a page of this ring's groups; its
     * members may write anything, and what is read from it is clamped. */
    if (shmq_load_relaxed(&page->magic) != SHMQ_GROUP_MAGIC ||
        shmq_load_relaxed(&page->ring_instance) != s->instance) {
        shmq_sysv_page_detach(page);
        return NULL;
    }
    return page;
}

void shmq_consumers_forget_group(struct shmq_consumer_state *s, uint32_t group)
{
    struct shmq_group_view *v = &s->groups[group];
    for (int k = 0; k < v->count; k++)
        shmq_sysv_page_detach(v->page[k]);
    memset(v, 0, sizeof(*v));
}

/* Brings group view g up to date with the pages its members tell. */
static void refresh_group(struct shmq_consumer_state *s, uint32_t g)
{
    struct shmq_group_view *v = &s->groups[g];
    int ids[SHMQ_GROUP_PAGES];
    int n = shmq_consumers_group_live(s, g) == 1 ? shmq_consumers_group_ids(s, g, ids,
                                                                             SHMQ_GROUP_PAGES)
                                                 : 0;
    if (n < 0) {
        /* More pages told than we keep: someone is planting locks. Waited
         * for as a reader a lap behind, never overwritten past. */
        shmq_consumers_forget_group(s, g);
        v->unclear = 1;
        return;
    }
    struct shmq_group_view next = {0};
    for (int i = 0; i < n; i++) {
        struct shmq_group_page *page = NULL;
        for (int k = 0; k < v->count && page == NULL; k++) {
            if (v->shm_id[k] == ids[i]) {
                page = v->page[k];
                v->page[k] = NULL; /* moved */
            }
        }
        /* A page that is no sound group page of this ring holds nobody: no
         * member of ours could use it. */
        if (page == NULL)
            page = shmq_consumers_group_attach(s, ids[i], 1, NULL);
        if (page != NULL) {
            next.shm_id[next.count] = ids[i];
            next.page[next.count++] = page;
        }
    }
    shmq_consumers_forget_group(s, g);
    *v = next;
}

void shmq_consumers_discover_groups(struct shmq_consumer_state *s)
{
    if (s->locks == NULL)
        return;
    int any = shmq_region_lock_held_in(s->locks, shmq_group_member_byte(0, 0),
                                       SHMQ_GROUPS_MAX * SHMQ_GROUP_MEMBERS_MAX) == 1;
    for (uint32_t g = 0; g < SHMQ_GROUPS_MAX; g++) {
        if (any)
            refresh_group(s, g);
        else if (s->groups[g].count != 0 || s->groups[g].unclear)
            shmq_consumers_forget_group(s, g);
    }
}

int shmq_consumers_group_snapshot(const struct shmq_consumer_state *s, uint32_t group,
                                  struct shmq_group_info *info, size_t max, uint64_t head,
                                  const struct shmq_geometry *g)
{
    unsigned char live[SHMQ_GROUP_MEMBERS_MAX] = {0};
    find_live_members(s, group, live);
    int ids[SHMQ_GROUP_PAGES];
    int n = shmq_consumers_group_ids(s, group, ids, SHMQ_GROUP_PAGES);
    if (n < 0) {
        if (max == 0)
            return 1;
        memset(info, 0, sizeof(*info));
        info->unclear = 1;
        info->lag = g->capacity;
        info->uid = (uid_t)-1;
        for (uint32_t m = 0; m < SHMQ_GROUP_MEMBERS_MAX; m++)
            info->members += live[m];
        return 1;
    }
    int found = 0;
    for (int i = 0; i < n && (size_t)found < max; i++) {
        uid_t creator;
        struct shmq_group_page *page = shmq_consumers_group_attach(s, ids[i], 1, &creator);
        /* Listed once, in the number it was made in (planted locks may
         * tell it from others too). Relaxed: a snapshot. */
        if (page != NULL && shmq_load_relaxed(&page->number) != group) {
            shmq_sysv_page_detach(page);
            page = NULL;
        }
        if (page == NULL)
            continue;
        struct shmq_group_info *out = &info[found++];
        memset(out, 0, sizeof(*out));
        out->uid = creator;
        /* The members that tell this page. */
        for (uint32_t m = 0; m < SHMQ_GROUP_MEMBERS_MAX; m++) {
            int told[SHMQ_GROUP_PAGES];
            int k = live[m] ? told_ids(s, shmq_group_id_byte(group, m), told, SHMQ_GROUP_PAGES) : 0;
            for (int j = 0; j < k; j++)
                if (told[j] == ids[i]) {
                    out->members++;
                    break;
                }
        }
        /* Relaxed: a snapshot for display; nothing is decided on it. */
        for (size_t w = 0; w < SHMQ_GROUP_NAME_MAX / 8; w++) {
            uint64_t word = shmq_load_relaxed(&page->name[w]);
            memcpy(out->name + w * 8, &word, 8);
        }
        out->name[SHMQ_GROUP_NAME_MAX] = '\0';
        out->position = shmq_load_relaxed(&page->cursor);
        out->lost = shmq_load_relaxed(&page->lost);
        uint64_t lag = head - out->position;
        out->lag = (int64_t)lag < 0 ? 0 : lag;
        for (uint32_t m = 0; m < SHMQ_GROUP_MEMBERS_MAX; m++) {
            struct shmq_group_member *slot = &page->members[m];
            if (shmq_load_relaxed(&slot->token) != 0) {
                uint64_t claimed = shmq_load_relaxed(&slot->claim_to) -
                                   shmq_load_relaxed(&slot->claim_from);
                out->claimed += claimed <= g->capacity ? claimed : 0;
            }
        }
        shmq_sysv_page_detach(page);
    }
    return found;
}

int shmq_consumers_producer_open(struct shmq_consumer_state *s, const char *name,
                                 const struct shmq_geometry *g, struct shmq_control *control,
                                 mode_t ring_mode)
{
    state_init(s, g, geteuid());
    int rc = producer_locks(s, name, ring_mode);
    if (rc == -EPERM && !g->lossless)
        rc = 0; /* lossy: consumers read without entries */
    if (rc < 0)
        goto fail;
    rc = producer_wake_page(s, control, ring_mode);
    if (rc < 0)
        goto fail;
    s->views = calloc(s->entry_count ? s->entry_count : 1, sizeof(*s->views));
    if (s->views == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    for (uint32_t i = 0; i < s->entry_count; i++)
        s->views[i].shm_id = s->views[i].sender = -1;
    return 0;
fail:
    shmq_consumers_close(s);
    return rc;
}

int shmq_consumers_consumer_open(struct shmq_consumer_state *s, const char *name,
                                 const struct shmq_geometry *g, const struct shmq_control *control,
                                 uid_t ring_owner, mode_t ring_mode)
{
    state_init(s, g, ring_owner);
    s->ring_mode = ring_mode & 0777;
    /* Without the wake page a consumer still reads, sleeping in short slices. */
    shmq_consumers_attach_wake(s, control);
    int rc = shmq_region_open_object(&s->locks, name, SHMQ_CONSUMERS_SUFFIX, SHMQ_REGION_LOCKS);
    if (rc == 0) {
        struct stat st;
        rc = shmq_region_stat(s->locks, &st);
        if (rc == 0 && st.st_uid != ring_owner)
            rc = -EPERM;
        if (rc < 0) {
            shmq_region_close(s->locks);
            s->locks = NULL;
        }
    }
    return rc;
}

/* Makes the page of entry `index` (whose lock byte we hold), tells its id
 * with a second lock, and maps it: 0, or a negative errno with nothing
 * left behind. */
static int make_entry(struct shmq_consumer_state *s, uint32_t index)
{
    /* Writable by its maker (creator) and, once given, the ring's owner;
     * readable by whoever may read the ring, as positions are nothing the
     * messages themselves do not tell. */
    int id = shmq_sysv_page_create(IPC_PRIVATE, 0600 | (s->ring_mode & 0044), s->page_size);
    if (id < 0)
        return id;
    struct shmq_consumer_entry *own = shmq_sysv_page_attach(id, 0);
    int rc = own == NULL ? -ENOMEM : shmq_sysv_page_give(id, s->ring_owner);
    /* Marked for removal once mapped: it goes with our last mapping, and
     * the producer's, never left behind. */
    shmq_sysv_page_remove(id);
    if (rc == 0) {
        /* Plain stores: informational, and published by the id lock below
         * (a syscall) like the rest of the page. */
        own->ring_instance = s->instance;
        own->index = index;
        rc = shmq_region_lock_byte(s->locks, id_range(index) + (uint64_t)id);
    }
    if (rc < 0) {
        shmq_sysv_page_detach(own);
        return rc == -EBUSY ? -EUSERS : rc;
    }
    s->own = own;
    s->own_id = id;
    s->own_index = (int)index;
    return 0;
}

int shmq_consumers_claim(struct shmq_consumer_state *s, struct shmq_consumer_entry **entry)
{
    if (s->locks == NULL)
        return -ENOENT;
    for (uint32_t i = 0; i < s->entry_count; i++) {
        int rc = shmq_region_lock_byte(s->locks, i);
        if (rc == -EBUSY)
            continue;
        if (rc < 0)
            return rc;
        rc = make_entry(s, i);
        if (rc < 0) {
            shmq_region_unlock_byte(s->locks, i);
            if (rc == -EUSERS)
                continue; /* someone planted a lock on our id: take another */
            return rc;
        }
        *entry = s->own;
        return (int)i;
    }
    return -EUSERS;
}

void shmq_consumers_release(struct shmq_consumer_state *s)
{
    /* The id lock goes before the byte's: while the byte is locked, the id
     * it names is ours. Dropping the lock description releases the byte. A
     * producer that mapped our page keeps its mapping until it notices. */
    if (s->own != NULL && s->locks != NULL && !s->forked)
        shmq_region_unlock_byte(s->locks, id_range((uint32_t)s->own_index) + (uint64_t)s->own_id);
    if (s->locks != NULL)
        shmq_region_drop_lock(s->locks);
}

void shmq_consumers_close(struct shmq_consumer_state *s)
{
    shmq_consumers_release(s);
    shmq_sysv_page_detach(s->own);
    if (s->views != NULL) {
        for (uint32_t i = 0; i < s->entry_count; i++)
            if (s->views[i].entry != NULL)
                drop_view(&s->views[i]);
        free(s->views);
    }
    for (uint32_t g = 0; g < SHMQ_GROUPS_MAX; g++)
        shmq_consumers_forget_group(s, g);
    shmq_sysv_page_detach(s->wake);
    shmq_region_close(s->locks);
    memset(s, 0, sizeof(*s));
    s->wake_id = -1;
    s->own_id = -1;
    s->own_index = -1;
}

void shmq_consumers_in_child(struct shmq_consumer_state *s)
{
    /* The locks stay the parent's (its description lives on in the parent);
     * the child never removes or unlocks the parent's entry. */
    s->forked = 1;
    if (s->locks != NULL)
        shmq_region_drop_lock(s->locks);
}

/* Copies live entry `index` for a listing, as the producer sees it: 0, or
 * -ENOENT when it has no page we may read (info then says what is known:
 * an entry whose page cannot be told, because someone planted a second id
 * lock, is one a lossless producer waits for as for a consumer a lap
 * behind, and is listed so). */
int shmq_consumers_snapshot(const struct shmq_consumer_state *s, uint32_t index,
                            struct shmq_consumer_info *info, uint64_t head,
                            const struct shmq_geometry *g)
{
    memset(info, 0, sizeof(*info));
    info->index = index;
    info->uid = (uid_t)-1;
    int id = entry_id(s, index);
    if (id == -EBADMSG) {
        info->unclear = 1;
        info->registered = g->lossless;
        info->position = head - g->first_sequence >= g->capacity ? head - g->capacity
                                                                  : g->first_sequence;
        info->lag = g->capacity;
        return -ENOENT;
    }
    struct shmq_consumer_entry *entry;
    uid_t creator;
    if (id < 0 || attach_entry(s, id, &entry, &creator) < 0)
        return -ENOENT;
    /* Relaxed: a snapshot for display; nothing is decided on it. */
    uint32_t state = shmq_load_relaxed(&entry->state);
    info->pid = shmq_load_relaxed(&entry->pid);
    info->registered = (state & SHMQ_ENTRY_REGISTERED) != 0;
    info->position = shmq_load_relaxed(&entry->position);
    info->lost = shmq_load_relaxed(&entry->lost);
    uint64_t lag = head - info->position;
    info->lag = (int64_t)lag < 0 ? 0 : lag;
    info->uid = creator;
    shmq_sysv_page_detach(entry);
    return 0;
}

int shmq_queue_name_validate(const char *name)
{
    int rc = shmq_name_validate(name);
    if (rc < 0)
        return rc;
    /* A queue's name must never be another queue's lock file, nor the
     * status file the Python bridge keeps beside a queue (NAME.bridge). */
    static const char *const ours[] = {SHMQ_CONSUMERS_SUFFIX, SHMQ_PRODUCER_SUFFIX, ".bridge"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++) {
        size_t suffix = strlen(ours[i]);
        if (n >= suffix && strcmp(name + n - suffix, ours[i]) == 0)
            return -EINVAL;
    }
    return 0;
}

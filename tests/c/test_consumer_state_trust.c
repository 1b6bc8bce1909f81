/*
 * Layout 3's promises about the consumer state and the producer lock
 * (docs/consumer-state.md), each tried as a hostile consumer would:
 *   - truncating, growing and writing the consumer-state file NAME.consumers
 *     (which a consumer must be able to open read-write) hurts nobody: the
 *     producer keeps publishing (no SIGBUS: nobody maps that file) and a
 *     lossless producer still waits for the registered consumers;
 *   - read locks on every byte of the ring and of every file of the queue
 *     neither fake a producer nor block one: producer_alive stays false, a
 *     new producer opens, a plain unlink is not refused;
 *   - a planted second id lock for a registered consumer's entry can stall
 *     a lossless producer (as a hung consumer can), never make it
 *     overwrite what that consumer has not read;
 *   - a consumer of another user can neither map another consumer's entry
 *     writable nor open the producer lock, and still learns whether the
 *     producer lives and what the other consumers do (root only; skipped
 *     otherwise);
 *   - a producer restart that fails for want of descriptors (EMFILE) says
 *     so and leaves the queue as it was: its registered consumer stays
 *     registered, and the next producer loses it nothing;
 *   - a thread that forks while another opens and closes producers never
 *     leaves a lock to the child: once the parent closed, a new producer
 *     opens while the child still lives;
 *   - the queue's whole footprint: in a private 256 KiB /dev/shm (root
 *     only), a 16 x 1 KiB queue works with two consumers.
 */
#define _GNU_SOURCE
#include <grp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/shm.h>

#include "adversary.h"

static int open_file(const char *name, const char *suffix, int flags)
{
    char path[512];
    snprintf(path, sizeof(path), "/dev/shm/shmq-%s%s", name, suffix);
    return open(path, flags | O_CLOEXEC);
}

static int lock_range_of(int fd, short type, off_t start, off_t len)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    return fcntl(fd, F_OFD_SETLK, &fl);
}

static void publish_n(struct shmq_producer *p, int n)
{
    for (int i = 0; i < n; i++) {
        uint64_t v = shmq_producer_next_sequence(p);
        CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), 0);
    }
}

static void truncating_the_consumer_state_file_hurts_nobody(void)
{
    const char *name = test_name("trunc");
    struct shmq_config config = {.slot_size = 8, .capacity = 64, .delivery = SHMQ_LOSSLESS};
    struct shmq_producer *p;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    struct shmq_consumer *reader;
    CHECK_RC(shmq_consumer_open(&reader, name, SHMQ_START_LATEST), 0);
    CHECK(shmq_consumer_registered(reader) == 1);
    pid_t kid = fork_child();
    if (kid == 0) {
        struct shmq_consumer *c;
        if (shmq_consumer_open(&c, name, SHMQ_START_LATEST) != 0)
            _exit(2);
        int fd = open_file(name, ".consumers", O_RDWR);
        if (fd < 0)
            _exit(3);
        char junk[4096];
        memset(junk, 0xA5, sizeof(junk));
        for (int i = 0; i < 200; i++) {
            if (ftruncate(fd, i % 2 ? 0 : (off_t)1 << 30) != 0 ||
                pwrite(fd, junk, sizeof(junk), 4096 * (i % 4)) != (ssize_t)sizeof(junk))
                _exit(4);
        }
        _exit(ftruncate(fd, 0) == 0 ? 0 : 5);
    }
    CHECK(wait_child(kid) == 0);
    /* The producer publishes on, and still waits for the registered reader:
     * 64 fit, the 65th does not until the reader reads. */
    publish_n(p, 64);
    uint64_t v = 0;
    CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), SHMQ_FULL);
    for (uint64_t i = 0; i < 64; i++) {
        CHECK_RC(shmq_consumer_poll(reader, &v, sizeof(v), NULL), 0);
        CHECK(v == i);
    }
    CHECK_RC(shmq_producer_publish_wait(p, &v, sizeof(v), NULL, 1000000000LL), 0);
    CHECK(shmq_consumer_lost(reader) == 0);
    printf("consumer-state file truncated, grown and overwritten 200 times: producer unharmed\n");
    shmq_consumer_close(reader);
    shmq_producer_close(p);
}

static void read_locks_neither_fake_nor_block_a_producer(void)
{
    const char *name = test_name("rdlock");
    struct shmq_producer *p = make_producer(name, 8, 64, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    CHECK(shmq_consumer_producer_alive(c) == 1);
    shmq_producer_close(p);
    CHECK(shmq_consumer_producer_alive(c) == 0);
    /* A reader read-locks every byte of every file of the queue it can open. */
    int ring = open_file(name, "", O_RDONLY);
    int state = open_file(name, ".consumers", O_RDONLY);
    int lock = open_file(name, ".producer", O_RDONLY); /* the owner's own process can */
    CHECK(ring >= 0 && state >= 0 && lock >= 0);
    CHECK(lock_range_of(ring, F_RDLCK, 0, 0) == 0);
    CHECK(lock_range_of(state, F_RDLCK, 100, (off_t)SHMQ_ENTRY_ID_BASE - 100) == 0);
    CHECK(shmq_consumer_producer_alive(c) == 0);
    CHECK_RC(shmq_producer_open(&p, name, NULL, 0), 0);
    CHECK(shmq_consumer_producer_alive(c) == 1);
    shmq_producer_close(p);
    CHECK_RC(shmq_unlink(name, 0), 0);
    close(ring), close(state), close(lock);
    shmq_consumer_close(c);
    printf("read locks on the ring and the consumer state: no fake producer, none blocked\n");
}

static void a_planted_id_lock_stalls_but_never_overwrites(void)
{
    const char *name = test_name("plant");
    struct shmq_config config = {.slot_size = 8, .capacity = 16, .delivery = SHMQ_LOSSLESS};
    struct shmq_producer *p;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    struct shmq_consumer *victim;
    CHECK_RC(shmq_consumer_open(&victim, name, SHMQ_START_LATEST), 0);
    int index = shmq_consumer_entry(victim);
    CHECK(index >= 0);
    publish_n(p, 16);
    int fd = open_file(name, ".consumers", O_RDWR);
    CHECK(fd >= 0);
    /* Another page id, planted in the victim's id range. */
    off_t base = (off_t)(SHMQ_ENTRY_ID_BASE + (uint64_t)index * SHMQ_ENTRY_ID_SPAN);
    CHECK(lock_range_of(fd, F_WRLCK, base + victim->consumers.own_id + 1, 1) == 0);
    uint64_t v = 99;
    CHECK_RC(shmq_producer_publish_wait(p, &v, sizeof(v), NULL, 50 * 1000000LL), -ETIMEDOUT);
    /* The listing says who the producer waits for, as it waits for it. */
    struct shmq_consumer_info info;
    CHECK(shmq_producer_consumers(p, &info, 1) == 1);
    CHECK(info.index == (uint32_t)index && info.unclear && info.registered && info.lag == 16);
    struct shmq_queue_info q;
    struct shmq_consumer_info seen;
    CHECK(shmq_inspect(name, &q, &seen, 1) == 1 && seen.unclear && seen.registered);
    for (uint64_t i = 0; i < 16; i++) {
        CHECK_RC(shmq_consumer_poll(victim, &v, sizeof(v), NULL), 0);
        CHECK(v == i);
    }
    CHECK(shmq_consumer_lost(victim) == 0);
    close(fd); /* the plant goes with its description */
    CHECK_RC(shmq_producer_publish_wait(p, &v, sizeof(v), NULL, 1000000000LL), 0);
    printf("a planted id lock: the lossless producer waited, the victim lost nothing\n");
    shmq_consumer_close(victim);
    shmq_producer_close(p);
}

static void another_user_cannot_map_an_entry(void)
{
    if (geteuid() != 0) {
        printf("another user: skipped (needs root to become nobody)\n");
        return;
    }
    const char *name = test_name("nobody");
    struct shmq_config config = {.slot_size = 8, .capacity = 64, .mode = 0644};
    struct shmq_producer *p;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    struct shmq_consumer *mine;
    CHECK_RC(shmq_consumer_open(&mine, name, SHMQ_START_LATEST), 0);
    int my_id = mine->consumers.own_id;
    CHECK(my_id >= 0);
    pid_t owner_pid = getpid();
    int ready[2], go[2];
    CHECK(pipe(ready) == 0 && pipe(go) == 0);
    pid_t kid = fork_child();
    if (kid == 0) {
        if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0)
            _exit(2);
        if (shmat(my_id, NULL, 0) != (void *)-1)
            _exit(3); /* it could map root's consumer's entry writable */
        /* It may read it, as it may read the ring: inspect tells it the
         * truth about root's consumer. */
        struct shmq_queue_info q;
        struct shmq_consumer_info seen[2];
        if (shmq_inspect(name, &q, seen, 2) != 1 || seen[0].uid != 0 || seen[0].pid != (uint32_t)owner_pid)
            _exit(9);
        if (open_file(name, ".producer", O_RDONLY) >= 0)
            _exit(4); /* it could open (and so read-lock) the producer lock */
        struct shmq_consumer *c;
        if (shmq_consumer_open(&c, name, SHMQ_START_LATEST) != 0 || shmq_consumer_entry(c) < 0)
            _exit(5);
        if (shmq_consumer_producer_alive(c) != 1)
            _exit(6); /* found through /proc/locks */
        signal_fd(ready[1]);
        if (!wait_fd(go[0]))
            _exit(7);
        _exit(shmq_consumer_producer_alive(c) == 0 ? 0 : 8);
    }
    CHECK(wait_fd(ready[0]));
    shmq_producer_close(p);
    signal_fd(go[1]);
    int status = wait_child(kid);
    if (status != 0)
        fprintf(stderr, "nobody's consumer: exit %d\n", status);
    CHECK(status == 0);
    printf("another user: cannot write an entry or open the producer lock; sees the producer "
           "live and the others' entries\n");
    shmq_consumer_close(mine);
    close(ready[0]), close(ready[1]), close(go[0]), close(go[1]);
}

static void a_failed_restart_leaves_the_queue_as_it_was(void)
{
    const char *name = test_name("emfile");
    struct shmq_config config = {.slot_size = 8, .capacity = 16, .delivery = SHMQ_LOSSLESS};
    struct shmq_producer *p;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    shmq_producer_close(p);
    /* New descriptors get the lowest free numbers, which the limit caps:
     * allow none, one, ... up to four. */
    struct rlimit old;
    CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0);
    int lowest = 0;
    while (fcntl(lowest, F_GETFD) >= 0)
        lowest++;
    int failures = 0;
    for (int extra = 0; extra <= 4; extra++) {
        struct rlimit tight = {.rlim_cur = (rlim_t)(lowest + extra), .rlim_max = old.rlim_max};
        CHECK(setrlimit(RLIMIT_NOFILE, &tight) == 0);
        int rc = shmq_producer_open(&p, name, &config, 0);
        CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0);
        if (rc == 0) {
            shmq_producer_close(p);
            continue;
        }
        CHECK_RC(rc, -EMFILE);
        failures++;
        CHECK(shmq_consumer_registered(c) == 1);
    }
    CHECK(failures > 0);
    CHECK_RC(shmq_producer_open(&p, name, &config, 0), 0);
    struct shmq_consumer_info info;
    CHECK(shmq_producer_consumers(p, &info, 1) == 1 && info.registered);
    publish_n(p, 16);
    uint64_t v = 0;
    CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), SHMQ_FULL);
    for (uint64_t i = 0; i < 16; i++) {
        CHECK_RC(shmq_consumer_poll(c, &v, sizeof(v), NULL), 0);
        CHECK(v == i);
    }
    printf("%d producer restarts failed with EMFILE; the registered consumer lost nothing\n",
           failures);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

struct opener {
    const char *name;
    _Atomic int stop;
    _Atomic int rounds;
};

static void *open_close_producers(void *arg)
{
    struct opener *o = arg;
    while (!atomic_load(&o->stop)) {
        struct shmq_producer *p;
        struct shmq_consumer *c;
        if (shmq_producer_open(&p, o->name, NULL, SHMQ_CREATE) == 0) {
            if (shmq_consumer_open(&c, o->name, SHMQ_START_LATEST) == 0)
                shmq_consumer_close(c);
            shmq_producer_close(p);
        }
        atomic_fetch_add(&o->rounds, 1);
    }
    return NULL;
}

static void forks_during_opens_leave_no_lock_to_a_child(void)
{
    const char *name = test_name("forkwin");
    struct opener o = {.name = name};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, open_close_producers, &o) == 0);
    pid_t kids[200];
    int started[2];
    CHECK(pipe(started) == 0);
    for (int i = 0; i < 200; i++) {
        kids[i] = fork();
        CHECK(kids[i] >= 0);
        if (kids[i] == 0) {
            signal_fd(started[1]);
            sleep_ns(3000000000ull); /* outlives the checks below */
            _exit(0);
        }
        sleep_ns(200000);
    }
    atomic_store(&o.stop, 1);
    CHECK(pthread_join(t, NULL) == 0);
    /* Every child still lives; none may hold the producer lock or an entry. */
    /* A child holds copies of the parent's descriptors from fork() until
     * it runs its fork handlers; every child has run them once it wrote to
     * the pipe. */
    for (int i = 0; i < 200; i++)
        CHECK(wait_fd(started[0]));
    struct shmq_producer *p;
    int rc = shmq_producer_open(&p, name, NULL, SHMQ_CREATE);
    CHECK_RC(rc, 0);
    struct shmq_consumer_info info[8];
    CHECK(shmq_producer_consumers(p, info, 8) == 0);
    shmq_producer_close(p);
    for (int i = 0; i < 200; i++)
        kill_and_reap(kids[i]);
    close(started[0]), close(started[1]);
    printf("200 forks during %d opens and closes: no child kept a lock\n", atomic_load(&o.rounds));
}

static void queue_fits_a_256k_dev_shm(void)
{
    /* The earlier checks' queues go now: from the private mount on, the
     * exit handler would unlink them in the private /dev/shm, leaving the
     * real ones behind. */
    unlink_test_names();
    if (geteuid() != 0 || unshare(CLONE_NEWNS) != 0 ||
        mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", "/dev/shm", "tmpfs", 0, "size=256k") != 0) {
        printf("256 KiB /dev/shm: skipped (needs root and a mount namespace)\n");
        return;
    }
    const char *name = test_name("small");
    struct shmq_producer *p = make_producer(name, 1024, 16, 0);
    struct shmq_consumer *a, *b;
    CHECK_RC(shmq_consumer_open(&a, name, SHMQ_START_LATEST), 0);
    CHECK_RC(shmq_consumer_open(&b, name, SHMQ_START_LATEST), 0);
    CHECK(shmq_consumer_entry(a) >= 0 && shmq_consumer_entry(b) >= 0);
    publish_n(p, 100);
    uint64_t v;
    CHECK_RC(shmq_consumer_poll(a, &v, sizeof(v), NULL), 0);
    struct shmq_queue_info info;
    CHECK(shmq_inspect(name, &info, NULL, 0) == 2);
    printf("16 x 1 KiB queue, 2 consumers in a 256 KiB /dev/shm: ring %llu bytes, state %llu bytes "
           "outside it\n", (unsigned long long)info.ring_bytes,
           (unsigned long long)info.state_bytes);
    shmq_consumer_close(a);
    shmq_consumer_close(b);
    shmq_producer_close(p);
    shmq_unlink(name, SHMQ_UNLINK_FORCE);
}

int main(void)
{
    test_start(60);
    setvbuf(stdout, NULL, _IONBF, 0);
    truncating_the_consumer_state_file_hurts_nobody();
    read_locks_neither_fake_nor_block_a_producer();
    a_planted_id_lock_stalls_but_never_overwrites();
    another_user_cannot_map_an_entry();
    a_failed_restart_leaves_the_queue_as_it_was();
    forks_during_opens_leave_no_lock_to_a_child();
    queue_fits_a_256k_dev_shm(); /* last: it leaves this process in its own /dev/shm */
    return 0;
}

/*
 * Wake sockets: what a descriptor waiter (shmq_consumer_fileno, and a
 * lossless producer waiting for room on its own descriptor) sleeps on.
 * docs/waiting.md has the protocol; this file only names, opens, fills and
 * empties them.
 *
 * A wake socket is an unconnected Unix datagram socket bound in the
 * abstract namespace: nothing in any file system, gone with its last
 * descriptor, so a killed waiter leaves nothing behind. Its name joins what
 * the sender can attribute to the waiter, from the kernel where it can (a
 * consumer entry page's System V id, told by the consumer's lock), and a
 * random 64-bit nonce that the waiter chose at the moment it bound it, so
 * that nobody can bind the name first.
 *
 * Abstract names are public (/proc/net/unix lists them), so anyone may send
 * to one. A socket filter (classic BPF, checked by the kernel before the
 * datagram is queued) lets in only the 8 bytes of a random key, which the
 * waiter tells the sender through the queue's memory: a process that cannot
 * read the queue cannot even make the descriptor readable.
 *
 * Sending never blocks (MSG_DONTWAIT) and every failure is dropped: a full
 * socket already has a wake-up queued, and a missing one has no waiter.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <linux/filter.h>
#include <unistd.h>

#include "ring_internal.h"

static socklen_t wake_address(struct sockaddr_un *addr, uint64_t instance, int entry_id,
                              uint64_t nonce)
{
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    /* sun_path[0] stays 0: the abstract namespace. */
    int n;
    if (entry_id >= 0)
        n = snprintf(addr->sun_path + 1, sizeof(addr->sun_path) - 1,
                     "shmq-wake-%016" PRIx64 "-%d-%016" PRIx64, instance, entry_id, nonce);
    else
        n = snprintf(addr->sun_path + 1, sizeof(addr->sun_path) - 1,
                     "shmq-wake-%016" PRIx64 "-producer-%016" PRIx64, instance, nonce);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

uint64_t shmq_wake_nonce(void)
{
    uint64_t nonce = 0;
    while (nonce == 0) {
        if (getrandom(&nonce, sizeof(nonce), 0) != (ssize_t)sizeof(nonce)) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            nonce = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^
                    ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)&ts;
        }
    }
    return nonce;
}

/* The filter: accept a datagram of exactly 8 bytes equal to key, drop the
 * rest. Classic BPF reads words big-endian, so the words to compare are
 * taken from the key's bytes in that order. */
static int attach_key_filter(int fd, uint64_t key)
{
    unsigned char b[8];
    memcpy(b, &key, sizeof(b));
    uint32_t high = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    uint32_t low = (uint32_t)b[4] << 24 | (uint32_t)b[5] << 16 | (uint32_t)b[6] << 8 | b[7];
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 8, 0, 5),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, high, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 4),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, low, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0xffffffffu),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog program = {.len = sizeof(code) / sizeof(code[0]), .filter = code};
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &program, sizeof(program)) < 0 ? -errno : 0;
}

int shmq_wake_socket_open(uint64_t instance, int entry_id, uint64_t nonce, uint64_t key)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    /* Before it has a name: nothing can arrive unfiltered. */
    int rc = attach_key_filter(fd, key);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    struct sockaddr_un addr;
    socklen_t len = wake_address(&addr, instance, entry_id, nonce);
    if (bind(fd, (struct sockaddr *)&addr, len) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

int shmq_wake_sender_open(void)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    return fd < 0 ? -errno : fd;
}

int shmq_wake_socket_send(int sender, uint64_t instance, int entry_id, uint64_t nonce,
                          uint64_t key)
{
    struct sockaddr_un addr;
    socklen_t len = wake_address(&addr, instance, entry_id, nonce);
    ssize_t n = sendto(sender, &key, sizeof(key), MSG_DONTWAIT | MSG_NOSIGNAL,
                       (struct sockaddr *)&addr, len);
    return n == (ssize_t)sizeof(key) ? 0 : -errno;
}

int shmq_wake_sender_connect(int sender, uint64_t instance, int entry_id, uint64_t nonce)
{
    if (sender < 0) {
        sender = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (sender < 0)
            return -errno;
    }
    struct sockaddr_un addr;
    socklen_t len = wake_address(&addr, instance, entry_id, nonce);
    if (connect(sender, (struct sockaddr *)&addr, len) < 0) {
        int rc = -errno;
        close(sender);
        return rc;
    }
    return sender;
}

int shmq_wake_sender_send(int sender, uint64_t key)
{
    ssize_t n = send(sender, &key, sizeof(key), MSG_DONTWAIT | MSG_NOSIGNAL);
    return n == (ssize_t)sizeof(key) ? 0 : -errno;
}

void shmq_wake_socket_token(int fd, uint64_t key)
{
    /* To itself: through the name it is bound to. */
    struct sockaddr_un addr;
    socklen_t len = sizeof(addr);
    if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0)
        return;
    (void)sendto(fd, &key, sizeof(key), MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&addr, len);
}

void shmq_wake_socket_drain(int fd)
{
    char buf[16];
    /* Bounded: a flood cannot keep us here (what is left keeps the
     * descriptor readable, which costs its owner one more poll). */
    for (int i = 0; i < 64; i++)
        if (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) < 0 && errno != EINTR)
            return;
}

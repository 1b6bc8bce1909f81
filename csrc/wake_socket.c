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
 * random 64-bit nonce that the waiter chose and told the sender through
 * memory only the two of them can map, so that no third process can bind
 * the name first (a squatter would have to guess the nonce).
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

int shmq_wake_socket_open(uint64_t instance, int entry_id, uint64_t nonce)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un addr;
    socklen_t len = wake_address(&addr, instance, entry_id, nonce);
    if (bind(fd, (struct sockaddr *)&addr, len) < 0) {
        int rc = -errno;
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

int shmq_wake_socket_send(int sender, uint64_t instance, int entry_id, uint64_t nonce)
{
    struct sockaddr_un addr;
    socklen_t len = wake_address(&addr, instance, entry_id, nonce);
    static const char token = 'w';
    ssize_t n = sendto(sender, &token, 1, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&addr, len);
    return n == 1 ? 0 : -errno;
}

void shmq_wake_socket_token(int fd)
{
    /* To itself: through the name it is bound to. */
    struct sockaddr_un addr;
    socklen_t len = sizeof(addr);
    if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0)
        return;
    static const char token = 's';
    (void)sendto(fd, &token, 1, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&addr, len);
}

void shmq_wake_socket_drain(int fd)
{
    char buf[64];
    /* Bounded: a flood of datagrams cannot keep us here (what is left keeps
     * the descriptor readable, which only costs its owner a re-check). */
    for (int i = 0; i < 4096; i++)
        if (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) < 0 && errno != EINTR)
            return;
}

/* Sentences for the codes documented in shmq.h. */
#include <errno.h>
#include <string.h>

#include "shmq.h"

const char *shmq_strerror(int code)
{
    switch (code) {
    case 0: return "success";
    case -EAGAIN: return "no message available";
    case -EPIPE: return "the producer closed the stream and every message has been read";
    case -EUCLEAN: return "a slot of the ring is corrupt (impossible length or sequence stamps)";
    case -EPERM: return "the queue belongs to another user, or its mode is wider than requested";
    case -EUSERS: return "every consumer entry of the queue is taken";
    case -ENOBUFS: return "no room in the lossless queue: a registered consumer has not read what the next message would overwrite";
    case -ESTALE: return "the message was overwritten while it was read in place; it counts as lost";
    case -EINPROGRESS: return "a loan or an in-place read is open on this handle; finish it first";
    case -ETIMEDOUT: return "timed out (waiting for a message, or for room in a lossless queue)";
    case -EINTR: return "interrupted by a signal";
    case -ECANCELED: return "the wait was interrupted (shmq_*_interrupt), for instance by a close from another thread";
    case -EMSGSIZE: return "message larger than the slot size, or buffer too small";
    case -EBUSY: return "another live producer holds this queue";
    case -ENOENT: return "no queue with that name";
    case -EEXIST: return "a queue with that name already exists";
    case -EINVAL: return "invalid argument or name (names: 1-200 of [A-Za-z0-9._-], starting with a letter or digit, not ending in .consumers, .producer or .bridge)";
    case -ENAMETOOLONG: return "name longer than 200 characters";
    case -EPROTO: return "not a shmq queue (bad magic, or not a regular file: a FIFO, socket, directory or symlink under the name)";
    case -ENODATA: return "segment is empty or was never fully initialised (its creator is still at work, or died at it: shmq rm NAME removes it)";
    case -EPROTONOSUPPORT: return "segment has an unsupported layout version";
    case -EBADMSG: return "segment header is corrupt or does not match the segment size";
    case -EMEDIUMTYPE: return "queue exists with a different slot size, capacity, max message size or delivery";
    case -ECHILD: return "producer handle inherited across fork(); open a new producer in the child";
    case -ENOSPC: return "no space left in /dev/shm for the queue";
    case -EFBIG: return "ring larger than SHMQ_SEGMENT_MAX (1 TiB)";
    case -EACCES: return "permission denied";
    case -ENOMEM: return "out of memory";
    default: return code < 0 ? strerror(-code) : "unknown code";
    }
}

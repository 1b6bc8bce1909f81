/* shmq_inspect: a queue seen from outside, for tools. */
#include <errno.h>

#include "ring_internal.h"

int shmq_inspect(const char *name, struct shmq_queue_info *info, struct shmq_consumer_info *out,
                 size_t max)
{
    (void)name; (void)info; (void)out; (void)max;
    return -ENOSYS;
}

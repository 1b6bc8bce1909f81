/* shmq_version: the release compiled into the library, built from the same
 * macros a program sees in shmq_version.h, so the two can only differ when the
 * program runs with another build of the shared library. */
#include "shmq_version.h"

#define SHMQ_STR_(x) #x
#define SHMQ_STR(x) SHMQ_STR_(x)

const char *shmq_version(void)
{
    return SHMQ_STR(SHMQ_VERSION_MAJOR) "." SHMQ_STR(SHMQ_VERSION_MINOR) "." SHMQ_STR(SHMQ_VERSION_PATCH);
}

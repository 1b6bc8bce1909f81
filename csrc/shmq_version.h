/* The version of shmq: the macros give the release this header belongs to,
 * shmq_version() the release of the library actually linked. shmq.h includes
 * this header; see there for the rest of the API. */
#ifndef SHMQ_VERSION_H
#define SHMQ_VERSION_H

#define SHMQ_VERSION_MAJOR 0
#define SHMQ_VERSION_MINOR 2
#define SHMQ_VERSION_PATCH 0

#ifdef __cplusplus
extern "C" {
#endif

/* The release of the linked library as "MAJOR.MINOR.PATCH", in static storage.
 * A program linked against libshmq.so may run with a newer library than the
 * header it was compiled with; comparing this string with the macros above
 * tells them apart. Never fails; any thread. */
const char *shmq_version(void);

#ifdef __cplusplus
}
#endif

#endif

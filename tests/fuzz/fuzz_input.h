/* What the fuzz targets share: the input read as a stream, failing, and the
 * queue's names. A target defines FUZZ_TARGET (its name, a string) before
 * it includes this. */
#ifndef SHMQ_FUZZ_INPUT_H
#define SHMQ_FUZZ_INPUT_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "shmq.h"

/* The input, read as a stream that yields zeros past its end. */
struct reader {
    const uint8_t *data;
    size_t size;
    size_t at;
};

static void read_bytes(struct reader *r, void *out, size_t n)
{
    memset(out, 0, n);
    if (r->at < r->size) {
        size_t have = r->size - r->at < n ? r->size - r->at : n;
        memcpy(out, r->data + r->at, have);
    }
    r->at += n;
}

static inline uint8_t read_u8(struct reader *r) { uint8_t v; read_bytes(r, &v, 1); return v; }
static inline uint16_t read_u16(struct reader *r) { uint16_t v; read_bytes(r, &v, 2); return v; }
static inline uint64_t read_u64(struct reader *r) { uint64_t v; read_bytes(r, &v, 8); return v; }

#define FAIL(...)                                                      \
    do {                                                               \
        fprintf(stderr, FUZZ_TARGET ": " __VA_ARGS__);                 \
        fputc('\n', stderr);                                           \
        abort();                                                       \
    } while (0)

#define EXPECT(cond, ...)             \
    do {                              \
        if (!(cond))                  \
            FAIL(__VA_ARGS__);        \
    } while (0)

static char queue_name[96];
static char ring_path[128];
static char locks_path[160];
static char producer_path[160];
static pid_t self;

static inline void unlink_queue(void)
{
    shmq_unlink(queue_name, SHMQ_UNLINK_FORCE);
}

#endif

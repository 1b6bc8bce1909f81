/*
 * The self-checking message format of the example programs and tests:
 * message i (counted from 0 in each producer run) is i as 8 little-endian
 * bytes, then filler byte j (for j >= 8) = (key(i) + j) mod 256. A reader can
 * verify every byte from the first eight. shmq/_pattern.py mirrors this.
 */
#ifndef SHMQ_PATTERN_H
#define SHMQ_PATTERN_H

#include <stddef.h>
#include <stdint.h>

#define SHMQ_PATTERN_MIN 8

static inline uint8_t shmq_pattern_key(uint64_t i)
{
    return (uint8_t)((i * UINT64_C(0x9E3779B97F4A7C15)) >> 56);
}

static inline void shmq_pattern_fill(unsigned char *buf, size_t size, uint64_t i)
{
    for (int b = 0; b < 8 && (size_t)b < size; b++)
        buf[b] = (unsigned char)(i >> (8 * b));
    uint8_t key = shmq_pattern_key(i);
    for (size_t j = SHMQ_PATTERN_MIN; j < size; j++)
        buf[j] = (unsigned char)(key + j);
}

/* Returns 1 and sets *i if buf is a valid message, else 0. */
static inline int shmq_pattern_check(const unsigned char *buf, size_t size, uint64_t *i)
{
    if (size < SHMQ_PATTERN_MIN)
        return 0;
    uint64_t v = 0;
    for (int b = 7; b >= 0; b--)
        v = (v << 8) | buf[b];
    uint8_t key = shmq_pattern_key(v);
    for (size_t j = SHMQ_PATTERN_MIN; j < size; j++)
        if (buf[j] != (unsigned char)(key + j))
            return 0;
    *i = v;
    return 1;
}

#endif

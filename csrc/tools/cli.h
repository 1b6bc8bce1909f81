/* Small helpers shared by the example programs. */
#ifndef SHMQ_CLI_H
#define SHMQ_CLI_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Parses a non-negative integer option value or exits with a message. */
static inline uint64_t cli_u64(const char *program, const char *option, const char *text)
{
    char *end;
    errno = 0;
    unsigned long long v = text ? strtoull(text, &end, 10) : 0;
    if (text == NULL || errno || end == text || *end != '\0' || text[0] == '-') {
        fprintf(stderr, "%s: %s needs a non-negative integer, got '%s'\n", program, option,
                text ? text : "");
        exit(2);
    }
    return v;
}

static inline double cli_double(const char *program, const char *option, const char *text)
{
    char *end;
    double v = text ? strtod(text, &end) : -1;
    if (text == NULL || end == text || *end != '\0' || !(v >= 0)) {
        fprintf(stderr, "%s: %s needs a non-negative number, got '%s'\n", program, option,
                text ? text : "");
        exit(2);
    }
    return v;
}

#endif

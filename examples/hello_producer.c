/*
 * hello_producer NAME COUNT
 *
 * Publishes COUNT messages, "hello 0", "hello 1", ..., to queue NAME, creating
 * it (64-byte slots, 1024 of them) or attaching to it and continuing its
 * sequence. It uses only the installed public API, so it builds with
 *
 *     cc hello_producer.c $(pkg-config --cflags --libs shmq) -o hello_producer
 *
 * Ends with one line: shmq VERSION: published COUNT, last sequence S
 */
#include <stdio.h>
#include <stdlib.h>

#include <shmq.h>

static void usage(void)
{
    fprintf(stderr, "usage: hello_producer NAME COUNT\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        usage();
    const char *name = argv[1];
    char *end;
    unsigned long count = strtoul(argv[2], &end, 10);
    if (argv[2][0] < '0' || argv[2][0] > '9' || *end != '\0')
        usage();

    struct shmq_config config = {0};
    config.slot_size = 64;
    config.capacity = 1024;
    struct shmq_producer *producer;
    int rc = shmq_producer_open(&producer, name, &config, SHMQ_CREATE);
    if (rc < 0) {
        fprintf(stderr, "hello_producer: %s: %s\n", name, shmq_strerror(rc));
        return 1;
    }

    uint64_t sequence = 0;
    for (unsigned long i = 0; i < count; i++) {
        char message[32];
        int length = snprintf(message, sizeof message, "hello %lu", i);
        rc = shmq_producer_publish(producer, message, (size_t)length, &sequence);
        if (rc < 0) {
            fprintf(stderr, "hello_producer: publish: %s\n", shmq_strerror(rc));
            shmq_producer_close(producer);
            return 1;
        }
    }
    shmq_producer_close(producer);
    printf("shmq %s: published %lu, last sequence %llu\n", shmq_version(), count,
           (unsigned long long)sequence);
    return 0;
}

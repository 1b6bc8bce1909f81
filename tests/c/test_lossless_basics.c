/* Lossless mode, one process: a registered consumer holds the producer back
 * (SHMQ_FULL, then room once it reads), an observer never does, closing the
 * consumer frees the producer, the table fills up (-EUSERS), and a mode
 * mismatch is -EMEDIUMTYPE. The multi-process cases are in
 * test_lossless_processes.c. */
#include "helpers.h"

static struct shmq_producer *lossless_producer(const char *name, uint32_t capacity, uint32_t max)
{
    struct shmq_config config = {.slot_size = 8, .capacity = capacity, .max_consumers = max,
                                 .delivery = SHMQ_LOSSLESS};
    struct shmq_producer *p = NULL;
    CHECK_RC(shmq_producer_open(&p, name, &config, SHMQ_CREATE | SHMQ_EXCL), 0);
    CHECK(shmq_producer_lossless(p) == 1);
    return p;
}

static void registered_consumer_holds_the_producer_back(void)
{
    const char *name = test_name("ll-back");
    struct shmq_producer *p = lossless_producer(name, 8, 4);
    struct shmq_consumer *c, *observer;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    CHECK(shmq_consumer_registered(c) == 1);
    struct shmq_consumer_options look = {.start = SHMQ_START_LATEST, .no_entry = 1};
    CHECK_RC(shmq_consumer_open_with(&observer, name, &look), 0);
    CHECK(shmq_consumer_registered(observer) == 0);
    uint64_t v;
    for (v = 0; v < 8; v++)
        CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), SHMQ_FULL);
    CHECK_RC(shmq_producer_publish_wait(p, &v, 8, NULL, 0), SHMQ_FULL);
    uint64_t t0 = now_ns();
    CHECK_RC(shmq_producer_publish_wait(p, &v, 8, NULL, 20 * 1000 * 1000), -ETIMEDOUT);
    CHECK(now_ns() - t0 >= 19 * 1000 * 1000);
    CHECK(shmq_consumer_backlog(c) == 8);
    uint64_t got;
    CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), 0);
    CHECK(got == 0);
    CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0); /* one slot freed */
    v++;
    CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), SHMQ_FULL);
    struct shmq_consumer_info info[4];
    CHECK(shmq_producer_consumers(p, info, 4) == 1);
    CHECK(info[0].registered == 1 && info[0].position == 1 && info[0].lag == 8);
    shmq_consumer_close(c); /* closing frees the producer */
    for (int i = 0; i < 100; i++, v++)
        CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    CHECK(shmq_producer_consumers(p, info, 4) == 0);
    /* The observer was lapped, and counted it. */
    CHECK_RC(shmq_consumer_poll(observer, &got, 8, NULL), 0);
    CHECK(shmq_consumer_lost(observer) > 0);
    shmq_consumer_close(observer);
    shmq_producer_close(p);
}

static void table_full_and_mode_mismatch(void)
{
    const char *name = test_name("ll-full");
    struct shmq_producer *p = lossless_producer(name, 8, 2);
    struct shmq_consumer *a, *b, *c;
    CHECK_RC(shmq_consumer_open(&a, name, SHMQ_START_LATEST), 0);
    CHECK_RC(shmq_consumer_open(&b, name, SHMQ_START_LATEST), 0);
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), -EUSERS);
    shmq_consumer_close(a);
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_EARLIEST), 0);
    shmq_consumer_close(b);
    shmq_consumer_close(c);
    shmq_producer_close(p);
    struct shmq_config lossy = {.delivery = SHMQ_LOSSY};
    CHECK_RC(shmq_producer_open(&p, name, &lossy, 0), -EMEDIUMTYPE);
    struct shmq_config any = {0};
    CHECK_RC(shmq_producer_open(&p, name, &any, 0), 0);
    CHECK(shmq_producer_lossless(p) == 1);
    shmq_producer_close(p);
    const char *other = test_name("ll-lossy");
    p = make_producer(other, 8, 8, 0);
    struct shmq_producer *q;
    struct shmq_config lossless = {.delivery = SHMQ_LOSSLESS};
    shmq_producer_close(p);
    CHECK_RC(shmq_producer_open(&q, other, &lossless, 0), -EMEDIUMTYPE);
}

static void batch_stops_where_the_ring_is_full(void)
{
    const char *name = test_name("ll-batch");
    struct shmq_producer *p = lossless_producer(name, 8, 2);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    uint64_t values[20];
    const void *messages[20];
    size_t lengths[20], published = 99;
    for (int i = 0; i < 20; i++) {
        values[i] = (uint64_t)i;
        messages[i] = &values[i];
        lengths[i] = 8;
    }
    CHECK_RC(shmq_producer_publish_many_wait(p, messages, lengths, 20, &published, 0), SHMQ_FULL);
    CHECK(published == 8);
    uint64_t got;
    for (int i = 0; i < 4; i++)
        CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), 0);
    CHECK_RC(shmq_producer_publish_many_wait(p, messages + 8, lengths + 8, 12, &published,
                                             5 * 1000 * 1000), -ETIMEDOUT);
    CHECK(published == 4);
    for (uint64_t want = 4; want < 12; want++) {
        CHECK_RC(shmq_consumer_poll(c, &got, 8, NULL), 0);
        CHECK(got == want);
    }
    CHECK(shmq_consumer_lost(c) == 0);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

int main(void)
{
    test_start(30);
    registered_consumer_holds_the_producer_back();
    table_full_and_mode_mismatch();
    batch_stops_where_the_ring_is_full();
    return 0;
}

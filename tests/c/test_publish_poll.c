/* Single-process behaviour of publish and poll: exact lengths and content,
 * limits, empty queue, start positions, poll_many, small buffers, polling
 * into caller-allocated memory, and waiting without consuming. */
#include "helpers.h"

static void messages_arrive_with_exact_length_and_content(void)
{
    const char *name = test_name("exact");
    struct shmq_producer *p = make_producer(name, 100, 8, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    unsigned char msg[100], buf[100];
    for (size_t len = 0; len <= 100; len++) {
        for (size_t i = 0; i < len; i++)
            msg[i] = (unsigned char)(len * 7 + i);
        uint64_t seq;
        CHECK_RC(shmq_producer_publish(p, msg, len, &seq), 0);
        CHECK(seq == len);
        size_t got = 999;
        memset(buf, 0xEE, sizeof(buf));
        CHECK_RC(shmq_consumer_poll(c, buf, sizeof(buf), &got), 0);
        CHECK(got == len);
        CHECK(memcmp(buf, msg, len) == 0);
        for (size_t i = len; i < sizeof(buf); i++)
            CHECK(buf[i] == 0xEE); /* nothing written past the message */
    }
    CHECK_RC(shmq_consumer_poll(c, buf, sizeof(buf), NULL), SHMQ_EMPTY);
    CHECK(shmq_consumer_lost(c) == 0);
    CHECK(shmq_consumer_position(c) == 101);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

static void oversize_messages_are_refused_not_truncated(void)
{
    const char *name = test_name("oversize");
    struct shmq_producer *p = make_producer(name, 64, 4, 0);
    unsigned char msg[65] = {0};
    CHECK_RC(shmq_producer_publish(p, msg, 65, NULL), -EMSGSIZE);
    CHECK_RC(shmq_producer_publish(p, NULL, 3, NULL), -EINVAL);
    const void *msgs[2] = {msg, msg};
    size_t lens[2] = {10, 65};
    CHECK_RC(shmq_producer_publish_many(p, msgs, lens, 2, NULL), -EMSGSIZE);
    CHECK(shmq_producer_next_sequence(p) == 0); /* nothing of the batch published */
    CHECK_RC(shmq_producer_publish(p, msg, 64, NULL), 0);
    CHECK(shmq_producer_next_sequence(p) == 1);
    shmq_producer_close(p);
}

static void small_buffer_gets_emsgsize_and_keeps_the_message(void)
{
    const char *name = test_name("smallbuf");
    struct shmq_producer *p = make_producer(name, 64, 4, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    CHECK_RC(shmq_producer_publish(p, "0123456789", 10, NULL), 0);
    char small[4], big[64];
    size_t len = 0;
    CHECK_RC(shmq_consumer_poll(c, small, sizeof(small), &len), -EMSGSIZE);
    CHECK(len == 10);
    CHECK_RC(shmq_consumer_poll(c, big, sizeof(big), &len), 0);
    CHECK(len == 10 && memcmp(big, "0123456789", 10) == 0);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

static void start_positions_latest_and_earliest(void)
{
    const char *name = test_name("start");
    struct shmq_producer *p = make_producer(name, 16, 8, 0);
    uint64_t v;
    for (v = 0; v < 3; v++)
        CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    struct shmq_consumer *early, *late;
    CHECK_RC(shmq_consumer_open(&early, name, SHMQ_START_EARLIEST), 0);
    CHECK_RC(shmq_consumer_open(&late, name, SHMQ_START_LATEST), 0);
    CHECK(shmq_consumer_position(early) == 0);
    CHECK(shmq_consumer_position(late) == 3);
    uint64_t got;
    CHECK_RC(shmq_consumer_poll(early, &got, 8, NULL), 0);
    CHECK(got == 0);
    CHECK_RC(shmq_consumer_poll(late, &got, 8, NULL), SHMQ_EMPTY);
    shmq_consumer_close(early);
    /* Once the ring has wrapped, earliest is the oldest slot the producer
     * will not rewrite next: the next publish costs such a reader nothing. */
    for (; v < 20; v++)
        CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    CHECK_RC(shmq_consumer_open(&early, name, SHMQ_START_EARLIEST), 0);
    CHECK(shmq_consumer_position(early) == 13);
    CHECK_RC(shmq_producer_publish(p, &v, 8, NULL), 0);
    v++;
    for (uint64_t want = 13; want <= 20; want++) {
        CHECK_RC(shmq_consumer_poll(early, &got, 8, NULL), 0);
        CHECK(got == want);
    }
    CHECK(shmq_consumer_lost(early) == 0);
    /* The late consumer was lapped: it skips to half a ring behind the head. */
    CHECK_RC(shmq_consumer_poll(late, &got, 8, NULL), 0);
    CHECK(got == 17);
    CHECK(shmq_consumer_lost(late) == 14); /* 3..16 */
    shmq_consumer_close(early);
    shmq_consumer_close(late);
    shmq_producer_close(p);
}

static void poll_many_packs_whole_messages(void)
{
    const char *name = test_name("many");
    struct shmq_producer *p = make_producer(name, 32, 16, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    const void *msgs[5] = {"a", "bb", "ccc", "dddd", "eeeee"};
    size_t lens[5] = {1, 2, 3, 4, 5};
    uint64_t last;
    CHECK_RC(shmq_producer_publish_many(p, msgs, lens, 5, &last), 0);
    CHECK(last == 4);
    char buf[8];
    size_t got[5];
    CHECK_RC(shmq_consumer_poll_many(c, buf, sizeof(buf), got, 5), 3); /* 1+2+3 fit, 4 more does not */
    CHECK(got[0] == 1 && got[1] == 2 && got[2] == 3 && memcmp(buf, "abbccc", 6) == 0);
    CHECK_RC(shmq_consumer_poll_many(c, buf, 3, got, 5), -EMSGSIZE);
    CHECK_RC(shmq_consumer_poll_many(c, buf, sizeof(buf), got, 5), 1);
    CHECK_RC(shmq_consumer_poll_many(c, buf, sizeof(buf), got, 5), 1);
    CHECK(memcmp(buf, "eeeee", 5) == 0);
    CHECK_RC(shmq_consumer_poll_many(c, buf, sizeof(buf), got, 5), 0);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

struct allocation {
    unsigned char buf[64];
    size_t asked;
    int calls;
    int refuse;
};

static void *allocate(void *context, size_t length)
{
    struct allocation *a = context;
    a->calls++;
    a->asked = length;
    return a->refuse ? NULL : a->buf;
}

static void poll_alloc_asks_for_the_exact_length(void)
{
    const char *name = test_name("alloc");
    struct shmq_producer *p = make_producer(name, 64, 8, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    struct allocation a = {.refuse = 0};
    size_t len = 0;
    CHECK_RC(shmq_consumer_poll_alloc(c, allocate, &a, &len), SHMQ_EMPTY);
    CHECK(a.calls == 0);
    CHECK_RC(shmq_producer_publish(p, "seventeen bytes!!", 17, NULL), 0);
    a.refuse = 1; /* out of memory: the message stays */
    CHECK_RC(shmq_consumer_poll_alloc(c, allocate, &a, &len), -ENOMEM);
    CHECK(shmq_consumer_position(c) == 0);
    a.refuse = 0;
    CHECK_RC(shmq_consumer_poll_alloc(c, allocate, &a, &len), 0);
    CHECK(a.asked == 17 && len == 17 && memcmp(a.buf, "seventeen bytes!!", 17) == 0);
    CHECK(shmq_consumer_position(c) == 1);
    CHECK_RC(shmq_consumer_poll_alloc(c, NULL, &a, &len), -EINVAL);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

static void wait_reports_readiness_without_consuming(void)
{
    const char *name = test_name("wait");
    struct shmq_producer *p = make_producer(name, 8, 4, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    CHECK_RC(shmq_consumer_wait(c, 0), -ETIMEDOUT);
    CHECK_RC(shmq_consumer_wait(c, 2000000), -ETIMEDOUT);
    CHECK_RC(shmq_producer_publish(p, "a", 1, NULL), 0);
    CHECK_RC(shmq_consumer_wait(c, -1), 0);
    CHECK_RC(shmq_consumer_wait(c, 0), 0);
    CHECK(shmq_consumer_position(c) == 0);
    /* An overrun to report also counts as something to read. */
    for (int i = 0; i < 8; i++)
        CHECK_RC(shmq_producer_publish(p, "b", 1, NULL), 0);
    CHECK_RC(shmq_consumer_wait(c, 0), 0);
    char buf[8];
    CHECK_RC(shmq_consumer_poll(c, buf, sizeof(buf), NULL), 0);
    CHECK(shmq_consumer_lost(c) > 0);
    shmq_consumer_close(c);
    shmq_producer_close(p);
}

static void bad_arguments_get_einval(void)
{
    struct shmq_producer *p;
    struct shmq_config config = {.capacity = 3};
    CHECK_RC(shmq_producer_open(&p, test_name("cap3"), &config, SHMQ_CREATE), -EINVAL);
    config.capacity = 1;
    CHECK_RC(shmq_producer_open(&p, test_name("cap1"), &config, SHMQ_CREATE), -EINVAL);
    config.capacity = 8;
    config.slot_size = SHMQ_SLOT_SIZE_MAX + 1;
    CHECK_RC(shmq_producer_open(&p, test_name("slotmax"), &config, SHMQ_CREATE), -EINVAL);
    CHECK_RC(shmq_producer_open(&p, "bad/name", NULL, SHMQ_CREATE), -EINVAL);
    CHECK_RC(shmq_producer_open(NULL, "x", NULL, SHMQ_CREATE), -EINVAL);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, test_name("missing"), SHMQ_START_LATEST), -ENOENT);
    CHECK_RC(shmq_consumer_open(&c, "x", (enum shmq_start)7), -EINVAL);
    CHECK_RC(shmq_unlink(test_name("never"), 0), -ENOENT);
}

int main(void)
{
    test_start(30);
    messages_arrive_with_exact_length_and_content();
    oversize_messages_are_refused_not_truncated();
    small_buffer_gets_emsgsize_and_keeps_the_message();
    start_positions_latest_and_earliest();
    poll_many_packs_whole_messages();
    poll_alloc_asks_for_the_exact_length();
    wait_reports_readiness_without_consuming();
    bad_arguments_get_einval();
    return 0;
}

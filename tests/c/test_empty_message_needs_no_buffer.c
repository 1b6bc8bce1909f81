/*
 * A zero-length message fits in any buffer, including none: polling it with
 * (NULL, 0), which the API accepts (only NULL with a non-zero size is
 * -EINVAL), delivers it with length 0 through poll, poll_wait and
 * poll_many. -ENOMEM is documented only for shmq_consumer_poll_alloc, whose
 * allocator returned NULL.
 * A message that is not empty still gets -EMSGSIZE with (NULL, 0), and is
 * not consumed.
 */
#include "helpers.h"

int main(void)
{
    test_start(10);
    const char *name = test_name("empty-msg");
    struct shmq_producer *p = make_producer(name, 8, 16, 0);
    struct shmq_consumer *c;
    CHECK_RC(shmq_consumer_open(&c, name, SHMQ_START_LATEST), 0);
    int failed = 0;

    CHECK_RC(shmq_producer_publish(p, NULL, 0, NULL), 0);
    size_t len = 99;
    int rc = shmq_consumer_poll(c, NULL, 0, &len);
    printf("poll(NULL, 0) of an empty message: %d (%s), length %zu\n", rc, shmq_strerror(rc), len);
    failed |= rc != 0 || len != 0;
    if (rc != 0) /* step over it, so the next case starts clean */
        CHECK_RC(shmq_consumer_poll(c, &len, sizeof(len), &len), 0);

    CHECK_RC(shmq_producer_publish(p, "", 0, NULL), 0);
    len = 99;
    rc = shmq_consumer_poll_wait(c, NULL, 0, &len, 1000000);
    printf("poll_wait(NULL, 0) of an empty message: %d (%s), length %zu\n", rc, shmq_strerror(rc), len);
    failed |= rc != 0 || len != 0;
    if (rc != 0)
        CHECK_RC(shmq_consumer_poll(c, &len, sizeof(len), &len), 0);

    CHECK_RC(shmq_producer_publish(p, NULL, 0, NULL), 0);
    CHECK_RC(shmq_producer_publish(p, NULL, 0, NULL), 0);
    size_t lens[4] = {99, 99, 99, 99};
    rc = shmq_consumer_poll_many(c, NULL, 0, lens, 4);
    printf("poll_many(NULL, 0) of two empty messages: %d (%s)\n", rc, rc < 0 ? shmq_strerror(rc) : "messages");
    failed |= rc != 2 || lens[0] != 0 || lens[1] != 0;
    while (shmq_consumer_poll(c, &len, sizeof(len), &len) == 0)
        ;

    /* Not empty: too big for no buffer, and still there afterwards. */
    uint64_t v = 7, got;
    CHECK_RC(shmq_producer_publish(p, &v, sizeof(v), NULL), 0);
    CHECK_RC(shmq_consumer_poll(c, NULL, 0, &len), -EMSGSIZE);
    CHECK(len == sizeof(v));
    CHECK_RC(shmq_consumer_poll(c, &got, sizeof(got), &len), 0);
    CHECK(got == 7);

    shmq_consumer_close(c);
    shmq_producer_close(p);
    CHECK(!failed);
    return 0;
}

# make            static library build/libshmq.a and the programs ./producer, ./consumer
# make test       C tests under -fsanitize=address,undefined; ends "N passed, M failed"
# make tsan       the threaded stress test under ThreadSanitizer
# make clean

CC ?= cc
CFLAGS ?= -O2 -g
WARN := -std=gnu11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Werror=implicit-function-declaration
LDLIBS := -lpthread

CORE_SRC := $(wildcard csrc/*.c)
CORE_HDR := $(wildcard csrc/*.h) $(wildcard csrc/tools/*.h)
TEST_SRC := $(wildcard tests/c/test_*.c)
TEST_HDR := $(wildcard tests/c/*.h)

SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

all: build/libshmq.a producer consumer

build/%.o: csrc/%.c $(CORE_HDR) | build
	$(CC) $(WARN) $(CFLAGS) -fPIC -c $< -o $@

build build/tests build/tsan:
	mkdir -p $@

build/libshmq.a: $(patsubst csrc/%.c,build/%.o,$(CORE_SRC))
	ar rcs $@ $^

producer: csrc/tools/producer.c build/libshmq.a $(CORE_HDR)
	$(CC) $(WARN) $(CFLAGS) $< build/libshmq.a $(LDLIBS) -o $@

consumer: csrc/tools/consumer.c build/libshmq.a $(CORE_HDR)
	$(CC) $(WARN) $(CFLAGS) $< build/libshmq.a $(LDLIBS) -o $@

# Each test is one program built with the core under ASan+UBSan: exit 0 pass, 1 fail, 77 skip.
build/tests/%: tests/c/%.c $(CORE_SRC) $(CORE_HDR) $(TEST_HDR) | build/tests
	$(CC) $(WARN) -O1 -g $(SAN) -Icsrc $< $(CORE_SRC) $(LDLIBS) -o $@

TESTS := $(patsubst tests/c/%.c,build/tests/%,$(TEST_SRC))

test: $(TESTS) producer consumer
	@sh tests/c/run_tests.sh $(TESTS)

# TSan does not model atomic_thread_fence (-Wtsan says so). Every shared access
# in the ring is atomic, so TSan still checks that no plain access races; the
# fence-based seqlock argument is what test_torn_read_stress proves.
build/tsan/test_tsan: tests/c/tsan_threads.c $(CORE_SRC) $(CORE_HDR) $(TEST_HDR) | build/tsan
	$(CC) $(WARN) -Wno-tsan -O1 -g -fsanitize=thread -Icsrc $< $(CORE_SRC) $(LDLIBS) -o $@

tsan: build/tsan/test_tsan
	@sh tests/c/run_tests.sh build/tsan/test_tsan

clean:
	rm -rf build producer consumer

.PHONY: all test tsan clean

# The C benchmark program used by `python -m shmq bench` (built there on demand too).
build/cbench: benchmarks/cbench.c build/libshmq.a $(CORE_HDR)
	$(CC) $(WARN) -O2 -g -Icsrc $< build/libshmq.a $(LDLIBS) -o $@

bench: build/cbench
	python3 -m shmq bench

.PHONY: bench

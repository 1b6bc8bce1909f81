# make            build/libshmq.a, build/libshmq.so, ./producer, ./consumer and the examples
# make test       C tests under -fsanitize=address,undefined; ends "N passed, M failed"
# make tsan       the threaded stress test under ThreadSanitizer
# make install    the libraries, public headers and shmq.pc under $(DESTDIR)$(PREFIX)
# make uninstall  removes what install put there
# make clean
#
# Install locations: PREFIX (/usr/local), LIBDIR ($(PREFIX)/lib), INCLUDEDIR
# ($(PREFIX)/include), PKGCONFIGDIR ($(LIBDIR)/pkgconfig); DESTDIR is prepended
# to each for staged installs and left out of shmq.pc. docs/c-library.md.

CC ?= cc
CFLAGS ?= -O2 -g
WARN := -std=gnu11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Werror=implicit-function-declaration
LDLIBS := -lpthread

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
INSTALL ?= install

CORE_SRC := $(wildcard csrc/*.c)
CORE_HDR := $(wildcard csrc/*.h) $(wildcard csrc/tools/*.h)
CORE_OBJ := $(patsubst csrc/%.c,build/%.o,$(CORE_SRC))
# What a C user gets; shmq.h includes the other two. The rest of csrc/ is internal.
PUBLIC_HDR := csrc/shmq.h csrc/shmq_region.h csrc/shmq_version.h
TEST_SRC := $(wildcard tests/c/test_*.c)
TEST_HDR := $(wildcard tests/c/*.h)
EXAMPLES := $(patsubst examples/%.c,build/examples/%,$(wildcard examples/*.c))

# The release comes from shmq_version.h, so it is written down once.
version_part = $(shell awk '$$2 == "SHMQ_VERSION_$(1)" { print $$3 }' csrc/shmq_version.h)
VERSION := $(call version_part,MAJOR).$(call version_part,MINOR).$(call version_part,PATCH)
# The ABI number in the soname: it goes up with every release that breaks the
# ABI, which before 1.0 may be any minor release (docs/c-library.md).
SOVERSION := 0
SONAME := libshmq.so.$(SOVERSION)
SHLIB := libshmq.so.$(VERSION)

SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

all: build/libshmq.a build/$(SONAME) build/libshmq.so producer consumer examples

# One set of position-independent objects serves both libraries.
build/%.o: csrc/%.c $(CORE_HDR) | build
	$(CC) $(WARN) $(CFLAGS) -fPIC -c $< -o $@

build build/tests build/tsan build/examples:
	mkdir -p $@

build/libshmq.a: $(CORE_OBJ)
	rm -f $@
	ar rcs $@ $^

# Exports only the public API (csrc/libshmq.map says how); -z defs refuses a
# library with unresolved symbols, so -lpthread must really be recorded.
build/$(SHLIB): $(CORE_OBJ) csrc/libshmq.map
	$(CC) $(CFLAGS) $(LDFLAGS) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=csrc/libshmq.map \
		-Wl,-z,defs $(CORE_OBJ) $(LDLIBS) -o $@

build/$(SONAME) build/libshmq.so: build/$(SHLIB)
	ln -sf $(SHLIB) $@

producer: csrc/tools/producer.c build/libshmq.a $(CORE_HDR)
	$(CC) $(WARN) $(CFLAGS) $< build/libshmq.a $(LDLIBS) -o $@

consumer: csrc/tools/consumer.c build/libshmq.a $(CORE_HDR)
	$(CC) $(WARN) $(CFLAGS) $< build/libshmq.a $(LDLIBS) -o $@

# The examples use only the public headers; here they link the static library.
build/examples/%: examples/%.c build/libshmq.a $(PUBLIC_HDR) | build/examples
	$(CC) $(WARN) $(CFLAGS) -Icsrc $< build/libshmq.a $(LDLIBS) -o $@

examples: $(EXAMPLES)

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

# shmq.pc is written at install time, since it names the install directories
# (a LIBDIR or INCLUDEDIR under PREFIX as ${prefix}/..., as .pc files usually do).
pc_path = $(patsubst $(PREFIX)/%,$${prefix}/%,$(1))

install: build/libshmq.a build/$(SHLIB) shmq.pc.in
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(call pc_path,$(LIBDIR))|' \
		-e 's|@INCLUDEDIR@|$(call pc_path,$(INCLUDEDIR))|' -e 's|@VERSION@|$(VERSION)|' \
		shmq.pc.in > build/shmq.pc
	$(INSTALL) -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	$(INSTALL) -m 644 build/libshmq.a $(DESTDIR)$(LIBDIR)/libshmq.a
	$(INSTALL) -m 755 build/$(SHLIB) $(DESTDIR)$(LIBDIR)/$(SHLIB)
	ln -sf $(SHLIB) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SHLIB) $(DESTDIR)$(LIBDIR)/libshmq.so
	$(INSTALL) -m 644 $(PUBLIC_HDR) $(DESTDIR)$(INCLUDEDIR)/
	$(INSTALL) -m 644 build/shmq.pc $(DESTDIR)$(PKGCONFIGDIR)/shmq.pc

# Leaves the directories, which other software may share.
uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libshmq.a $(DESTDIR)$(LIBDIR)/$(SHLIB) \
		$(DESTDIR)$(LIBDIR)/$(SONAME) $(DESTDIR)$(LIBDIR)/libshmq.so \
		$(addprefix $(DESTDIR)$(INCLUDEDIR)/,$(notdir $(PUBLIC_HDR))) \
		$(DESTDIR)$(PKGCONFIGDIR)/shmq.pc

clean:
	rm -rf build producer consumer

.PHONY: all examples test tsan install uninstall clean

# The C benchmark program used by `python -m shmq bench` (built there on demand too).
build/cbench: benchmarks/cbench.c build/libshmq.a $(CORE_HDR)
	$(CC) $(WARN) -O2 -g -Icsrc $< build/libshmq.a $(LDLIBS) -o $@

bench:
	python3 benchmarks/run.py

.PHONY: bench

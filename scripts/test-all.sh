#!/usr/bin/env bash
# Sets up a fresh Linux machine and runs every test: the C tests under
# ASan/UBSan, the ThreadSanitizer test, then pytest against the installed
# package (and once more against an ASan/UBSan build of the extension).
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.."

if ! command -v cc >/dev/null || ! command -v make >/dev/null; then
    if command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
    fi
fi

python3 -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python3 -m pip install -q pytest pytest-timeout numpy
python3 -m pip install -q .

echo "== C tests (ASan + UBSan)"
make -s all
make -s test
echo "== ThreadSanitizer"
make -s tsan

echo "== pytest (release build, installed)"
# Run from tests/ so 'import shmq' finds the installed package, not the source tree.
(cd tests && python3 -m pytest -q -p no:cacheprovider .)

if [ "${SHMQ_SKIP_ASAN_PYTEST:-0}" != "1" ]; then
    echo "== pytest (extension built with ASan + UBSan)"
    asan_build=$(mktemp -d)
    trap 'rm -rf "$asan_build"' EXIT
    SHMQ_SANITIZE=1 python3 -m pip install -q --target "$asan_build" --no-deps --no-build-isolation . 2>/dev/null ||
        SHMQ_SANITIZE=1 python3 -m pip install -q --target "$asan_build" --no-deps .
    (cd tests && PYTHONPATH="$asan_build" LD_PRELOAD="$(cc -print-file-name=libasan.so):$(cc -print-file-name=libubsan.so)" \
        ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1 \
        python3 -m pytest -q -p no:cacheprovider -m "not slow" .)
fi

#!/bin/sh
# Builds the libFuzzer target tests/fuzz/fuzz_attach.c with the core under
# ASan + UBSan and fuzzes attach, header validation and slot reading for
# SECONDS (default 60). tests/fuzz/README.md has the details.
#
#   sh tests/fuzz/run.sh [SECONDS]
#
# Exit: 0 nothing found; 1 a finding (a crash, a sanitizer report, a failed
# invariant, a leak or a timeout), or a reproducer in tests/fuzz/crashers/
# that still fails; 77 skipped (no clang with libFuzzer here). Installs
# nothing: on Debian 12 the fuzzer needs `clang libclang-rt-14-dev`.
#
# Output under build/fuzz/: the binary, seeds/ (rewritten each run),
# corpus/ (grows from run to run), artifacts/ (findings) and log.
set -u
cd "$(dirname "$0")/../.." || exit 1

seconds=${1:-60}
case $seconds in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

out=build/fuzz
bin=$out/fuzz_attach
mkdir -p "$out/seeds" "$out/corpus" "$out/artifacts" || exit 1

# A clang whose driver links libFuzzer and both sanitizer runtimes: Debian's
# clang package ships the driver, libclang-rt-N-dev the runtimes.
probe=$out/probe.c
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' > "$probe"
cc=
for candidate in ${CLANG:-} clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14; do
    command -v "$candidate" > /dev/null 2>&1 || continue
    if "$candidate" -fsanitize=fuzzer,address,undefined "$probe" -o "$out/probe" > /dev/null 2>&1; then
        cc=$candidate
        break
    fi
done
rm -f "$probe" "$out/probe"
if [ -z "$cc" ]; then
    echo "SKIP fuzz: no clang that links -fsanitize=fuzzer,address,undefined" >&2
    echo "     (Debian 12: apt-get install clang libclang-rt-14-dev; or set CLANG=...)" >&2
    exit 77
fi

echo "== building $bin with $cc ($("$cc" --version | head -n 1))"
# Unsigned wrap is the sequence arithmetic's design, so UBSan's default set
# (which leaves it out) is the right one; every report is fatal.
"$cc" -std=gnu11 -Wall -Wextra -Wshadow -g -O1 \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
    -Icsrc tests/fuzz/fuzz_attach.c csrc/*.c -lpthread -o "$bin" || exit 1

# Each fuzzer process names its queue fuzz-TAG-PID and unlinks it after
# every input; a crash is the one exit that skips that, so sweep ours.
tag=r$$
sweep() { rm -f /dev/shm/shmq-fuzz-"$tag"-*; }
trap sweep EXIT
trap 'sweep; exit 1' INT TERM
export SHMQ_FUZZ_TAG=$tag
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

# Reproducers of past findings first: each must run clean before new
# fuzzing means anything.
failed=0
for crasher in tests/fuzz/crashers/*; do
    [ -f "$crasher" ] || continue
    [ "$(basename "$crasher")" = README.md ] && continue
    if ! "$bin" "$crasher" > "$out/replay.log" 2>&1; then
        echo "FAIL fuzz: $crasher still fails:"
        grep -E 'fuzz_attach:|runtime error|ERROR:' "$out/replay.log" | grep -v 'Running' | head -n 5 | sed 's/^/    /'
        failed=1
    fi
done
if [ "$failed" -ne 0 ]; then
    echo "FAIL fuzz: fix the reproducers above first (replay one: $bin FILE)"
    exit 1
fi

rm -f "$out"/seeds/*
SHMQ_FUZZ_WRITE_SEEDS=$out/seeds "$bin" -runs=0 > /dev/null 2>&1 || { echo "cannot write seeds" >&2; exit 1; }

echo "== fuzzing for $seconds s (log: $out/log)"
started=$(date +%s)
"$bin" -max_total_time="$seconds" -timeout=10 -error_exitcode=1 -timeout_exitcode=1 \
    -use_value_profile=1 -print_final_stats=1 -artifact_prefix="$out/artifacts/" \
    "$out/corpus" "$out/seeds" > "$out/log" 2>&1
rc=$?
elapsed=$(( $(date +%s) - started ))

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/log")
rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/log")
last=$(grep -E '^#[0-9]+' "$out/log" | tail -n 1)
cov=$(printf '%s\n' "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
ft=$(printf '%s\n' "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
corp=$(printf '%s\n' "$last" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
pcs=$(sed -n 's/^INFO: Loaded 1 PC tables (\([0-9]*\) PCs).*/\1/p' "$out/log" | head -n 1)
echo "executions: ${runs:-?} in $elapsed s (${rate:-?}/s)"
echo "coverage:   ${cov:-?} of ${pcs:-?} instrumented edges, ${ft:-?} features, corpus ${corp:-?} inputs"

if [ "$rc" -ne 0 ]; then
    echo "FAIL fuzz: finding (exit $rc); the report:"
    grep -E 'fuzz_attach:|runtime error|ERROR: |SUMMARY|Test unit written' "$out/log" | head -n 12 | sed 's/^/    /'
    echo "    replay: $bin $out/artifacts/FILE (keep it in tests/fuzz/crashers/ once understood)"
    exit 1
fi
echo "PASS fuzz: no finding"
exit 0

#!/bin/sh
# Builds the libFuzzer target tests/fuzz/fuzz_attach.c with the core under
# ASan + UBSan and fuzzes attach, header validation, slot reading and the
# consumer state of layout 3 (lock file, wake page, entry pages) for SECONDS
# (default 60). tests/fuzz/README.md has the details.
#
#   sh tests/fuzz/run.sh [SECONDS]
#
# Exit: 0 nothing found; 1 a finding (a crash, a sanitizer report, a failed
# invariant, a leak or a timeout, a System V segment left behind), or a
# reproducer in tests/fuzz/crashers/ that still fails; 77 skipped (no clang
# with libFuzzer here). Installs nothing: on Debian 12 the fuzzer needs
# `clang libclang-rt-14-dev`.
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

# Each fuzzer process names its queue fuzz-TAG-PID (the ring, NAME.consumers,
# NAME.producer, and what the harness plants there: FIFOs, directories,
# symlinks) and removes it after every input; a crash is the one exit that
# skips that, so sweep ours. Its System V pages are marked for removal once
# mapped, so the kernel frees them when it exits; any segment still listed
# with a fuzzer process as creator afterwards was left behind: a finding.
tag=r$$
sweep() { rm -rf /dev/shm/shmq-fuzz-"$tag"-*; }
trap sweep EXIT
trap 'sweep; exit 1' INT TERM
export SHMQ_FUZZ_TAG=$tag
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

# run LOG ARGS...: runs the fuzzer in the background (to know its pid) and
# returns its exit status; $left gets the ids of the System V segments it
# made that outlive it, which are then removed.
left=
run() {
    log=$1
    shift
    "$bin" "$@" > "$log" 2>&1 &
    pid=$!
    wait "$pid"
    status=$?
    left=$(ipcs -m -p 2> /dev/null | awk -v pid="$pid" '$3 == pid { print $1 }' | tr '\n' ' ')
    for id in $left; do ipcrm -m "$id" 2> /dev/null; done
    return "$status"
}
segments() { ipcs -m 2> /dev/null | grep -c '^0x'; }

# Reproducers of past findings first: each must run clean before new
# fuzzing means anything.
failed=0
for crasher in tests/fuzz/crashers/*; do
    [ -f "$crasher" ] || continue
    [ "$(basename "$crasher")" = README.md ] && continue
    if ! run "$out/replay.log" "$crasher"; then
        echo "FAIL fuzz: $crasher still fails:"
        grep -E 'fuzz_attach:|runtime error|ERROR:' "$out/replay.log" | grep -v 'Running' | head -n 5 | sed 's/^/    /'
        failed=1
    elif [ -n "$left" ]; then
        echo "FAIL fuzz: $crasher left System V segments behind: $left"
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
before=$(segments)
run "$out/log" -max_total_time="$seconds" -timeout=10 -error_exitcode=1 -timeout_exitcode=1 \
    -use_value_profile=1 -print_final_stats=1 -artifact_prefix="$out/artifacts/" \
    "$out/corpus" "$out/seeds"
rc=$?
after=$(segments)
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
echo "System V:   ${before:-?} segments before, ${after:-?} after (all users); left by the fuzzer: ${left:-none}"

if [ "$rc" -ne 0 ]; then
    echo "FAIL fuzz: finding (exit $rc); the report:"
    grep -E 'fuzz_attach:|runtime error|ERROR: |SUMMARY|Test unit written' "$out/log" | head -n 12 | sed 's/^/    /'
    echo "    replay: $bin $out/artifacts/FILE (keep it in tests/fuzz/crashers/ once understood)"
    exit 1
fi
if [ -n "$left" ]; then
    echo "FAIL fuzz: System V segments made by the fuzzer outlived it (removed now): $left"
    exit 1
fi
echo "PASS fuzz: no finding"
exit 0

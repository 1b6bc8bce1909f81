#!/bin/sh
# Builds the libFuzzer targets with the core under ASan + UBSan and fuzzes
# them for SECONDS (default 60) in all, half each:
#   fuzz_attach.c  attach, header validation, reading the records of layout
#                  6 (index and data area, messages over several slots) and
#                  the consumer state of layout 3 (lock file, wake page,
#                  entry pages);
#   fuzz_groups.c  consumer groups over a group page whose cursor, lost
#                  count and member claims come from the input.
# tests/fuzz/README.md has the details.
#
#   sh tests/fuzz/run.sh [SECONDS]
#
# Exit: 0 nothing found; 1 a finding (a crash, a sanitizer report, a failed
# invariant, a leak or a timeout, a System V segment left behind), or a
# reproducer in tests/fuzz/crashers/ that still fails; 77 skipped (no clang
# with libFuzzer here). Installs nothing: on Debian 12 the fuzzer needs
# `clang libclang-rt-14-dev`.
#
# Output under build/fuzz/: the binaries; for fuzz_attach seeds/ (rewritten
# each run), corpus/ (grows from run to run), artifacts/ (findings) and log;
# the same for fuzz_groups under build/fuzz/groups/. Reproducers:
# tests/fuzz/crashers/* (fuzz_attach), tests/fuzz/crashers/groups/* (fuzz_groups).
set -u
cd "$(dirname "$0")/../.." || exit 1

seconds=${1:-60}
case $seconds in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

out=build/fuzz
mkdir -p "$out/seeds" "$out/corpus" "$out/artifacts" || exit 1
mkdir -p "$out/groups/seeds" "$out/groups/corpus" "$out/groups/artifacts" || exit 1

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

# Unsigned wrap is the sequence arithmetic's design, so UBSan's default set
# (which leaves it out) is the right one; every report is fatal.
for target in fuzz_attach fuzz_groups; do
    echo "== building $out/$target with $cc ($("$cc" --version | head -n 1))"
    "$cc" -std=gnu11 -Wall -Wextra -Wshadow -g -O1 \
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
        -Icsrc tests/fuzz/$target.c csrc/*.c -lpthread -o "$out/$target" || exit 1
done

# Each fuzzer process names its queue fuzz-TAG-PID (fuzz_groups: fuzz-TAG-gPID)
# (the ring, NAME.consumers, NAME.producer, and what the harness plants
# there: FIFOs, directories, symlinks) and removes it after every input; a
# crash is the one exit that skips that, so sweep ours. Its System V pages
# are marked for removal once mapped, so the kernel frees them when it
# exits; any segment still listed with a fuzzer process as creator
# afterwards was left behind: a finding.
tag=r$$
sweep() { rm -rf /dev/shm/shmq-fuzz-"$tag"-*; }
trap sweep EXIT
trap 'sweep; exit 1' INT TERM
export SHMQ_FUZZ_TAG=$tag
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

# run BIN LOG ARGS...: runs a fuzzer in the background (to know its pid) and
# returns its exit status; $left gets the ids of the System V segments it
# made that outlive it, which are then removed.
left=
run() {
    bin=$1
    log=$2
    shift 2
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
replay() {
    bin=$1
    for crasher in $2/*; do
        [ -f "$crasher" ] || continue
        [ "$(basename "$crasher")" = README.md ] && continue
        if ! run "$bin" "$out/replay.log" "$crasher"; then
            echo "FAIL fuzz: $crasher still fails:"
            grep -E 'fuzz_attach:|fuzz_groups:|runtime error|ERROR:' "$out/replay.log" | grep -v 'Running' | head -n 5 | sed 's/^/    /'
            failed=1
        elif [ -n "$left" ]; then
            echo "FAIL fuzz: $crasher left System V segments behind: $left"
            failed=1
        fi
    done
}
replay "$out/fuzz_attach" tests/fuzz/crashers
replay "$out/fuzz_groups" tests/fuzz/crashers/groups
if [ "$failed" -ne 0 ]; then
    echo "FAIL fuzz: fix the reproducers above first (replay one: $out/fuzz_attach FILE, or $out/fuzz_groups FILE for crashers/groups/)"
    exit 1
fi

# fuzz NAME DIR SECONDS: writes NAME's seeds to DIR/seeds, fuzzes for
# SECONDS with DIR's corpus, and reports; sets $finding on a finding.
finding=0
fuzz() {
    name=$1
    dir=$2
    budget=$3
    bin=$out/$name
    rm -f "$dir"/seeds/*
    SHMQ_FUZZ_WRITE_SEEDS=$dir/seeds "$bin" -runs=0 > /dev/null 2>&1 || { echo "cannot write seeds" >&2; exit 1; }

    echo "== fuzzing $name for $budget s (log: $dir/log)"
    started=$(date +%s)
    before=$(segments)
    run "$bin" "$dir/log" -max_total_time="$budget" -timeout=10 -error_exitcode=1 -timeout_exitcode=1 \
        -use_value_profile=1 -print_final_stats=1 -artifact_prefix="$dir/artifacts/" \
        "$dir/corpus" "$dir/seeds"
    rc=$?
    after=$(segments)
    elapsed=$(( $(date +%s) - started ))

    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log")
    last=$(grep -E '^#[0-9]+' "$dir/log" | tail -n 1)
    cov=$(printf '%s\n' "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(printf '%s\n' "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    corp=$(printf '%s\n' "$last" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
    pcs=$(sed -n 's/^INFO: Loaded 1 PC tables (\([0-9]*\) PCs).*/\1/p' "$dir/log" | head -n 1)
    echo "executions: ${runs:-?} in $elapsed s (${rate:-?}/s)"
    echo "coverage:   ${cov:-?} of ${pcs:-?} instrumented edges, ${ft:-?} features, corpus ${corp:-?} inputs"
    echo "System V:   ${before:-?} segments before, ${after:-?} after (all users); left by the fuzzer: ${left:-none}"

    if [ "$rc" -ne 0 ]; then
        echo "FAIL fuzz: $name finding (exit $rc); the report:"
        grep -E "$name:|runtime error|ERROR: |SUMMARY|Test unit written" "$dir/log" | head -n 12 | sed 's/^/    /'
        echo "    replay: $bin $dir/artifacts/FILE (keep it in tests/fuzz/crashers/ once understood)"
        finding=1
    elif [ -n "$left" ]; then
        echo "FAIL fuzz: System V segments made by $name outlived it (removed now): $left"
        finding=1
    fi
}

# The time budget is shared: half each (at least a second each).
groups_seconds=$(( seconds / 2 ))
[ "$groups_seconds" -ge 1 ] || groups_seconds=1
attach_seconds=$(( seconds - groups_seconds ))
[ "$attach_seconds" -ge 1 ] || attach_seconds=1
fuzz fuzz_attach "$out" "$attach_seconds"
fuzz fuzz_groups "$out/groups" "$groups_seconds"
if [ "$finding" -ne 0 ]; then
    exit 1
fi
echo "PASS fuzz: no finding"
exit 0

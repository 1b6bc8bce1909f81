"""Wake-up latency of `shmq.wait_any` over many queues against a blocking poll on one.

A producer process owns N queues (one consumer each, in the reader) and
publishes one message every few milliseconds on a queue picked at random
(a seeded xorshift, so every mode sees the same sequence), each carrying
`time.perf_counter_ns()` taken just before `publish` (CLOCK_MONOTONIC, the
same clock in every process). The reader, idle and asleep between messages,
takes the clock again as soon as a poll returns the message. Modes alternate
in rounds so that drift in the machine's load affects all of them alike:

    single       one queue, `poll(timeout=None)`: the baseline
    any-64       64 queues, `shmq.wait_any(consumers)`, then `poll()` each
                 ready consumer until it returns None (the futex_waitv path)
    any-256      the same over 256 queues (the descriptor path: ppoll)
    epoll-256    256 queues, one `select.epoll` over their `fileno()`s,
                 then `poll()` the ready ones: the descriptor path without
                 wait_any, for comparison (not in the default set)
    any-1        `wait_any` over the single queue (not in the default set)

    python benchmarks/wait_any_latency.py [--messages 2000] [--interval-ms 3] [--rounds 4]
                                          [--modes single,any-64,any-256]

Prints a Markdown table of percentiles in microseconds, each mode's p50
over the single-queue p50 of the same run, the reader's CPU time (user +
system, getrusage) per message received, and the producer's FUTEX_WAKE
calls per message (`Producer.wakeups`, summed over its queues; the
descriptor path's datagrams are not counted there: benchmarks/herd.c
counts them). Run from a checkout with the extension built (pip install
-e .). Queues are named wait-any-PID-K-I and removed after each round.
"""
import argparse
import json
import os
import platform
import resource
import select
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import shmq  # noqa: E402
from async_latency import _round_ratios, percentile  # noqa: E402  (same folder)

STAMP = struct.Struct("<Q")

# Opens `queues` producers, then publishes `count` stamped messages,
# `interval` seconds apart, each on a queue picked by a xorshift; reports
# the FUTEX_WAKE calls it made, then closes every queue (ending the streams).
PRODUCER = textwrap.dedent("""
    import json, resource, struct, sys, time, shmq
    prefix, queues, count, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    producers = [shmq.Producer(f"{prefix}-{i}", slot_size=64, capacity=256) for i in range(queues)]
    pack = struct.Struct("<Q").pack
    print("ready", flush=True)
    sys.stdin.readline()
    x = 0x9E3779B97F4A7C15
    next_at = time.monotonic()
    for _ in range(count):
        x ^= (x << 13) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 7
        x ^= (x << 17) & 0xFFFFFFFFFFFFFFFF
        p = producers[x % queues]
        next_at += interval
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        p.publish(pack(time.perf_counter_ns()))
    print(json.dumps({"wakeups": sum(p.wakeups for p in producers)}), flush=True)
    for p in producers:
        p.close()
""")

WARMUP = 20  # first messages of a round: page faults, first arming

MODES = {
    "single": (1, "one queue, `poll(timeout=None)` (blocking)"),
    "any-1": (1, "one queue, `wait_any([c])`, then `poll()`"),
    "any-64": (64, "64 queues, `wait_any(consumers)`, then `poll()` the ready ones"),
    "any-256": (256, "256 queues, `wait_any(consumers)`, then `poll()` the ready ones"),
    "epoll-256": (256, "256 queues, `select.epoll` on their `fileno()`s, then `poll()` the ready ones"),
}
DEFAULT_MODES = "single,any-64,any-256"


def _raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _single_round(cs, count):
    now, unpack = time.perf_counter_ns, STAMP.unpack
    c = cs[0]
    out = []
    for _ in range(count):
        msg = c.poll(timeout=None)
        t = now()
        out.append(t - unpack(msg)[0])
    return out


def _any_round(cs, count):
    now, unpack, wait_any = time.perf_counter_ns, STAMP.unpack, shmq.wait_any
    out = []
    while len(out) < count:
        for c in wait_any(cs):
            while True:
                msg = c.poll()
                if msg is None:
                    break
                t = now()
                out.append(t - unpack(msg)[0])
    return out


def _epoll_round(cs, count):
    now, unpack = time.perf_counter_ns, STAMP.unpack
    out = []
    with select.epoll() as ep:
        by_fd = {}
        for c in cs:
            by_fd[c.fileno()] = c
            ep.register(c.fileno(), select.EPOLLIN)
        while len(out) < count:
            for fd, _ in ep.poll():
                c = by_fd[fd]
                while True:
                    msg = c.poll()
                    if msg is None:
                        break
                    t = now()
                    out.append(t - unpack(msg)[0])
    return out


ROUNDS = {"single": _single_round, "any-1": _any_round, "any-64": _any_round,
          "any-256": _any_round, "epoll-256": _epoll_round}


def _cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)  # the reader only: the producer is a child
    return r.ru_utime + r.ru_stime


def run_round(mode, count, interval, serial):
    queues = MODES[mode][0]
    prefix = f"wait-any-{os.getpid()}-{serial}"
    total = count + WARMUP
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER, prefix, str(queues), str(total), str(interval)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    cs = []
    try:
        if proc.stdout.readline() != "ready\n":
            raise SystemExit("producer did not start")
        cs = [shmq.Consumer(f"{prefix}-{i}", start="earliest") for i in range(queues)]
        proc.stdin.write("go\n")
        proc.stdin.flush()
        cpu = _cpu_seconds()
        samples = ROUNDS[mode](cs, total)
        cpu = _cpu_seconds() - cpu
        lost = sum(c.lost for c in cs)
        report = json.loads(proc.stdout.readline())
        proc.wait(timeout=60)
    finally:
        for c in cs:
            c.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for i in range(queues):
            try:
                shmq.unlink(f"{prefix}-{i}", force=True)
            except shmq.QueueNotFound:
                pass
    if lost:
        raise SystemExit(f"{mode}: lost {lost} messages; the latencies would be wrong")
    if len(samples) != total:
        raise SystemExit(f"{mode}: received {len(samples)} messages of {total}")
    return samples[WARMUP:], report["wakeups"], total, cpu


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000, help="per mode (default 2000)")
    ap.add_argument("--interval-ms", type=float, default=3.0, help="between messages (default 3)")
    ap.add_argument("--rounds", type=int, default=4, help="alternations of the modes")
    ap.add_argument("--modes", default=DEFAULT_MODES,
                    help=f"comma-separated, from: {', '.join(MODES)} (default {DEFAULT_MODES})")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}")
    _raise_nofile()
    per_round = max(1, args.messages // args.rounds)
    samples = {m: [] for m in modes}
    wakes = {m: [0, 0, 0.0] for m in modes}
    round_p50 = {m: [] for m in modes}
    serial = 0
    for _ in range(args.rounds):
        for mode in modes:
            serial += 1
            s, w, n, cpu = run_round(mode, per_round, args.interval_ms / 1000, serial)
            samples[mode] += s
            round_p50[mode].append(percentile(sorted(s), 50))
            wakes[mode][0] += w
            wakes[mode][1] += n
            wakes[mode][2] += cpu

    cpus = len(os.sched_getaffinity(0))
    print(f"Python {platform.python_version()}, {cpus} CPUs, {platform.machine()}, Linux "
          f"{platform.release()}; one message every {args.interval_ms:g} ms from another process, "
          f"on a queue picked at random; reader idle and asleep between messages; "
          f"{args.rounds} alternating rounds\n")
    print("| reader | messages | p50 (us) | p90 (us) | p99 (us) | max (us) | p50 / single p50 "
          "| the same, round by round: median (min-max) | reader CPU per message (us) "
          "| producer FUTEX_WAKE per message |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = percentile(sorted(samples["single"]), 50) if "single" in samples else None
    for mode in modes:
        s = sorted(samples[mode])
        cells = [f"{percentile(s, q) / 1000:.1f}" for q in (50, 90, 99)] + [f"{s[-1] / 1000:.1f}"]
        ratio = f"{percentile(s, 50) / base:.2f}x" if base else "-"
        w, n, cpu = wakes[mode]
        print(f"| {MODES[mode][1]} | {len(s)} | " + " | ".join(cells) +
              f" | {ratio} | {_round_ratios(round_p50, mode, 'single')} | {cpu / n * 1e6:.0f} | {w / n:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

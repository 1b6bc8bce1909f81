"""Wake-up latency of `await Consumer.poll_async()` against a blocking `poll(timeout=None)`.

A producer in another process publishes one message every few milliseconds,
each carrying `time.perf_counter_ns()` taken just before `publish` (on Linux
that is CLOCK_MONOTONIC, the same clock in every process). The consumer, idle
and asleep on the queue between messages, takes the clock again as soon as
the call returns the message: the difference is the wake-up latency. Modes
alternate in rounds so that drift in the machine's load affects both alike.

    python benchmarks/async_latency.py [--messages 2000] [--interval-ms 3] [--rounds 4]

Prints a Markdown table of percentiles in microseconds. Run from a checkout
with the extension built (pip install -e .).
"""
import argparse
import asyncio
import os
import platform
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import shmq  # noqa: E402

STAMP = struct.Struct("<Q")

# Publishes `count` stamped messages, `interval` seconds apart, once told to go;
# closing the producer at the end ends the stream.
PRODUCER = textwrap.dedent("""
    import struct, sys, time, shmq
    name, count, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    pack = struct.Struct("<Q").pack
    with shmq.Producer(name, slot_size=64, capacity=4096) as p:
        print("ready", flush=True)
        sys.stdin.readline()
        next_at = time.monotonic()
        for _ in range(count):
            next_at += interval
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            p.publish(pack(time.perf_counter_ns()))
""")

WARMUP = 20  # first messages of a round: thread pool start, page faults


def _start_producer(name, count, interval):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER, name, str(count), str(interval)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    if proc.stdout.readline() != "ready\n":
        proc.kill()
        raise SystemExit("producer did not start")
    return proc


def _blocking_round(c, count):
    now, unpack = time.perf_counter_ns, STAMP.unpack
    out = []
    for _ in range(count):
        msg = c.poll(timeout=None)
        t = now()
        out.append(t - unpack(msg)[0])
    return out


async def _async_round(c, count):
    now, unpack = time.perf_counter_ns, STAMP.unpack
    out = []
    for _ in range(count):
        msg = await c.poll_async()
        t = now()
        out.append(t - unpack(msg)[0])
    return out


def run_round(mode, count, interval):
    name = f"async-latency-{os.getpid()}"
    proc = _start_producer(name, count + WARMUP, interval)
    try:
        with shmq.Consumer(name, start="earliest") as c:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            if mode == "blocking":
                samples = _blocking_round(c, count + WARMUP)
            else:
                samples = asyncio.run(_async_round(c, count + WARMUP))
            lost = c.lost
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            shmq.unlink(name, force=True)
        except shmq.QueueNotFound:
            pass
    if lost:
        raise SystemExit(f"{mode}: lost {lost} messages; the latencies would be wrong")
    return samples[WARMUP:]


def percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q / 100 * len(sorted_values)))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000, help="per mode (default 2000)")
    ap.add_argument("--interval-ms", type=float, default=3.0, help="between messages (default 3)")
    ap.add_argument("--rounds", type=int, default=4, help="alternations of the two modes")
    args = ap.parse_args(argv)
    per_round = max(1, args.messages // args.rounds)
    results = {"blocking": [], "async": []}
    for _ in range(args.rounds):
        for mode in ("blocking", "async"):
            results[mode] += run_round(mode, per_round, args.interval_ms / 1000)

    cpus = len(os.sched_getaffinity(0))
    print(f"Python {platform.python_version()}, {cpus} CPUs, {platform.machine()}; one message every "
          f"{args.interval_ms:g} ms from another process; consumer idle and asleep between messages; "
          f"{args.rounds} alternating rounds\n")
    print("| consumer call | messages | p50 (us) | p90 (us) | p99 (us) | max (us) |")
    print("|---|---:|---:|---:|---:|---:|")
    labels = {"blocking": "`poll(timeout=None)` (blocking)", "async": "`await poll_async()`"}
    for mode, samples in results.items():
        s = sorted(samples)
        cells = [f"{percentile(s, q) / 1000:.1f}" for q in (50, 90, 99)] + [f"{s[-1] / 1000:.1f}"]
        print(f"| {labels[mode]} | {len(s)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What idle `await poll_async()` calls cost: threads, CPU, and whether they all wake.

One event loop awaits `poll_async()` (no timeout) on C consumers at once:
`--queues` queues with `--per-queue` consumers each (500 x 1 by default),
their producers in another process. The awaits start spread over
`--stagger` seconds (1), as awaits of a real program would, so that any
periodic work they do is spread too. After the awaits have settled, the
loop sits idle for `--seconds` (3): the reader process's CPU time
(getrusage, user + system, every thread) and voluntary context switches
over that time are what idleness costs, and `threading.active_count()` is
sampled before the consumers open, during the idle time and after. Then
the producer process publishes one stamped message on every queue, and
every await must return its queue's message, each consumer exactly one.

    python benchmarks/idle_async.py [--queues 500] [--per-queue 1] [--seconds 3] [--stagger 1]

Prints a Markdown table. The soft RLIMIT_NOFILE is raised to the hard limit
in both processes (each consumer holds about five descriptors, each producer
five). Exit 0 when every consumer woke with its message, 1 otherwise.
Queues are named idle-async-PID-I and removed at the end.
"""
import argparse
import asyncio
import os
import platform
import resource
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import shmq  # noqa: E402

STAMP = struct.Struct("<QQ")  # queue index, perf_counter_ns before publish

# Opens the queues, then on "go" publishes one stamped message on each, and
# on "end" closes them.
PRODUCER = textwrap.dedent("""
    import resource, struct, sys, time, shmq
    prefix, queues, per_queue = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    producers = [shmq.Producer(f"{prefix}-{i}", slot_size=64, capacity=64,
                               max_consumers=max(8, 2 * per_queue)) for i in range(queues)]
    pack = struct.Struct("<QQ").pack
    print("ready", flush=True)
    assert sys.stdin.readline() == "go\\n"
    for i, p in enumerate(producers):
        p.publish(pack(i, time.perf_counter_ns()))
    print("published", flush=True)
    sys.stdin.readline()
    for p in producers:
        p.close()
""")


def _cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_nvcsw


async def _await_one(c, queue, woke):
    msg = await c.poll_async()
    t = time.perf_counter_ns()
    index, stamp = STAMP.unpack(msg)
    woke.append((queue, index, t - stamp))


async def measure(consumers, proc, seconds, stagger):
    out = {}
    woke = []
    tasks = []
    for i, (c, q) in enumerate(consumers):
        tasks.append(asyncio.create_task(_await_one(c, q, woke)))
        if stagger > 0:
            # Spread the starts, and with them any periodic work the awaits do.
            await asyncio.sleep(stagger / len(consumers))
    await asyncio.sleep(0.5)  # every await has polled, found nothing and registered
    out["pending"] = sum(not t.done() for t in tasks)
    threads = [threading.active_count()]
    cpu0, csw0 = _cpu_seconds()
    t0 = time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        await asyncio.sleep(min(0.5, max(0.0, end - time.monotonic())))
        threads.append(threading.active_count())
    cpu1, csw1 = _cpu_seconds()
    idle = time.monotonic() - t0
    out["idle_s"] = idle
    out["cpu_per_s"] = (cpu1 - cpu0) / idle
    out["wakeups_per_s"] = (csw1 - csw0) / idle
    out["threads_idle"] = max(threads)
    out["woken_while_idle"] = len(woke)

    t_go = time.perf_counter_ns()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    done, pending = await asyncio.wait(tasks, timeout=10)
    out["all_woke_ms"] = (time.perf_counter_ns() - t_go) / 1e6
    out["not_woken"] = len(pending)
    for t in pending:
        t.cancel()
    out["failed"] = sum(1 for t in done if t.exception() is not None)
    out["woke"] = woke
    out["threads_after"] = threading.active_count()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queues", type=int, default=500, help="queues (default 500)")
    ap.add_argument("--per-queue", type=int, default=1, help="consumers per queue (default 1)")
    ap.add_argument("--seconds", type=float, default=3.0, help="idle time measured (default 3)")
    ap.add_argument("--stagger", type=float, default=1.0,
                    help="start the awaits spread over this many seconds (default 1; 0: all at once)")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    prefix = f"idle-async-{os.getpid()}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    threads_before = threading.active_count()
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER, prefix, str(args.queues), str(args.per_queue)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    consumers = []
    try:
        if proc.stdout.readline() != "ready\n":
            raise SystemExit("producer did not start")
        for q in range(args.queues):
            for _ in range(args.per_queue):
                consumers.append((shmq.Consumer(f"{prefix}-{q}", start="latest"), q))
        result = asyncio.run(measure(consumers, proc, args.seconds, args.stagger))
        published = proc.stdout.readline() == "published\n"
        proc.stdin.write("end\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        for c, _ in consumers:
            c.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for q in range(args.queues):
            try:
                shmq.unlink(f"{prefix}-{q}", force=True)
            except shmq.QueueNotFound:
                pass

    n = len(consumers)
    woke = result["woke"]
    right = sum(1 for queue, index, _ in woke if queue == index)
    latencies = sorted(lat for _, _, lat in woke)
    p50 = latencies[len(latencies) // 2] / 1e6 if latencies else float("nan")
    ok = (published and result["pending"] == n and result["woken_while_idle"] == 0
          and result["not_woken"] == 0 and result["failed"] == 0 and right == n)
    print(f"Python {platform.python_version()}, {len(os.sched_getaffinity(0))} CPUs, "
          f"{platform.machine()}, Linux {platform.release()}; {args.queues} queues x "
          f"{args.per_queue} consumer(s), one asyncio loop, awaits started over {args.stagger:g} s, "
          f"RLIMIT_NOFILE {hard}\n")
    print("| awaiting consumers | threads before / idle / after | CPU s per s idle | "
          "voluntary context switches per s idle | woke with their message | "
          "publish to last wake | p50 publish to wake |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {n} | {threads_before} / {result['threads_idle']} / {result['threads_after']} | "
          f"{result['cpu_per_s']:.4f} | {result['wakeups_per_s']:.1f} | {right} of {n} | "
          f"{result['all_woke_ms']:.1f} ms | {p50:.1f} ms |")
    if not ok:
        print(f"\nFAILED: {result['pending']} of {n} awaiting after settling, "
              f"{result['woken_while_idle']} woke while idle, {result['not_woken']} never woke, "
              f"{result['failed']} raised, {right} with the right message", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

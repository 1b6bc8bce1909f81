"""Wake-up latency of `await Consumer.poll_async()` against a blocking `poll(timeout=None)`.

A producer in another process sends one message every few milliseconds,
each carrying `time.perf_counter_ns()` taken just before the send (on Linux
that is CLOCK_MONOTONIC, the same clock in every process). The consumer, idle
and asleep between messages, takes the clock again as soon as its call
returns the message: the difference is the wake-up latency. Modes alternate
in rounds so that drift in the machine's load affects all of them alike.

`poll_async` uses no thread: it registers the consumer's descriptor
(`Consumer.fileno()`, a socket the producer sends one datagram to when the
consumer has gone quiet) with the running loop (`add_reader`) and polls on
the loop when it turns readable. The modes:

    blocking      shmq `poll(timeout=None)`: a futex sleep, the baseline
    epoll         shmq, `select.epoll` on `fileno()`, then `poll()`: the
                  descriptor's kernel path without an event loop
    async         shmq `await poll_async()` on the default asyncio loop
    async-uvloop  the same on uvloop (when importable)
    zmq-async     pyzmq `zmq.asyncio`, PUSH -> PULL over ipc:// in /tmp,
                  `await sock.recv()` (when pyzmq is importable)
    dgram-async   no shmq: the stamp itself sent over a Unix datagram
                  socket, `await loop.sock_recv()`: what any descriptor
                  wake-up costs through the default asyncio loop

    python benchmarks/async_latency.py [--messages 2000] [--interval-ms 3] [--rounds 4]
                                       [--modes blocking,async,...]

Prints a Markdown table of percentiles in microseconds, and each mode's p50
over the blocking p50 of the same run. Run from a checkout with the
extension built (pip install -e .). Every queue, socket and ipc file it
makes is named after its process id and removed after its round.
"""
import argparse
import asyncio
import os
import platform
import select
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import shmq  # noqa: E402

try:
    import zmq
    import zmq.asyncio
except ImportError:  # the zmq-async row is left out
    zmq = None
try:
    import uvloop
except ImportError:  # the async-uvloop row is left out
    uvloop = None

STAMP = struct.Struct("<Q")

# Sends `count` stamped messages, `interval` seconds apart, once told to go,
# over the transport named first; closing the producer at the end ends a
# shmq stream.
PRODUCER = textwrap.dedent("""
    import socket, struct, sys, time
    transport, address, count, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    pack = struct.Struct("<Q").pack
    if transport == "shmq":
        import shmq
        p = shmq.Producer(address, slot_size=64, capacity=4096)
        send, close = p.publish, p.close
    elif transport == "zmq":
        import zmq
        ctx = zmq.Context()
        s = ctx.socket(zmq.PUSH)
        s.bind("ipc://" + address)
        send, close = s.send, lambda: (s.close(linger=-1), ctx.term())
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        target = "\\0" + address
        send, close = (lambda data: s.sendto(data, target)), s.close
    print("ready", flush=True)
    sys.stdin.readline()
    next_at = time.monotonic()
    for _ in range(count):
        next_at += interval
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        send(pack(time.perf_counter_ns()))
    close()
""")

WARMUP = 20  # first messages of a round: page faults, connection set-up

LABELS = {
    "blocking": "shmq `poll(timeout=None)` (blocking)",
    "epoll": "shmq `select.epoll` on `fileno()`, then `poll()`",
    "async": "shmq `await poll_async()` (asyncio)",
    "async-uvloop": "shmq `await poll_async()` (uvloop)",
    "zmq-async": "pyzmq `zmq.asyncio` PUSH/PULL ipc, `await recv()`",
    "dgram-async": "Unix datagram socket, `await loop.sock_recv()` (no shmq)",
}


def available_modes():
    modes = ["blocking", "epoll", "async"]
    if uvloop is not None:
        modes.append("async-uvloop")
    if zmq is not None:
        modes.append("zmq-async")
    modes.append("dgram-async")
    return modes


def _start_producer(transport, address, count, interval):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER, transport, address, str(count), str(interval)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    if proc.stdout.readline() != "ready\n":
        proc.kill()
        raise SystemExit(f"{transport} producer did not start")
    return proc


def _go(proc):
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _blocking_round(c, count):
    now, unpack = time.perf_counter_ns, STAMP.unpack
    out = []
    for _ in range(count):
        msg = c.poll(timeout=None)
        t = now()
        out.append(t - unpack(msg)[0])
    return out


def _epoll_round(c, count):
    now, unpack = time.perf_counter_ns, STAMP.unpack
    out = []
    with select.epoll() as ep:
        ep.register(c.fileno(), select.EPOLLIN)
        while len(out) < count:
            msg = c.poll()
            if msg is None:
                ep.poll()
                continue
            out.append(now() - unpack(msg)[0])
    return out


async def _async_round(c, count):
    now, unpack = time.perf_counter_ns, STAMP.unpack
    out = []
    for _ in range(count):
        msg = await c.poll_async()
        t = now()
        out.append(t - unpack(msg)[0])
    return out


async def _zmq_round(sock, count):
    now, unpack = time.perf_counter_ns, STAMP.unpack
    out = []
    for _ in range(count):
        msg = await sock.recv()
        t = now()
        out.append(t - unpack(msg)[0])
    return out


async def _dgram_round(sock, count):
    loop = asyncio.get_running_loop()
    now, unpack = time.perf_counter_ns, STAMP.unpack
    out = []
    for _ in range(count):
        msg = await loop.sock_recv(sock, 64)
        t = now()
        out.append(t - unpack(msg)[0])
    return out


def _run_shmq(mode, count, interval):
    name = f"async-latency-{os.getpid()}"
    proc = _start_producer("shmq", name, count, interval)
    try:
        with shmq.Consumer(name, start="earliest") as c:
            _go(proc)
            if mode == "blocking":
                samples = _blocking_round(c, count)
            elif mode == "epoll":
                samples = _epoll_round(c, count)
            elif mode == "async":
                samples = asyncio.run(_async_round(c, count))
            else:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    samples = runner.run(_async_round(c, count))
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
    return samples


def _run_zmq(count, interval):
    path = f"/tmp/shmq-async-latency-{os.getpid()}.ipc"
    proc = _start_producer("zmq", path, count, interval)
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.PULL)
    try:
        sock.connect("ipc://" + path)
        _go(proc)
        samples = asyncio.run(_zmq_round(sock, count))
        proc.wait(timeout=60)
    finally:
        sock.close(linger=0)
        ctx.term()
        if proc.poll() is None:
            proc.kill()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return samples


def _run_dgram(count, interval):
    address = f"shmq-async-latency-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("\0" + address)  # abstract: nothing to remove
        sock.setblocking(False)
        proc = _start_producer("dgram", address, count, interval)
        try:
            _go(proc)
            samples = asyncio.run(_dgram_round(sock, count))
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        sock.close()
    return samples


def run_round(mode, count, interval):
    total = count + WARMUP
    if mode == "zmq-async":
        samples = _run_zmq(total, interval)
    elif mode == "dgram-async":
        samples = _run_dgram(total, interval)
    else:
        samples = _run_shmq(mode, total, interval)
    return samples[WARMUP:]


def percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q / 100 * len(sorted_values)))]


def _round_ratios(round_p50, mode, base):
    """Each round's p50 over the base mode's p50 in the same round (they
    ran seconds apart): median (min-max), or "-" without the base mode."""
    if base not in round_p50:
        return "-"
    r = sorted(a / b for a, b in zip(round_p50[mode], round_p50[base]))
    mid = r[len(r) // 2] if len(r) % 2 else (r[len(r) // 2 - 1] + r[len(r) // 2]) / 2
    return f"{mid:.2f}x ({r[0]:.2f}-{r[-1]:.2f})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000, help="per mode (default 2000)")
    ap.add_argument("--interval-ms", type=float, default=3.0, help="between messages (default 3)")
    ap.add_argument("--rounds", type=int, default=4, help="alternations of the modes")
    ap.add_argument("--modes", default=",".join(available_modes()),
                    help="comma-separated, from: " + ", ".join(LABELS) + " (default: every one available)")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in LABELS:
            ap.error(f"unknown mode {m!r}")
        if m not in available_modes():
            ap.error(f"mode {m!r} needs a module that is not installed")
    per_round = max(1, args.messages // args.rounds)
    results = {m: [] for m in modes}
    round_p50 = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode in modes:
            samples = run_round(mode, per_round, args.interval_ms / 1000)
            results[mode] += samples
            round_p50[mode].append(percentile(sorted(samples), 50))

    cpus = len(os.sched_getaffinity(0))
    versions = [f"Python {platform.python_version()}"]
    if zmq is not None:
        versions.append(f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()})")
    if uvloop is not None:
        versions.append(f"uvloop {uvloop.__version__}")
    print(f"{', '.join(versions)}; {cpus} CPUs, {platform.machine()}; one message every "
          f"{args.interval_ms:g} ms from another process; consumer idle and asleep between messages; "
          f"{args.rounds} alternating rounds\n")
    print("| consumer call | messages | p50 (us) | p90 (us) | p99 (us) | max (us) | p50 / blocking p50 "
          "| the same, round by round: median (min-max) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    if "blocking" in results:
        base = percentile(sorted(results["blocking"]), 50)
    for mode, samples in results.items():
        s = sorted(samples)
        cells = [f"{percentile(s, q) / 1000:.1f}" for q in (50, 90, 99)] + [f"{s[-1] / 1000:.1f}"]
        ratio = f"{percentile(s, 50) / base:.2f}x" if base else "-"
        print(f"| {LABELS[mode]} | {len(s)} | " + " | ".join(cells) + f" | {ratio} | "
              f"{_round_ratios(round_p50, mode, 'blocking')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

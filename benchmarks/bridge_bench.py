"""shmq -> bridge -> shmq over loopback, against Zenoh alone and pyzmq PUB/SUB.

    python benchmarks/bridge_bench.py            # about a minute and a half
    python benchmarks/bridge_bench.py --json

For 64-byte and 4 KiB messages, two measurements of each path:

  rate     the source sends N messages as fast as it can; the sink reports
           delivered messages per second, from the first message's send time
           to the last arrival, and how many never arrived;
  latency  the source sends 5,000 messages per second, each stamped with
           CLOCK_MONOTONIC at send; the sink reports p50 and p99 of
           arrival - stamp.

Paths: shmq -> bridge out -> Zenoh -> bridge in -> shmq (the defaults;
--linger-us 1000; --batch 1: one sample per message); Zenoh alone (a Python publisher,
one put per message, to a Python subscriber); pyzmq PUB -> SUB over TCP.
Every side is its own process; a peer whose package is missing is skipped.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # the checkout's shmq, as the subprocesses get it
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
KEY = "bench/bridge"
RATE_COUNT = {64: 300_000, 4096: 40_000}
LATENCY_RATE, LATENCY_SECONDS = 5_000, 1.5


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _message(size, stamp):
    return stamp.to_bytes(8, "little") + bytes(size - 8)


def _send(put, size, mode, count):
    """Send count messages (rate) or LATENCY_RATE a second for LATENCY_SECONDS (latency)."""
    now = time.monotonic_ns
    if mode == "rate":
        filler = bytes(size - 8)
        for _ in range(count):
            put(now().to_bytes(8, "little") + filler)
        return count
    period = 1e9 / LATENCY_RATE
    n = int(LATENCY_RATE * LATENCY_SECONDS)
    t0 = now()
    for i in range(n):
        due = t0 + i * period
        while now() < due:
            pass
        put(_message(size, now()))
    return n


class _Sink:
    def __init__(self, expect):
        self.expect, self.count, self.first, self.last, self.lat = expect, 0, None, None, []

    def take(self, msg):
        t = time.monotonic_ns()
        stamp = int.from_bytes(msg[:8], "little")
        if self.first is None:
            self.first = stamp
        self.last = t
        self.count += 1
        self.lat.append(t - stamp)

    def report(self):
        lat = sorted(self.lat)
        out = {"received": self.count}
        if self.count:
            out["rate"] = self.count / max((self.last - self.first) / 1e9, 1e-9)
            out["p50_us"] = lat[len(lat) // 2] / 1e3
            out["p99_us"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e3
        print(json.dumps(out), flush=True)

    def done(self, idle_since):
        return self.count >= self.expect or (self.count and time.monotonic() - idle_since > 2.0)


def _zconf(listen=None, connect=None):
    import zenoh

    conf = zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("scouting/multicast/enabled", "false")
    conf.insert_json5("transport/shared_memory/enabled", "false")
    if listen:
        conf.insert_json5("listen/endpoints", json.dumps([listen]))
    if connect:
        conf.insert_json5("connect/endpoints", json.dumps([connect]))
    return conf


def role(argv):
    """One side of one measurement, in its own process."""
    kind, endpoint, size, mode, count = argv[0], argv[1], int(argv[2]), argv[3], int(argv[4])
    deadline = time.monotonic() + 30
    if kind == "shmq-sink":
        import shmq

        sink = _Sink(count)
        while True:
            try:
                c = shmq.Consumer(endpoint, start="latest")
                break
            except (shmq.QueueNotFound, shmq.IncompatibleQueue):
                time.sleep(0.02)
        print("ready", flush=True)
        idle = time.monotonic()
        while not sink.done(idle) and time.monotonic() < deadline:
            msgs = c.poll_many(1024, 0.2)
            if msgs:
                idle = time.monotonic()
                for m in msgs:
                    sink.take(m)
        sink.report()
    elif kind == "zenoh-sink":
        import threading

        import zenoh

        sink, lock = _Sink(count), threading.Lock()

        def on(sample):
            with lock:
                sink.take(sample.payload.to_bytes())

        s = zenoh.open(_zconf(listen=endpoint))
        s.declare_subscriber(KEY, on)
        print("ready", flush=True)
        while True:
            time.sleep(0.1)
            with lock:
                if sink.done(sink.last / 1e9 if sink.last else time.monotonic()) or time.monotonic() > deadline:
                    break
        with lock:
            sink.report()
        s.close()
    elif kind == "zenoh-source":
        import zenoh

        s = zenoh.open(_zconf(connect=endpoint))
        pub = s.declare_publisher(KEY, congestion_control=zenoh.CongestionControl.BLOCK)
        while not pub.matching_status.matching and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        _send(pub.put, size, mode, count)
        time.sleep(0.5)
        s.close()
    elif kind == "zmq-sink":
        import zmq

        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 1_000_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.bind(endpoint)
        print("ready", flush=True)
        sink, idle = _Sink(count), time.monotonic()
        while not sink.done(idle) and time.monotonic() < deadline:
            if sub.poll(200):
                sink.take(sub.recv())
                idle = time.monotonic()
        sink.report()
        sub.close(0)
        ctx.term()
    elif kind == "zmq-source":
        import zmq

        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 1_000_000)
        pub.connect(endpoint)
        time.sleep(0.5)   # the slow joiner: let the subscription arrive
        _send(pub.send, size, mode, count)
        pub.close(linger=5000)
        ctx.term()


def _spawn(*args):
    return subprocess.Popen([sys.executable, *args], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def _role(*args):
    p = _spawn(__file__, "--role", *map(str, args))
    return p


def _wait_ready(p):
    assert p.stdout.readline().strip() == "ready"


def _result(sink, others=()):
    try:
        out, _ = sink.communicate(timeout=60)
        lines = out.strip().splitlines()
        return json.loads(lines[-1]) if lines else {"received": 0}
    finally:
        for p in (sink, *others):
            if p.poll() is None:
                p.kill()
            p.wait(10)
            if p.stdout:
                p.stdout.close()


def run_bridge(size, mode, extra):
    import shmq
    from shmq import bridge

    tag = f"bench-{os.getpid()}-{size}-{mode}-{len(extra)}"
    src, dst = tag + "-src", tag + "-dst"
    count = RATE_COUNT[size] if mode == "rate" else int(LATENCY_RATE * LATENCY_SECONDS)
    capacity = 1 << 20 if size == 64 else 1 << 16
    port = _port()
    procs = []
    try:
        with shmq.Producer(src, slot_size=size, capacity=capacity) as p:
            procs.append(_spawn("-m", "shmq.bridge", "out", src, "--key", KEY, "-q",
                                "--listen", f"tcp/127.0.0.1:{port}", *extra))
            procs.append(_spawn("-m", "shmq.bridge", "in", KEY, "--to", dst, "-q",
                                "--connect", f"tcp/127.0.0.1:{port}", "--slot-size", str(size),
                                "--capacity", str(capacity)))
            sink = _role("shmq-sink", dst, size, mode, count)
            _wait_ready(sink)
            # The route is up once a probe crosses; the sink takes the first as its start.
            probe = shmq.Consumer(dst, start="latest")
            while probe.poll(0.05) is None:
                p.publish(_message(size, 0))
            probe.close()
            time.sleep(0.3)
            sink.kill()
            sink.wait()
            sink.stdout.close()
            sink = _role("shmq-sink", dst, size, mode, count)
            _wait_ready(sink)
            _send(p.publish, size, mode, count)
            result = _result(sink, procs)
    finally:
        for name in (src, dst):
            try:
                shmq.unlink(name, force=True)
            except shmq.QueueNotFound:
                pass
            bridge.remove_status(name)   # bridge in's, and bridge out's saved stream
    result["lost"] = count - result["received"]
    return result


def run_peer(kind, size, mode):
    count = RATE_COUNT[size] if mode == "rate" else int(LATENCY_RATE * LATENCY_SECONDS)
    port = _port()
    endpoint = f"tcp/127.0.0.1:{port}" if kind == "zenoh" else f"tcp://127.0.0.1:{port}"
    sink = _role(f"{kind}-sink", endpoint, size, mode, count)
    _wait_ready(sink)
    source = _role(f"{kind}-source", endpoint, size, mode, count)
    result = _result(sink, [source])
    result["lost"] = count - result["received"]
    return result


def _have(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--role", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        return role(args.role)
    if not _have("zenoh"):
        sys.exit("bridge_bench: needs eclipse-zenoh (pip install 'shmq[bridge]')")
    paths = [("bridge (defaults)", lambda s, m: run_bridge(s, m, [])),
             ("bridge --linger-us 1000", lambda s, m: run_bridge(s, m, ["--linger-us", "1000"])),
             ("bridge --batch 1", lambda s, m: run_bridge(s, m, ["--batch", "1"])),
             ("Zenoh alone", lambda s, m: run_peer("zenoh", s, m))]
    if _have("zmq"):
        paths.append(("pyzmq PUB/SUB", lambda s, m: run_peer("zmq", s, m)))
    rows = []
    for size in (64, 4096):
        for label, fn in paths:
            rate = fn(size, "rate")
            lat = fn(size, "latency")
            rows.append({"path": label, "size": size, "rate": rate.get("rate", 0), "lost": rate["lost"],
                         "p50_us": lat.get("p50_us"), "p99_us": lat.get("p99_us"),
                         "latency_lost": lat["lost"]})
            if not args.json:
                r = rows[-1]
                print(f"{size:>5} B  {label:<26} {r['rate']:>12,.0f} msgs/s  lost {r['lost']:>7}  "
                      f"p50 {r['p50_us'] or 0:>8.0f} us  p99 {r['p99_us'] or 0:>8.0f} us", flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()

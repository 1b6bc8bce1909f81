"""Zero-copy throughput: big messages, one producer to one or two consumers.

    python benchmarks/zero_copy_bench.py [--seconds 0.3] [--rounds 4] [--json out.json]
                                         [--plot docs/zero-copy.png]

Every row moves the same stream: the producer puts one prepared buffer (or,
in the "compute" row, a value computed from it) into shared memory for every
message, and every consumer reads the whole payload (numpy sum of a uint64
view of it). Rows:

  shmq copy           publish(bytes) / poll() -> bytes, then sum
  shmq poll_into      publish(bytes) / poll_into(a preallocated numpy array), then sum
  shmq zero-copy      loan: np.copyto(frombuffer(buf), frame) / view: sum in place
  shmq compute        loan: np.add(frame, seq, out=frombuffer(buf)) / view: sum in place
  iceoryx2 loan       loan_uninit: np.copyto(payload in place) / receive: sum in place
  memcpy bound        np.copyto between two preallocated buffers, one thread

shmq queues are lossless (registered consumers; the producer waits for the
slowest), iceoryx2 services block the publisher (safe overflow off,
RetryUntilDelivered), so every message sent is read by every consumer and
throughput is messages read per second by the slowest consumer, times the
size. Each (shape, size, row) measurement runs fresh processes for
--seconds; the rows of one round run one after the other, the rounds are
interleaved, and the table shows the median MB/s and the min..max over
rounds. Results go to stdout as a Markdown table (and --json, --plot).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

SIZES = [64 * 1024, 1 << 20, 4 << 20]
SHAPES = [1, 2]
ROWS = ["shmq copy", "shmq poll_into", "shmq zero-copy", "shmq compute", "iceoryx2 loan"]
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def capacity_for(size):
    return max(2, (16 << 20) // size)  # the same 16 MiB of ring at every size (4 MiB: 4 slots)


# ------------------------------------------------------------------ roles


def _iox_service(name, size, consumers, create):
    import ctypes

    import iceoryx2 as iox2
    iox2.set_log_level(iox2.LogLevel.Error)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    builder = (node.service_builder(iox2.ServiceName.new(name))
               .publish_subscribe(ctypes.c_uint8 * size)
               .max_subscribers(max(consumers, 2))
               .subscriber_max_buffer_size(capacity_for(size))
               .history_size(0)
               .enable_safe_overflow(False))
    return node, (builder.create() if create else builder.open()), ctypes


def produce(row, name, size, consumers, seconds):
    frame = np.arange(size // 8, dtype=np.uint64)
    raw = frame.tobytes()
    sent = 0
    if row == "iceoryx2 loan":
        import iceoryx2 as iox2
        node, service, ctypes = _iox_service(name, size, consumers, True)
        pub = (service.publisher_builder()
               .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered).create())
        print("ready", flush=True)
        sys.stdin.readline()  # every consumer subscribed
        arr_t = ctypes.c_uint8 * size
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            sample = pub.loan_uninit()
            out = np.frombuffer(memoryview(arr_t.from_address(sample.payload_ptr)), dtype=np.uint64)
            np.copyto(out, frame)
            del out
            sample.assume_init().send()
            sent += 1
        stop = np.zeros(size // 8, dtype=np.uint64)
        stop[0] = np.uint64(2**64 - 1)  # the end mark
        sample = pub.loan_uninit()
        np.copyto(np.frombuffer(memoryview(arr_t.from_address(sample.payload_ptr)),
                                dtype=np.uint64), stop)
        sample.assume_init().send()
        time.sleep(0.3)
        print("sent", sent, flush=True)
        return
    import shmq
    p = shmq.Producer(name, slot_size=size, capacity=capacity_for(size), lossless=True,
                      unlink_on_close=True)
    print("ready", flush=True)
    sys.stdin.readline()
    end = time.perf_counter() + seconds
    if row in ("shmq copy", "shmq poll_into"):
        while time.perf_counter() < end:
            p.publish(raw, timeout=10)
            sent += 1
    elif row == "shmq zero-copy":
        while time.perf_counter() < end:
            with p.loan(size, timeout=10) as buf:
                np.copyto(np.frombuffer(buf, dtype=np.uint64), frame)
            sent += 1
    else:  # compute into the loan
        while time.perf_counter() < end:
            with p.loan(size, timeout=10) as buf:
                np.add(frame, np.uint64(sent), out=np.frombuffer(buf, dtype=np.uint64))
            sent += 1
    p.close()  # ends the stream: consumers stop once they read everything
    print("sent", sent, flush=True)


def consume(row, name, size, consumers):
    got = 0
    check = 0
    if row == "iceoryx2 loan":
        node, service, ctypes = _iox_service(name, size, consumers, False)
        sub = service.subscriber_builder().buffer_size(capacity_for(size)).create()
        arr_t = ctypes.c_uint8 * size
        print("ready", flush=True)
        t0 = None
        while True:
            sample = sub.receive()
            if sample is None:
                continue
            a = np.frombuffer(memoryview(arr_t.from_address(sample.payload_ptr)), dtype=np.uint64)
            if a[0] == np.uint64(2**64 - 1):
                del a
                sample.delete()
                break
            check ^= int(a.sum())
            del a
            sample.delete()
            if t0 is None:
                t0 = time.perf_counter()
            got += 1
        t1 = time.perf_counter()
    else:
        import shmq
        c = shmq.Consumer(name, start="earliest")
        print("ready", flush=True)
        t0 = None
        # A blocking read waits past the end of the stream (for a producer
        # to reopen it), so wait in slices and stop once it ended.
        if row == "shmq copy":
            while True:
                msg = c.poll(timeout=0.1)
                if msg is None:
                    if c.ended:
                        break
                    continue
                check ^= int(np.frombuffer(msg, dtype=np.uint64).sum())
                got += 1
                if t0 is None:
                    t0 = time.perf_counter()
        elif row == "shmq poll_into":
            out = np.empty(size // 8, dtype=np.uint64)
            while True:
                if c.poll_into(out, timeout=0.1) is None:
                    if c.ended:
                        break
                    continue
                check ^= int(out.sum())
                got += 1
                if t0 is None:
                    t0 = time.perf_counter()
        else:
            while True:
                with c.view(timeout=0.1) as msg:
                    if msg is not None:
                        check ^= int(np.frombuffer(msg, dtype=np.uint64).sum())
                if msg is None:
                    if c.ended:
                        break
                    continue
                got += 1
                if t0 is None:
                    t0 = time.perf_counter()
        t1 = time.perf_counter()
        assert c.lost == 0
        c.close()
    # The first message starts the clock, so got - 1 messages were timed.
    rate = (got - 1) / (t1 - t0) if got > 1 and t1 > t0 else 0.0
    print(json.dumps({"got": got, "rate": rate, "check": check}), flush=True)


# ---------------------------------------------------------------- driver


def run_roles(script, produce, consume, consumers, size):
    """Runs `script --role produce *produce` and `consumers` of `script
    --role consume *consume`, starts them together, and returns the slowest
    consumer's MB/s, the consumers' results and the producer's output."""
    def spawn(*args):
        return subprocess.Popen([sys.executable, script, *map(str, args)], env=ENV,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    prod = spawn("--role", "produce", *produce)
    procs = [prod]
    try:
        assert prod.stdout.readline().strip() == "ready"
        cons = [spawn("--role", "consume", *consume) for _ in range(consumers)]
        procs += cons
        for c in cons:
            assert c.stdout.readline().strip() == "ready"
        time.sleep(0.05)  # iceoryx2 subscribers connect on the publisher's next call
        prod.stdin.write("go\n")
        prod.stdin.flush()
        results = [json.loads(c.communicate(timeout=60)[0].strip().splitlines()[-1]) for c in cons]
        out = prod.communicate(timeout=30)[0]
        return min(r["rate"] for r in results) * size / 1e6, results, out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def measure(row, size, consumers, seconds, seq):
    name = f"zcb-{os.getpid()}-{seq}".replace("-", "_" if row.startswith("iceoryx2") else "-")
    return run_roles(__file__, (row, name, size, consumers, seconds),
                     (row, name, size, consumers), consumers, size)[0]


def memcpy_bound(size, seconds):
    src = np.arange(size // 8, dtype=np.uint64)
    dst = np.empty_like(src)
    n, t0 = 0, time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        np.copyto(dst, src)
        n += 1
    return n * size / (time.perf_counter() - t0) / 1e6


def iceoryx2_available():
    try:
        import iceoryx2  # noqa: F401
        from importlib.metadata import version
        return version("iceoryx2")
    except ImportError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json")
    ap.add_argument("--plot")
    ap.add_argument("--role", nargs="+")
    args = ap.parse_args()
    if args.role:
        role, row, name, size, consumers, *rest = args.role
        if role == "produce":
            produce(row, name, int(size), int(consumers), float(rest[0]))
        else:
            consume(row, name, int(size), int(consumers))
        return
    iox = iceoryx2_available()
    rows = ROWS if iox else [r for r in ROWS if not r.startswith("iceoryx2")]
    samples = {}  # (shape, size, row) -> [MB/s]
    seq = 0
    started = time.monotonic()
    for rnd in range(args.rounds):
        for size in SIZES:
            samples.setdefault((0, size, "memcpy bound"), []).append(memcpy_bound(size, args.seconds))
            for consumers in SHAPES:
                order = rows if rnd % 2 == 0 else rows[::-1]  # interleaved, both orders
                for row in order:
                    seq += 1
                    try:
                        mbs = measure(row, size, consumers, args.seconds, seq)
                    except Exception as e:  # noqa: BLE001 - reported, the run goes on
                        print(f"{row} {size} 1P->{consumers}C: {e!r}", file=sys.stderr)
                        mbs = float("nan")
                    samples.setdefault((consumers, size, row), []).append(mbs)
        print(f"round {rnd + 1}/{args.rounds} done at {time.monotonic() - started:.0f} s",
              file=sys.stderr)
    for leftover in os.listdir("/dev/shm"):
        if leftover.startswith("iox2_") and "zcb_" in leftover:
            try:
                os.unlink(os.path.join("/dev/shm", leftover))
            except OSError:
                pass
    table = {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in samples.items()}
    summary = {}
    lines = ["| shape | row | " + " | ".join(f"{s // 1024} KiB" for s in SIZES) + " |",
             "|---|---|" + "---|" * len(SIZES)]
    for consumers in [0] + SHAPES:
        for row in (["memcpy bound"] if consumers == 0 else rows):
            cells = []
            for size in SIZES:
                v = [x for x in samples[(consumers, size, row)] if x == x]
                med = statistics.median(v) if v else float("nan")
                summary[(consumers, size, row)] = med
                cells.append(f"{med:,.0f} ({min(v):,.0f}..{max(v):,.0f})" if v else "n/a")
            shape = "1 thread" if consumers == 0 else f"1P->{consumers}C"
            lines.append(f"| {shape} | {row} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print()
    for consumers in SHAPES:
        for size in SIZES:
            zc = summary[(consumers, size, "shmq zero-copy")]
            print(f"1P->{consumers}C {size // 1024} KiB: zero-copy/memcpy "
                  f"{zc / summary[(0, size, 'memcpy bound')]:.2f}x, zero-copy/copy "
                  f"{zc / summary[(consumers, size, 'shmq copy')]:.2f}x, zero-copy/poll_into "
                  f"{zc / summary[(consumers, size, 'shmq poll_into')]:.2f}x"
                  + (f", zero-copy/iceoryx2 {zc / summary[(consumers, size, 'iceoryx2 loan')]:.2f}x"
                     if iox else ""))
    print(f"\niceoryx2: {iox or 'not installed (pip install iceoryx2): row skipped'}; "
          f"cpus={os.cpu_count()} loadavg={os.getloadavg()} "
          f"time={time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": table, "iceoryx2": iox, "rounds": args.rounds,
                       "seconds": args.seconds}, f, indent=1)
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed: no plot", file=sys.stderr)
            return
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        for ax, consumers in zip(axes, SHAPES):
            for row in ["memcpy bound"] + rows:
                key = 0 if row == "memcpy bound" else consumers
                ys = [summary[(key, s, row)] for s in SIZES]
                ax.plot([s / 1024 for s in SIZES], ys, marker="o",
                        linestyle="--" if row == "memcpy bound" else "-", label=row)
            ax.set_xscale("log", base=2)
            ax.set_xticks([s / 1024 for s in SIZES], [f"{s // 1024} KiB" for s in SIZES])
            ax.set_title(f"1 producer -> {consumers} consumer{'s' if consumers > 1 else ''}")
            ax.set_xlabel("message size")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("MB/s per consumer (median)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()

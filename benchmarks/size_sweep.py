"""Throughput against message size, 64 B to 8 MiB, one producer to one consumer.

    python benchmarks/size_sweep.py [--seconds 0.3] [--rounds 3] [--sizes 64,1024,...]
                                    [--rows ROW,ROW] [--json benchmarks/size_results.json]
                                    [--plot docs/sizes.png]
    python benchmarks/size_sweep.py --render benchmarks/size_results.json --plot docs/sizes.png

Every row moves the same stream: one prepared payload (a read-only array of
uint64 words) per message, and the consumer sums every word of every message
(numpy sum over a uint64 view) and fails the run unless it got every message
sent with the right sum. Every row is lossless. Rows:

  shmq copy        publish(view of the payload) / poll() -> bytes, then sum
  shmq zero-copy   loan(size): memcpy the payload in / view(): sum in place
                   Both on ONE queue configuration for every size:
                   slot_size=1024, capacity=32768 (32 MiB of ring),
                   max_message_size=8 MiB, lossless.
  iceoryx2 loan    a service per size (payload c_uint8 * size), loan_uninit:
                   np.copyto into it / receive: sum in place; subscriber buffer
                   min(4096, max(2, 32 MiB / size)) samples; the publisher blocks
                   (safe overflow off, RetryUntilDelivered), as in zero_copy_bench.py
  pyzmq ipc        PUSH/PULL over ipc://, send(copy=False) (pyzmq copies under
                   its 64 KiB copy_threshold), recv(copy=False), sum the frame;
                   SNDHWM = RCVHWM = min(1000, max(2, 16 MiB / size)) messages,
                   so that at most about 32 MiB is queued, as in shmq's ring
  mp.Queue         multiprocessing.Queue(maxsize=min(4096, max(2, 32 MiB / size)))
                   of bytes (pickled by its feeder thread), consumer forked
  memcpy bound     np.copyto between two buffers in one thread (no IPC)

Each (size, row) runs fresh processes for --seconds; rows run one after the
other within a round, in alternating order; the table shows the median
MB/s and min..max over rounds. A consumer's clock runs from its first
message to its last. No pinning.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
MiB = 1 << 20
SIZES = [64, 1024, 16 * 1024, 256 * 1024, MiB, 4 * MiB, 8 * MiB]
ROWS = ["shmq copy", "shmq zero-copy", "iceoryx2 loan", "pyzmq ipc", "mp.Queue"]
SHMQ_CFG = dict(slot_size=1024, capacity=32768, max_message_size=8 * MiB)
END = np.uint64(2**64 - 1)


def payload(size):
    return np.arange(1, size // 8 + 1, dtype=np.uint64)


def queue_depth(size, budget=32 * MiB, most=4096):
    return min(most, max(2, budget // size))


def batch(size):
    """Messages between two looks at the clock."""
    return 64 if size < 64 * 1024 else 1


# ------------------------------------------------------------------ roles


def _iox_service(name, size, create):
    import ctypes

    import iceoryx2 as iox2
    iox2.set_log_level(iox2.LogLevel.Error)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    builder = (node.service_builder(iox2.ServiceName.new(name))
               .publish_subscribe(ctypes.c_uint8 * size)
               .max_subscribers(2)
               .subscriber_max_buffer_size(queue_depth(size))
               .history_size(0)
               .enable_safe_overflow(False))
    return node, (builder.create() if create else builder.open()), ctypes


def produce(row, name, size, seconds):
    frame = payload(size)
    view = memoryview(frame).cast("B")
    n = batch(size)
    sent = 0
    go = sys.stdin.readline
    if row == "iceoryx2 loan":
        import iceoryx2 as iox2
        node, service, ctypes = _iox_service(name, size, True)
        pub = (service.publisher_builder()
               .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered).create())
        print("ready", flush=True)
        go()
        arr_t = ctypes.c_uint8 * size
        end = time.perf_counter() + seconds
        while True:
            for _ in range(n):
                sample = pub.loan_uninit()
                out = np.frombuffer(memoryview(arr_t.from_address(sample.payload_ptr)),
                                    dtype=np.uint64)
                np.copyto(out, frame)
                del out
                sample.assume_init().send()
            sent += n
            if time.perf_counter() >= end:
                break
        sample = pub.loan_uninit()
        np.frombuffer(memoryview(arr_t.from_address(sample.payload_ptr)), dtype=np.uint64)[0] = END
        sample.assume_init().send()
        time.sleep(0.3)
    elif row.startswith("shmq"):
        import shmq
        p = shmq.Producer(name, lossless=True, unlink_on_close=True, **SHMQ_CFG)
        print("ready", flush=True)
        go()
        end = time.perf_counter() + seconds
        if row == "shmq zero-copy":
            loan = p.loan
            while True:
                for _ in range(n):
                    with loan(size, timeout=10) as buf:
                        buf[:] = view
                sent += n
                if time.perf_counter() >= end:
                    break
        else:
            publish = p.publish
            while True:
                for _ in range(n):
                    publish(view, timeout=10)
                sent += n
                if time.perf_counter() >= end:
                    break
        p.close()  # ends the stream
    elif row == "pyzmq ipc":
        import zmq
        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, queue_depth(size, 16 * MiB, 1000))
        s.bind(f"ipc:///tmp/{name}")
        print("ready", flush=True)
        go()
        send = s.send
        end = time.perf_counter() + seconds
        while True:
            for _ in range(n):
                send(view, copy=False)
            sent += n
            if time.perf_counter() >= end:
                break
        s.send(b"")
    print(json.dumps({"sent": sent}), flush=True)
    # Stay up until the consumer is done: libzmq 4.3.5 dropped the last few
    # hundred queued messages when the PUSH side closed while its PULL peer
    # sat at the high-water mark, linger=-1 and ctx.term() notwithstanding.
    go()
    if row == "pyzmq ipc":
        s.close(linger=0)
        os.unlink(f"/tmp/{name}")


def consume(row, name, size):
    got = 0
    check = 0
    t0 = t1 = None
    clock = time.perf_counter
    if row == "iceoryx2 loan":
        node, service, ctypes = _iox_service(name, size, False)
        sub = service.subscriber_builder().buffer_size(queue_depth(size)).create()
        arr_t = ctypes.c_uint8 * size
        print("ready", flush=True)
        receive = sub.receive
        while True:
            sample = receive()
            if sample is None:
                continue
            a = np.frombuffer(memoryview(arr_t.from_address(sample.payload_ptr)), dtype=np.uint64)
            if a[0] == END:
                del a
                sample.delete()
                break
            check += int(a.sum())
            del a
            sample.delete()
            t1 = clock()
            if t0 is None:
                t0 = t1
            got += 1
    elif row.startswith("shmq"):
        import shmq
        c = shmq.Consumer(name, start="earliest")
        assert c.registered
        print("ready", flush=True)
        if row == "shmq zero-copy":
            view = c.view
            while True:
                with view(timeout=0.1) as msg:
                    if msg is not None:
                        check += int(np.frombuffer(msg, dtype=np.uint64).sum())
                if msg is None:
                    if c.ended:
                        break
                    continue
                t1 = clock()
                if t0 is None:
                    t0 = t1
                got += 1
        else:
            poll = c.poll
            while True:
                msg = poll(timeout=0.1)
                if msg is None:
                    if c.ended:
                        break
                    continue
                check += int(np.frombuffer(msg, dtype=np.uint64).sum())
                t1 = clock()
                if t0 is None:
                    t0 = t1
                got += 1
        assert c.lost == 0
        c.close()
    elif row == "pyzmq ipc":
        import zmq
        s = zmq.Context.instance().socket(zmq.PULL)
        s.setsockopt(zmq.RCVHWM, queue_depth(size, 16 * MiB, 1000))
        s.connect(f"ipc:///tmp/{name}")
        print("ready", flush=True)
        recv = s.recv
        while True:
            buf = recv(copy=False).buffer
            if len(buf) == 0:
                break
            check += int(np.frombuffer(buf, dtype=np.uint64).sum())
            t1 = clock()
            if t0 is None:
                t0 = t1
            got += 1
        s.close()
    return _result(got, check, t0, t1)


def _result(got, check, t0, t1):
    rate = (got - 1) / (t1 - t0) if got > 1 and t1 > t0 else 0.0
    out = {"got": got, "check": check % (1 << 64), "rate": rate}
    print(json.dumps(out), flush=True)
    return out


def _mp_consume(q, conn):
    got = 0
    check = 0
    t0 = t1 = None
    clock = time.perf_counter
    get = q.get
    while True:
        msg = get()
        if msg is None:
            break
        check += int(np.frombuffer(msg, dtype=np.uint64).sum())
        t1 = clock()
        if t0 is None:
            t0 = t1
        got += 1
    rate = (got - 1) / (t1 - t0) if got > 1 and t1 > t0 else 0.0
    conn.send({"got": got, "check": check % (1 << 64), "rate": rate})


def run_mp_queue(size, seconds):
    """mp.Queue needs a forked consumer: this role process is the producer."""
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    q = ctx.Queue(maxsize=queue_depth(size))
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_mp_consume, args=(q, child))
    proc.start()
    msg = payload(size).tobytes()
    n = batch(size)
    put = q.put
    sent = 0
    time.sleep(0.05)
    end = time.perf_counter() + seconds
    while True:
        for _ in range(n):
            put(msg)
        sent += n
        if time.perf_counter() >= end:
            break
    put(None)
    q.close()
    q.join_thread()
    res = parent.recv()
    proc.join()
    res["sent"] = sent
    print(json.dumps(res), flush=True)


# ---------------------------------------------------------------- driver


def _spawn(*args):
    return subprocess.Popen([sys.executable, __file__, *map(str, args)], env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def measure(row, size, seconds, seq):
    """MB/s delivered, after checking the consumer got every message intact."""
    name = f"sweep-{os.getpid()}-{seq}".replace("-", "_" if row.startswith("iceoryx2") else "-")
    want_one = int(payload(size).sum())
    if row == "mp.Queue":
        p = _spawn("--role", "mpq", row, name, size, seconds)
        try:
            res = json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1])
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
        sent, results = res["sent"], [res]
    else:
        prod = _spawn("--role", "produce", row, name, size, seconds)
        procs = [prod]
        try:
            assert prod.stdout.readline().strip() == "ready"
            cons = _spawn("--role", "consume", row, name, size)
            procs.append(cons)
            assert cons.stdout.readline().strip() == "ready"
            time.sleep(0.05)  # iceoryx2 subscribers connect on the publisher's next call
            prod.stdin.write("go\n")
            prod.stdin.flush()
            results = [json.loads(cons.communicate(timeout=120)[0].strip().splitlines()[-1])]
            sent = json.loads(prod.stdout.readline())["sent"]
            prod.stdin.write("exit\n")
            prod.stdin.flush()
            prod.wait(timeout=30)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
    want = (sent * want_one) % (1 << 64)
    for r in results:
        if r["got"] != sent or r["check"] != want:
            verdict = "ok" if r["check"] == want else "WRONG"
            raise RuntimeError(f"{row} {size} B: got {r['got']} of {sent}, sum {verdict}")
    return min(r["rate"] for r in results) * size / 1e6


def memcpy_bound(size, seconds):
    src = payload(size)
    dst = np.empty_like(src)
    n, t0 = 0, time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for _ in range(batch(size)):
            np.copyto(dst, src)
        n += batch(size)
    return n * size / (time.perf_counter() - t0) / 1e6


def available(row):
    mod = {"iceoryx2 loan": "iceoryx2", "pyzmq ipc": "zmq"}.get(row)
    if mod is None:
        return True
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def label(size):
    return f"{size // MiB} MiB" if size >= MiB else f"{size // 1024} KiB" if size >= 1024 \
        else f"{size} B"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", help="comma-separated sizes in bytes (multiples of 8)")
    ap.add_argument("--rows", help="comma-separated row names")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    ap.add_argument("--render", metavar="JSON", help="tables and plot from an earlier --json")
    ap.add_argument("--role", nargs="+")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        samples = {(k.rsplit("|", 1)[0], int(k.rsplit("|", 1)[1])): v
                   for k, v in saved["samples"].items()}
        report(saved["rows"], saved["sizes"], samples, saved, args.plot)
        return
    if args.role:
        role, row, name, size, *rest = args.role
        if role == "produce":
            produce(row, name, int(size), float(rest[0]))
        elif role == "mpq":
            run_mp_queue(int(size), float(rest[0]))
        else:
            consume(row, name, int(size))
        return
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else SIZES
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else ROWS
    skipped = [r for r in rows if not available(r)]
    for r in skipped:
        print(f"{r}: not installed, skipped", file=sys.stderr)
    rows = [r for r in rows if r not in skipped]
    started = time.monotonic()
    load0 = os.getloadavg()
    samples = {}
    seq = 0
    for rnd in range(args.rounds):
        for size in sizes:
            samples.setdefault(("memcpy bound", size), []).append(memcpy_bound(size, args.seconds))
            for row in (rows if rnd % 2 == 0 else rows[::-1]):
                seq += 1
                try:
                    mbs = measure(row, size, args.seconds, seq)
                except Exception as e:  # noqa: BLE001 - reported, the run goes on
                    print(f"{row} {size} B: {e!r}", file=sys.stderr)
                    mbs = float("nan")
                samples.setdefault((row, size), []).append(mbs)
        print(f"round {rnd + 1}/{args.rounds} done at {time.monotonic() - started:.0f} s",
              file=sys.stderr)
    load1 = os.getloadavg()
    for leftover in os.listdir("/dev/shm"):
        if leftover.startswith("iox2_") and "sweep_" in leftover:
            try:
                os.unlink(os.path.join("/dev/shm", leftover))
            except OSError:
                pass
    versions = {}
    for dist in ("iceoryx2", "pyzmq"):
        try:
            from importlib.metadata import version
            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001
            versions[dist] = None
    meta = {"sizes": sizes, "rows": rows, "shmq": SHMQ_CFG,
            "rounds": args.rounds, "seconds": args.seconds,
            "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "loadavg": [load0, load1], "versions": versions,
            "time_s": round(time.monotonic() - started),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": {f"{r}|{s}": v for (r, s), v in samples.items()}, **meta},
                      f, indent=1)
    report(rows, sizes, samples, meta, args.plot)


def report(rows, sizes, samples, meta, plot_path):
    summary = {}
    lines = ["| row | " + " | ".join(label(s) for s in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for row in rows + ["memcpy bound"]:
        cells = []
        for size in sizes:
            v = [x for x in samples[(row, size)] if x == x]
            summary[(row, size)] = statistics.median(v) if v else float("nan")
            cells.append(f"{statistics.median(v):,.0f} ({min(v):,.0f}..{max(v):,.0f})"
                         if v else "failed")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    print("MB/s delivered to the consumer, median (min..max)\n")
    print("\n".join(lines))
    if "shmq zero-copy" in rows:
        print()
        for other in [r for r in rows if r != "shmq zero-copy"]:
            print(f"shmq zero-copy / {other}: " + ", ".join(
                f"{label(s)} {summary[('shmq zero-copy', s)] / summary[(other, s)]:.2f}x"
                for s in sizes))
    load0, load1 = meta["loadavg"]
    print(f"\ncpus={meta['cpus']} loadavg start={load0[0]:.2f} end={load1[0]:.2f} "
          f"versions={meta['versions']} rounds={meta['rounds']} seconds={meta['seconds']} "
          f"date={meta['date']}")
    if plot_path:
        plot(rows, sizes, summary, samples, plot_path, meta)


STYLE = {  # shmq warm and thick, peers cool (Okabe-Ito), as the suite's plots
    "shmq copy": dict(color="#E69F00", lw=2.2, marker="o"),
    "shmq zero-copy": dict(color="#D55E00", lw=2.6, marker="o"),
    "iceoryx2 loan": dict(color="#0072B2", lw=1.4, marker="s"),
    "pyzmq ipc": dict(color="#009E73", lw=1.4, marker="^"),
    "mp.Queue": dict(color="#56B4E9", lw=1.4, marker="v"),
    "memcpy bound": dict(color="#999999", lw=1.2, ls="--", marker=""),
}


def plot(rows, sizes, summary, samples, path, meta):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows + ["memcpy bound"]:
        ys = [summary[(row, s)] for s in sizes]
        ok = [[x for x in samples[(row, s)] if x == x] for s in sizes]
        lo = [y - min(v, default=y) for y, v in zip(ys, ok)]
        hi = [max(v, default=y) - y for y, v in zip(ys, ok)]
        st = STYLE.get(row, {})
        ax.errorbar(sizes, ys, yerr=[lo, hi], capsize=2, label=row, color=st.get("color"),
                    lw=st.get("lw", 1.4), ls=st.get("ls", "-"), marker=st.get("marker", "o"),
                    ms=4)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [label(s).replace(" KiB", "K").replace(" MiB", "M") for s in sizes])
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("MB/s delivered (median, min..max over rounds)")
    ax.set_title("1 producer -> 1 consumer, lossless, consumer sums every byte\n"
                 f"{meta['cpus']} CPUs shared with other work (load average "
                 f"{meta['loadavg'][0][0]:.1f}..{meta['loadavg'][1][0]:.1f}), {meta['date']}",
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

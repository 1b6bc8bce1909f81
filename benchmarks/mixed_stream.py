"""A mixed stream: mostly small messages, a few of several MiB, one producer
to two consumers that each read every message.

    python benchmarks/mixed_stream.py [--seconds 1] [--rounds 3] [--rows ROW,ROW]
                                      [--json benchmarks/mixed_results.json]
                                      [--plot docs/mixed.png]
    python benchmarks/mixed_stream.py --render benchmarks/mixed_results.json --plot docs/mixed.png
    SHMQ_VLLM_SRC=/path/to/vllm_standalone python benchmarks/mixed_stream.py   # adds the vLLM rows

The stream: 95% of messages are 8 B - 2 KiB, 5% are 1 - 4 MiB (sizes
multiples of 8, drawn once from a fixed seed; every contender sends the same
sequence, cycling through it). Message i is a slice of one read-only pool of
uint64 words, starting at a word offset that moves with i, so consecutive
messages differ. Each consumer sums every word of every message (numpy sum
over a uint64 view) and reports its count and the sum, and the run fails
unless both consumers got exactly the messages sent with the expected sum.
Every contender is lossless: the producer waits for the slower consumer.

Rows (--rows picks some; the vLLM rows need SHMQ_VLLM_SRC, see below):

  shmq variable copy   slot_size=256, capacity=131072 (32 MiB of ring),
                       max_message_size=4 MiB, lossless: publish(view) / poll() -> bytes
  shmq variable zero-copy  the same queue: loan(n) + memcpy into it / view(), sum in place
  shmq 4MiB-slot copy  the queue as it must be sized without max_message_size:
                       slot_size=4 MiB so every slot holds the largest message,
                       capacity=8 (32 MiB of ring): publish / poll
  vLLM MessageQueue ...  vLLM's shm_broadcast.MessageQueue (writer enqueue(),
                       readers dequeue()), objects pickled as vLLM does; the
                       payload is a numpy uint64 array. Three configurations:
                       its defaults (10 chunks of 10 MiB), the one vLLM's
                       GroupCoordinator uses for its shm broadcaster (6 chunks
                       of 4 MiB), and 1 MiB chunks x 32. A message whose pickle
                       is >= max_chunk_bytes takes one chunk as a marker and
                       goes over vLLM's ZMQ XPUB/SUB ipc socket (the table says
                       how many did).
  pyzmq ipc PUSH x2    one PUSH socket per consumer (ipc://, PULL on the
                       other side), every message sent on both: PUSH blocks at
                       the high-water mark (default 1000), so nothing is
                       dropped; send(copy=False), which pyzmq copies anyway
                       under its copy_threshold (64 KiB); recv(copy=False).

Each (row, round) runs fresh processes: the producer publishes as fast as
it can for --seconds, then ends the stream. A consumer's clock runs from its
first message to its last, so the rate is (received - 1) messages, and their
bytes, over that time; a row's sample is its slower consumer. Rows run one
after the other within a round, in alternating order from round to round;
the table shows the median and min..max over rounds. No pinning: the
producer and both consumers share whatever CPUs the machine has.

The vLLM rows: shm_broadcast.py imports vllm.envs, vllm.logger, vllm.utils,
torch and torch.distributed. SHMQ_VLLM_SRC names a folder holding
vllm/distributed/device_communicators/shm_broadcast.py taken verbatim from
vLLM and small stubs for the rest (no torch needed; numpy and pyzmq are).
It is never part of this repository.
"""
import argparse
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

SEED = 20261206
SEQ_LEN = 1 << 16
SMALL_MAX = 2048
LARGE_MIN, LARGE_MAX = 1 << 20, 4 << 20
LARGE_SHARE = 0.05
CONSUMERS = 2
POOL_WORDS = LARGE_MAX // 8 + 4096
MiB = 1 << 20

SHMQ_ROWS = {
    "shmq variable copy": dict(slot_size=256, capacity=131072, max_message_size=4 * MiB),
    "shmq variable zero-copy": dict(slot_size=256, capacity=131072, max_message_size=4 * MiB),
    "shmq 4MiB-slot copy": dict(slot_size=4 * MiB, capacity=8),
}
VLLM_ROWS = {
    "vLLM MessageQueue 10x10MiB (defaults)": (10 * MiB, 10),
    "vLLM MessageQueue 6x4MiB (GroupCoordinator)": (4 * MiB, 6),
    "vLLM MessageQueue 32x1MiB": (1 * MiB, 32),
}
ZMQ_ROW = "pyzmq ipc PUSH x2"
ROWS = list(SHMQ_ROWS) + list(VLLM_ROWS) + [ZMQ_ROW]


def sequence():
    """Sizes in bytes and word offsets into the pool of the SEQ_LEN messages."""
    rng = np.random.default_rng(SEED)
    large = rng.random(SEQ_LEN) < LARGE_SHARE
    small = rng.integers(1, SMALL_MAX // 8 + 1, SEQ_LEN) * 8
    big = rng.integers(LARGE_MIN // 8, LARGE_MAX // 8 + 1, SEQ_LEN) * 8
    sizes = np.where(large, big, small).astype(np.int64)
    offsets = (np.arange(SEQ_LEN, dtype=np.int64) * 977) % 4096
    return sizes, offsets


def pool():
    return np.arange(1, POOL_WORDS + 1, dtype=np.uint64)


def expected_sum(sent):
    """The sum (mod 2**64) of every word of the first `sent` messages."""
    sizes, offsets = sequence()
    prefix = np.concatenate([[0], np.cumsum(pool(), dtype=np.uint64)])
    one = (prefix[offsets + sizes // 8] - prefix[offsets]).astype(object)
    full, rest = divmod(sent, SEQ_LEN)
    return (full * int(sum(one)) + int(sum(one[:rest]))) % (1 << 64)


def expected_bytes(sent):
    sizes, _ = sequence()
    full, rest = divmod(sent, SEQ_LEN)
    return full * int(sizes.sum()) + int(sizes[:rest].sum())


# ------------------------------------------------------------------ roles


def _vllm_import():
    src = os.environ.get("SHMQ_VLLM_SRC")
    if not src:
        raise RuntimeError("SHMQ_VLLM_SRC is not set")
    sys.path.insert(0, src)
    from vllm.distributed.device_communicators.shm_broadcast import MessageQueue
    return MessageQueue


def produce(row, name, seconds):
    sizes, offsets = sequence()
    words = pool()
    arrays = [words[o:o + s // 8] for s, o in zip(sizes.tolist(), offsets.tolist())]
    views = [memoryview(a).cast("B") for a in arrays]
    nbytes = sizes.tolist()
    sent = 0
    wait_go = sys.stdin.readline
    if row in SHMQ_ROWS:
        import shmq
        p = shmq.Producer(name, lossless=True, unlink_on_close=True,
                          max_consumers=CONSUMERS, **SHMQ_ROWS[row])
        print("ready", flush=True)
        wait_go()
        end = time.perf_counter() + seconds
        if row.endswith("zero-copy"):
            loan = p.loan
            while True:
                for _ in range(16):
                    k = sent % SEQ_LEN
                    with loan(nbytes[k], timeout=10) as buf:
                        buf[:] = views[k]
                    sent += 1
                if time.perf_counter() >= end:
                    break
        else:
            publish = p.publish
            while True:
                for _ in range(16):
                    publish(views[sent % SEQ_LEN], timeout=10)
                    sent += 1
                if time.perf_counter() >= end:
                    break
        p.close()  # ends the stream
        over = 0
    elif row in VLLM_ROWS:
        MessageQueue = _vllm_import()
        chunk, chunks = VLLM_ROWS[row]
        mq = MessageQueue(n_reader=CONSUMERS, n_local_reader=CONSUMERS,
                          max_chunk_bytes=chunk, max_chunks=chunks)
        print("handle", pickle.dumps(mq.export_handle()).hex(), flush=True)
        mq.wait_until_ready()  # both readers subscribed
        print("ready", flush=True)
        wait_go()
        enqueue = mq.enqueue
        end = time.perf_counter() + seconds
        while True:
            for _ in range(16):
                enqueue(arrays[sent % SEQ_LEN], timeout=10)
                sent += 1
            if time.perf_counter() >= end:
                break
        enqueue(None)  # the end mark
        # How many went over ZMQ, decided as enqueue() does (pickle >= chunk);
        # only messages within a page of the chunk size need pickling to tell.
        def over_chunk(a):
            if abs(a.nbytes - chunk) > 4096:
                return a.nbytes > chunk
            return len(pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL)) >= chunk
        flags = [over_chunk(a) for a in arrays]
        over = sum(flags) * (sent // SEQ_LEN) + sum(flags[:sent % SEQ_LEN])
    else:
        import zmq
        ctx = zmq.Context.instance()
        socks = []
        for i in range(CONSUMERS):
            s = ctx.socket(zmq.PUSH)
            s.bind(f"ipc:///tmp/{name}-{i}")
            socks.append(s)
        print("ready", flush=True)
        wait_go()
        sends = [s.send for s in socks]
        end = time.perf_counter() + seconds
        while True:
            for _ in range(16):
                v = views[sent % SEQ_LEN]
                for send in sends:
                    send(v, copy=False)
                sent += 1
            if time.perf_counter() >= end:
                break
        for s in socks:
            s.send(b"")
        over = 0
    print(json.dumps({"sent": sent, "over_zmq": over}), flush=True)
    # Stay up until the parent says the consumers are done: libzmq 4.3.5
    # dropped the last few hundred queued messages when the sending side
    # closed while a PULL peer sat at its high-water mark (seen here with
    # linger=-1 and ctx.term()), and vLLM's overflow messages wait in ZMQ too.
    wait_go()
    if row == ZMQ_ROW:
        for s in socks:
            s.close(linger=0)
        for i in range(CONSUMERS):
            try:
                os.unlink(f"/tmp/{name}-{i}")
            except FileNotFoundError:
                pass


def consume(row, name, index, handle_hex):
    got = 0
    nbytes = 0
    first = 0
    check = 0
    t0 = t1 = None
    clock = time.perf_counter
    if row in SHMQ_ROWS:
        import shmq
        c = shmq.Consumer(name, start="earliest")
        assert c.registered
        print("ready", flush=True)
        if row.endswith("zero-copy"):
            view = c.view
            while True:
                with view(timeout=0.1) as msg:
                    if msg is not None:
                        check += int(np.frombuffer(msg, dtype=np.uint64).sum())
                        n = len(msg)
                if msg is None:
                    if c.ended:
                        break
                    continue
                t1 = clock()
                if t0 is None:
                    t0, first = t1, n
                got += 1
                nbytes += n
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
                    t0, first = t1, len(msg)
                got += 1
                nbytes += len(msg)
        lost = c.lost
        c.close()
    elif row in VLLM_ROWS:
        MessageQueue = _vllm_import()
        mq = MessageQueue.create_from_handle(pickle.loads(bytes.fromhex(handle_hex)), index)
        mq.wait_until_ready()
        print("ready", flush=True)
        dequeue = mq.dequeue
        while True:
            a = dequeue()
            if a is None:
                break
            check += int(a.sum())
            t1 = clock()
            if t0 is None:
                t0, first = t1, a.nbytes
            got += 1
            nbytes += a.nbytes
        lost = 0
    else:
        import zmq
        s = zmq.Context.instance().socket(zmq.PULL)
        s.connect(f"ipc:///tmp/{name}-{index}")
        print("ready", flush=True)
        recv = s.recv
        while True:
            frame = recv(copy=False)
            buf = frame.buffer
            if len(buf) == 0:
                break
            check += int(np.frombuffer(buf, dtype=np.uint64).sum())
            t1 = clock()
            if t0 is None:
                t0, first = t1, len(buf)
            got += 1
            nbytes += len(buf)
        s.close()
        lost = 0
    dt = (t1 - t0) if got > 1 else 0.0
    print(json.dumps({"got": got, "bytes": nbytes, "lost": lost, "check": check % (1 << 64),
                      "msgs": (got - 1) / dt if dt > 0 else 0.0,
                      "bps": (nbytes - first) / dt if dt > 0 else 0.0}), flush=True)


# ---------------------------------------------------------------- driver


def _spawn(*args):
    return subprocess.Popen([sys.executable, __file__, *map(str, args)], env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _say(proc, line):
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def measure(row, seconds, seq):
    name = f"mixed-{os.getpid()}-{seq}"
    prod = _spawn("--role", "produce", row, name, seconds)
    procs = [prod]
    try:
        line = prod.stdout.readline().strip()
        handle = "-"
        if line.startswith("handle "):
            handle = line.split(" ", 1)[1]
        cons = [_spawn("--role", "consume", row, name, i, handle) for i in range(CONSUMERS)]
        procs += cons
        for c in cons:
            assert c.stdout.readline().strip() == "ready", f"{row}: a consumer did not start"
        if handle != "-":
            line = prod.stdout.readline().strip()
        assert line == "ready", f"{row}: the producer said {line!r}"
        _say(prod, "go")
        results = [json.loads(c.communicate(timeout=120)[0].strip().splitlines()[-1])
                   for c in cons]
        done = json.loads(prod.stdout.readline())
        _say(prod, "exit")
        prod.wait(timeout=30)
        sent = done["sent"]
        want_sum = expected_sum(sent)
        for i, r in enumerate(results):
            if r["got"] != sent or r["lost"] or r["check"] != want_sum:
                verdict = "ok" if r["check"] == want_sum else "WRONG"
                raise RuntimeError(f"{row}: consumer {i} got {r['got']} of {sent} "
                                   f"(lost {r['lost']}), sum {verdict}")
        slow = min(results, key=lambda r: r["bps"])
        return {"msgs": slow["msgs"], "GBps": slow["bps"] / 1e9, "sent": sent,
                "bytes": expected_bytes(sent), "over_zmq": done["over_zmq"]}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def ring_bytes(row):
    if row in SHMQ_ROWS:
        cfg = SHMQ_ROWS[row]
        return cfg["slot_size"] * cfg["capacity"]
    if row in VLLM_ROWS:
        chunk, chunks = VLLM_ROWS[row]
        return chunk * chunks
    return None


def stream_stats():
    sizes, _ = sequence()
    large = sizes >= LARGE_MIN
    # Messages a ring holds at once, on average over the stream, when a
    # message of n bytes takes ceil(n / slot) slots (per-message headers left out).
    slots_256 = float(np.ceil(sizes / 256).mean())
    return {"messages": SEQ_LEN, "large_share": float(large.mean()),
            "mean_bytes": float(sizes.mean()), "mean_small": float(sizes[~large].mean()),
            "mean_large": float(sizes[large].mean()),
            "large_byte_share": float(sizes[large].sum() / sizes.sum()),
            "mean_slots_at_256": slots_256,
            "messages_in_32MiB_at_256": 131072 / slots_256}


def vllm_available():
    src = os.environ.get("SHMQ_VLLM_SRC")
    if not src:
        return None, "SHMQ_VLLM_SRC not set"
    path = os.path.join(src, "vllm/distributed/device_communicators/shm_broadcast.py")
    if not os.path.exists(path):
        return None, f"{path} not found"
    return src, ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", help="comma-separated row names (default: all available)")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    ap.add_argument("--render", metavar="JSON", help="the plot again from an earlier --json")
    ap.add_argument("--role", nargs="+")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        plot(list(saved["samples"]), saved["samples"], args.plot or "mixed.png", saved)
        return
    if args.role:
        role, row, name, *rest = args.role
        if role == "produce":
            produce(row, name, float(rest[0]))
        else:
            consume(row, name, int(rest[0]), rest[1])
        return
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; rows: {ROWS}")
    vllm_src, why = vllm_available()
    if vllm_src is None and any(r in VLLM_ROWS for r in rows):
        print(f"vLLM rows skipped: {why}", file=sys.stderr)
        rows = [r for r in rows if r not in VLLM_ROWS]
    try:
        import zmq
        zmq_version = f"{zmq.__version__} (libzmq {zmq.zmq_version()})"
    except ImportError:
        zmq_version = None
        if ZMQ_ROW in rows or any(r in VLLM_ROWS for r in rows):
            print("pyzmq not installed: pyzmq and vLLM rows skipped", file=sys.stderr)
            rows = [r for r in rows if r != ZMQ_ROW and r not in VLLM_ROWS]
    started = time.monotonic()
    load0 = os.getloadavg()
    samples = {r: [] for r in rows}
    over = {}
    seq = 0
    for rnd in range(args.rounds):
        for row in (rows if rnd % 2 == 0 else rows[::-1]):
            seq += 1
            try:
                m = measure(row, args.seconds, seq)
                over[row] = over.get(row, 0) + m["over_zmq"]
            except Exception as e:  # noqa: BLE001 - reported, the run goes on
                print(f"{row}: {e!r}", file=sys.stderr)
                m = None
            samples[row].append(m)
        print(f"round {rnd + 1}/{args.rounds} done at {time.monotonic() - started:.0f} s",
              file=sys.stderr)
    load1 = os.getloadavg()
    stats = stream_stats()

    def cell(vals, fmt):
        if not vals:
            return "failed"
        return f"{fmt(statistics.median(vals))} ({fmt(min(vals))}..{fmt(max(vals))})"

    summary = {}
    lines = ["| row | msgs/s | GB/s | ring | messages over ZMQ, of all sent |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        ok = [m for m in samples[row] if m]
        msgs = [m["msgs"] for m in ok]
        gbs = [m["GBps"] for m in ok]
        summary[row] = {"msgs": statistics.median(msgs) if ok else None,
                        "GBps": statistics.median(gbs) if ok else None,
                        "GBps_min": min(gbs) if ok else None, "GBps_max": max(gbs) if ok else None}
        ring = ring_bytes(row)
        sent = sum(m["sent"] for m in ok)
        zmq_cell = (f"{over.get(row, 0):,} of {sent:,}" if row in VLLM_ROWS else "")
        lines.append(f"| {row} | {cell(msgs, lambda v: f'{v / 1e3:,.1f} k')} | "
                     f"{cell(gbs, lambda v: f'{v:.2f}')} | "
                     f"{f'{ring / MiB:.0f} MiB' if ring else 'socket buffers'} | {zmq_cell} |")
    print("\n".join(lines))
    base = summary.get("shmq variable copy", {}).get("GBps")
    if base:
        print()
        for row in rows:
            if summary[row]["GBps"]:
                print(f"{row}: {summary[row]['GBps'] / base:.2f}x shmq variable copy "
                      "(GB/s medians)")
    print(f"\nstream: {stats['large_share']:.1%} large, mean {stats['mean_bytes'] / 1e3:.1f} kB "
          f"(small {stats['mean_small']:.0f} B, large {stats['mean_large'] / MiB:.2f} MiB; "
          f"large messages carry {stats['large_byte_share']:.1%} of the bytes); a 32 MiB ring of "
          f"256 B slots holds {stats['messages_in_32MiB_at_256']:.0f} such messages on average, "
          f"which in 4 MiB slots would take {stats['messages_in_32MiB_at_256'] * 4:.0f} MiB")
    print(f"cpus={os.cpu_count()} loadavg start={load0[0]:.2f} end={load1[0]:.2f} "
          f"pyzmq={zmq_version} vllm_src={vllm_src} time={time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": samples, "summary": summary, "stream": stats,
                       "rounds": args.rounds, "seconds": args.seconds, "seed": SEED,
                       "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                       "loadavg": [load0, load1], "pyzmq": zmq_version, "vllm_src": vllm_src,
                       "rings": {r: ring_bytes(r) for r in rows},
                       "over_zmq": over, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
                      f, indent=1)
    if args.plot:
        plot(rows, samples, args.plot, {"cpus": os.cpu_count(), "loadavg": [load0, load1],
                                        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")})


def plot(rows, samples, path, meta):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return
    ok_rows = [r for r in rows if any(samples[r])]
    med = [statistics.median(m["GBps"] for m in samples[r] if m) for r in ok_rows]
    lo = [m - min(s["GBps"] for s in samples[r] if s) for r, m in zip(ok_rows, med)]
    hi = [max(s["GBps"] for s in samples[r] if s) - m for r, m in zip(ok_rows, med)]
    colors = ["#E69F00" if r.startswith("shmq") else "#56B4E9" if r.startswith("vLLM")
              else "#999999" for r in ok_rows]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(ok_rows) + 1.4))
    y = np.arange(len(ok_rows))[::-1]
    ax.barh(y, med, xerr=[lo, hi], color=colors, capsize=3)
    ax.set_yticks(y, ok_rows, fontsize=8)
    ax.set_xlabel("GB/s to each of 2 consumers (slower consumer; median, min..max)")
    ax.set_title("Mixed stream: 95% <= 2 KiB, 5% 1-4 MiB, lossless, 1P -> 2C\n"
                 f"{meta['cpus']} CPUs shared with other work (load average "
                 f"{meta['loadavg'][0][0]:.1f}..{meta['loadavg'][1][0]:.1f}), {meta['date']}",
                 fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

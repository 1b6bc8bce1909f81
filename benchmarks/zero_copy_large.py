"""Zero-copy throughput of big messages in a ring of small slots
(max_message_size), beside zero_copy_bench.py's rings of message-sized slots
and iceoryx2's loan API.

    python benchmarks/zero_copy_large.py [--seconds 0.3] [--rounds 4] [--sizes 1048576,4194304]
                                         [--slot 256] [--ring-mib 16] [--json out.json]

zero_copy_bench.py sizes its ring as capacity_for(size) slots of `size`
bytes (16 MiB of ring: 16 slots of 1 MiB, 4 of 4 MiB). The "small slots"
rows here use one queue shape for every size instead: slot_size=--slot,
capacity=--ring-mib MiB / --slot, max_message_size=8 MiB, lossless; a
message spans as many consecutive slots as it needs. Rows:

  shmq copy, small slots        publish(bytes) / poll() -> bytes, then sum
  shmq zero-copy, small slots   loan: np.copyto into the loan / view: sum in place
  shmq copy, slot = size        zero_copy_bench.py's "shmq copy" row, unchanged
  shmq zero-copy, slot = size   zero_copy_bench.py's "shmq zero-copy" row, unchanged
  iceoryx2 loan                 zero_copy_bench.py's "iceoryx2 loan" row, unchanged
  memcpy bound                  np.copyto between two buffers, one thread

The method is zero_copy_bench.py's (its roles, its consumers, its timing):
fresh processes per measurement, every consumer reads every message and
sums the whole payload, rows interleaved round by round in alternating
order; MB/s of the slowest consumer, median and min..max over rounds. The
goal lines divide two rows within each round and report the median ratio
(and min..max), which the machine's drift disturbs less than a ratio of
medians.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import zero_copy_bench as zcb  # noqa: E402 - this folder's sibling

MiB = 1 << 20
SIZES = [MiB, 4 * MiB]
SHAPES = [1, 2]
SMALL = ["shmq copy, small slots", "shmq zero-copy, small slots"]
BORROWED = {"shmq copy, slot = size": "shmq copy",
            "shmq zero-copy, slot = size": "shmq zero-copy",
            "iceoryx2 loan": "iceoryx2 loan"}
ROWS = SMALL + list(BORROWED)


def produce(row, name, size, seconds, slot, ring):
    import shmq
    frame = np.arange(size // 8, dtype=np.uint64)
    raw = frame.tobytes()
    p = shmq.Producer(name, slot_size=slot, capacity=ring // slot, max_message_size=8 * MiB,
                      lossless=True, unlink_on_close=True)
    print("ready", flush=True)
    sys.stdin.readline()
    sent = 0
    end = time.perf_counter() + seconds
    if row.startswith("shmq zero-copy"):
        while time.perf_counter() < end:
            with p.loan(size, timeout=10) as buf:
                np.copyto(np.frombuffer(buf, dtype=np.uint64), frame)
            sent += 1
    else:
        while time.perf_counter() < end:
            p.publish(raw, timeout=10)
            sent += 1
    p.close()
    print("sent", sent, flush=True)


def measure_small(row, size, consumers, seconds, seq, slot, ring):
    name = f"zcl-{os.getpid()}-{seq}"
    # zero_copy_bench.consume reads "shmq copy" with poll() and anything else with view().
    zrow = "shmq copy" if row.startswith("shmq copy") else "shmq zero-copy"

    mbs, results, out = zcb.run_roles(__file__, (row, name, size, seconds, slot, ring),
                                      (zrow, name, size, consumers), consumers, size)
    words = out.split()
    sent = int(words[words.index("sent") + 1])
    for r in results:
        if r["got"] != sent:
            raise RuntimeError(f"{row}: a consumer got {r['got']} of {sent}")
    return mbs


def ratio_line(samples, a, b, consumers, size):
    pairs = [(x, y) for x, y in zip(samples[(consumers, size, a)], samples[(consumers, size, b)])
             if x == x and y == y and y > 0]
    if not pairs:
        return "n/a"
    r = [x / y for x, y in pairs]
    return f"{statistics.median(r):.2f}x ({min(r):.2f}..{max(r):.2f}, {len(r)} rounds)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--sizes")
    ap.add_argument("--slot", type=int, default=256)
    ap.add_argument("--ring-mib", type=int, default=16)
    ap.add_argument("--rows")
    ap.add_argument("--json")
    ap.add_argument("--role", nargs="+")
    args = ap.parse_args()
    if args.role:
        role, row, name, size, *rest = args.role
        if role == "produce":
            produce(row, name, int(size), float(rest[0]), int(rest[1]), int(rest[2]))
        else:
            zcb.consume(row, name, int(size), int(rest[0]))
        return
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else SIZES
    ring = args.ring_mib * MiB
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else list(ROWS)
    iox = zcb.iceoryx2_available()
    if not iox:
        rows = [r for r in rows if r != "iceoryx2 loan"]
        print("iceoryx2 not installed: row skipped", file=sys.stderr)
    samples = {}
    seq = 0
    started = time.monotonic()
    load0 = os.getloadavg()
    for rnd in range(args.rounds):
        for size in sizes:
            samples.setdefault((0, size, "memcpy bound"), []).append(
                zcb.memcpy_bound(size, args.seconds))
            for consumers in SHAPES:
                for row in (rows if rnd % 2 == 0 else rows[::-1]):
                    seq += 1
                    try:
                        if row in BORROWED:
                            mbs = zcb.measure(BORROWED[row], size, consumers, args.seconds,
                                              f"l{seq}")
                        else:
                            mbs = measure_small(row, size, consumers, args.seconds, seq,
                                                args.slot, ring)
                    except Exception as e:  # noqa: BLE001 - reported, the run goes on
                        print(f"{row} {size} 1P->{consumers}C: {e!r}", file=sys.stderr)
                        mbs = float("nan")
                    samples.setdefault((consumers, size, row), []).append(mbs)
        print(f"round {rnd + 1}/{args.rounds} done at {time.monotonic() - started:.0f} s",
              file=sys.stderr)
    load1 = os.getloadavg()
    for leftover in os.listdir("/dev/shm"):
        if leftover.startswith("iox2_") and "zcb_" in leftover:
            try:
                os.unlink(os.path.join("/dev/shm", leftover))
            except OSError:
                pass
    lines = ["| shape | row | " + " | ".join(f"{s // MiB} MiB" for s in sizes) + " |",
             "|---|---|" + "---:|" * len(sizes)]
    for consumers in [0] + SHAPES:
        for row in (["memcpy bound"] if consumers == 0 else rows):
            cells = []
            for size in sizes:
                v = [x for x in samples[(consumers, size, row)] if x == x]
                cells.append(f"{statistics.median(v):,.0f} ({min(v):,.0f}..{max(v):,.0f})"
                             if v else "failed")
            shape = "1 thread" if consumers == 0 else f"1P->{consumers}C"
            lines.append(f"| {shape} | {row} | " + " | ".join(cells) + " |")
    print(f"MB/s per consumer, median (min..max); small slots: slot_size={args.slot}, "
          f"capacity={ring // args.slot} ({args.ring_mib} MiB); slot = size: "
          "zero_copy_bench.py's capacity_for(size) slots of size (16 MiB)\n")
    print("\n".join(lines))
    print()
    zc = "shmq zero-copy, small slots"
    goals = []
    if zc in rows:
        for consumers in SHAPES:
            for size in sizes:
                for other in [r for r in rows if r != zc]:
                    line = (f"1P->{consumers}C {size // MiB} MiB: {zc} / {other}: "
                            f"{ratio_line(samples, zc, other, consumers, size)}")
                    goals.append(line)
                    print(line)
    print(f"\niceoryx2 {iox}; cpus={os.cpu_count()} loadavg start={load0[0]:.2f} "
          f"end={load1[0]:.2f} time={time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": {f"{k[0]}|{k[1]}|{k[2]}": v for k, v in samples.items()},
                       "slot": args.slot, "ring_mib": args.ring_mib, "iceoryx2": iox,
                       "rounds": args.rounds, "seconds": args.seconds, "ratios": goals,
                       "cpus": os.cpu_count(), "loadavg": [load0, load1],
                       "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, f, indent=1)


if __name__ == "__main__":
    main()

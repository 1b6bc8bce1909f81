"""The benchmark suite: shmq against the alternatives, side by side, in one run.

Run it from a checkout with `python benchmarks/run.py` (see --help there).

Shapes (after the LMAX Disruptor's perf tests): 1P->1C throughput, 1P->3C
multicast (every consumer gets every message), and ping-pong latency over two
channels, spinning and blocking. The "lossless" shape repeats 1P->1C, 1P->3C
and a blocking ping-pong at 64 B for shmq's lossless mode, next to lossy shmq
and the lossless peers. Contenders run interleaved (A B C, A B C, ...)
for several rounds; we report medians with min and max, and compare by ratios
within the run, because this machine's virtual cores drift within minutes.
"""
import argparse
import atexit
import gc
import json
import multiprocessing as mp
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import contenders as _contenders  # benchmarks/contenders.py, beside this file
import shmq

ROOT = Path(__file__).resolve().parent.parent

SIZES = [8, 64, 256, 1024, 4096]

# The lossless shape: who runs in it (those installed), all at 64 B.
LOSSLESS_THROUGHPUT = ["shmq-py-lossless", "shmq-py", "mp.Queue", "faster-fifo"]
LOSSLESS_PINGPONG = ["shmq-py-lossless:full", "posix_ipc-mq:block", "shmq-py:block"]
PINGPONG_SHAPES = ("pingpong", "lossless-pingpong")
SPUN_US = 5  # lossless ping-pong rounds faster than this (p50) did not sleep


# --------------------------------------------------------------- plumbing

class Board:
    """What producer and consumers of one run share (created before the fork)."""

    def __init__(self, ctx, parties):
        self._barrier = ctx.Barrier(parties)
        self._done = ctx.RawValue("i", 0)
        self._sent = ctx.RawValue("Q", 0)
        self.t0 = 0.0
        self._idle_since = None

    def wait_start(self):
        self._barrier.wait(timeout=60)
        self.t0 = time.perf_counter()

    def set_sent(self, n):
        self._sent.value = n

    def set_done(self):
        self._done.value = 1

    def done(self):
        return self._done.value == 1

    def sent(self):
        return self._sent.value

    def finished(self, position):
        """For shmq: the producer is done and this consumer has read up to its end."""
        return self._done.value == 1 and position >= self._sent.value

    def idle_for(self, seconds):
        now = time.perf_counter()
        if self._idle_since is None:
            self._idle_since = now
        return now - self._idle_since >= seconds


def _cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def _pin(cpu):
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def _placement(consumers):
    cpus = _cpus()
    if len(cpus) < 2:
        return None, [None] * consumers, "unpinned (1 CPU)"
    producer = cpus[0]
    rest = cpus[1:]
    placed = [rest[i % len(rest)] for i in range(consumers)]
    who = "consumer" if consumers == 1 else "consumers"
    return producer, placed, f"producer on CPU {producer}, {who} on CPU {','.join(map(str, placed))}"


def _reap(procs):
    """Waits for a run's processes, killing any that outlived it."""
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()


def _consumer_main(contender, state, index, size, board, results, cpu):
    try:
        _pin(cpu)
        handle = contender.attach_consumer(state, index)
        board.wait_start()
        received, lost = contender.consume(handle, index, size, board)
        end = time.perf_counter()
        # Children leave through os._exit, which runs no destructors: release
        # the handle now so peers that own files (iceoryx2) remove them.
        del handle
        gc.collect()
        results.put(("consumer", index, received, lost, end))
    except BaseException as e:  # reported, never hangs the parent
        results.put(("error", f"consumer: {type(e).__name__}: {e}"))


def _producer_main(contender, state, size, seconds, board, results, cpu):
    try:
        _pin(cpu)
        sent = contender.produce(state, size, seconds, board)
        end = time.perf_counter()
        board.set_sent(sent)
        board.set_done()
        results.put(("producer", sent, board.t0, end))
    except BaseException as e:
        board.set_done()
        results.put(("error", f"producer: {type(e).__name__}: {e}"))


def run_throughput(contender, size, seconds, consumers):
    ctx = mp.get_context("fork")
    state = contender.setup(size, consumers)
    board = Board(ctx, consumers + 1)
    results = ctx.Queue()
    producer_cpu, consumer_cpus, placement = _placement(consumers)
    procs = [ctx.Process(target=_consumer_main, args=(contender, state, i, size, board, results, consumer_cpus[i]))
             for i in range(consumers)]
    procs.append(ctx.Process(target=_producer_main, args=(contender, state, size, seconds, board, results, producer_cpu)))
    try:
        for p in procs:
            p.start()
        got = []
        try:
            for _ in procs:
                got.append(results.get(timeout=seconds + 60))
        except queue.Empty:
            stuck = [("producer" if i == consumers else f"consumer {i}") for i, p in enumerate(procs) if p.is_alive()]
            raise RuntimeError(f"timed out; still running: {', '.join(stuck) or 'none'}") from None
    finally:
        _reap(procs)
        contender.teardown(state)
    errors = [g[1] for g in got if g[0] == "error"]
    if errors:
        raise RuntimeError("; ".join(errors))
    _, sent, t0, t_end = next(g for g in got if g[0] == "producer")
    per_consumer = []
    for g in sorted((g for g in got if g[0] == "consumer"), key=lambda g: g[1]):
        _, index, received, lost, c_end = g
        elapsed = max(c_end - t0, 1e-9)
        per_consumer.append({"received": received, "lost": lost, "seconds": elapsed,
                             "delivered_rate": received / elapsed})
    return {
        "sent": sent,
        "publish_rate": sent / max(t_end - t0, 1e-9),
        "consumers": per_consumer,
        "delivered_rate": min(c["delivered_rate"] for c in per_consumer),
        "lost": sum(c["lost"] for c in per_consumer),
        "placement": placement,
    }


def _pingpong_main(side, contender, states, mode, iterations, barrier, results, cpu):
    """One side of a ping-pong: 'echo' answers until done, 'client' reports its round trips."""
    try:
        _pin(cpu)
        loop = getattr(contender, f"pingpong_{side}")(states, mode, iterations)
        next(loop)  # set up
        barrier.wait(timeout=60)
        switches = _voluntary_switches()
        rtts = next(loop, None)  # the client yields its round trips; the echo just finishes
        switches = _voluntary_switches() - switches
        loop.close()  # runs the generator's cleanup before os._exit
        gc.collect()
        if side == "client":
            results.put(("rtts", rtts, switches / max(len(rtts), 1)))
    except BaseException as e:
        results.put(("error", f"{side}: {type(e).__name__}: {e}"))


def _voluntary_switches():
    """How often this process has slept (voluntary context switches)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    except (OSError, StopIteration):
        return 0


def latency_stats(rtts_ns):
    rtts = sorted(rtts_ns)
    n = len(rtts)

    def pick(q):
        return rtts[min(n - 1, int(q * n))] / 1000

    return {"iterations": n, "p50_us": pick(0.5), "p99_us": pick(0.99), "p999_us": pick(0.999),
            "max_us": rtts[-1] / 1000, "cdf_us": [pick(q / 100) for q in range(0, 100)] + [rtts[-1] / 1000]}


def run_pingpong(contender, mode, iterations, warmup=1000):
    ctx = mp.get_context("fork")
    states = contender.pingpong_setup()
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    client_cpu, (echo_cpu,), placement = _placement(1)
    total = iterations + warmup
    procs = [ctx.Process(target=_pingpong_main, args=(side, contender, states, mode, total, barrier, results, cpu))
             for side, cpu in (("echo", echo_cpu), ("client", client_cpu))]
    try:
        for p in procs:
            p.start()
        got = results.get(timeout=120)
    finally:
        _reap(procs)
        contender.pingpong_teardown(states)
    if got[0] == "error":
        raise RuntimeError(got[1])
    stats = latency_stats(got[1][warmup:])
    stats["client_sleeps_per_round_trip"] = got[2]
    stats["placement"] = placement.replace("producer", "client").replace("consumer", "echo")
    return stats


# --------------------------------------------------------------- C side

def _find_cbench(folder):
    """Builds benchmarks/cbench.c against the checkout's csrc/ into `folder`."""
    source = ROOT / "benchmarks" / "cbench.c"
    if not (source.exists() and (ROOT / "csrc" / "shmq.h").exists()):
        return None, "benchmarks/cbench.c or csrc/ not found (run from a checkout)"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "no C compiler"
    out = Path(folder) / "cbench"
    cmd = [cc, "-O2", "-std=gnu11", "-I", str(ROOT / "csrc"), str(source),
           *map(str, sorted((ROOT / "csrc").glob("*.c"))), "-lpthread", "-o", str(out)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    if build.returncode != 0:
        return None, "cbench did not build: " + build.stderr[-300:]
    return out, ""


def _cbench(binary, *args):
    out = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------- reports

def _versions(contenders, notes):
    info = {"python": platform.python_version(), "shmq": shmq.__version__}
    for c in contenders:
        try:
            info[c.name] = c.version()
        except Exception as e:  # a version is nice to have, never fatal
            info[c.name] = f"unknown ({e})"
    return info


def _machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "cpus_usable": len(_cpus()), "kernel": platform.release(),
            "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _summary(samples):
    vals = [s for s in samples if s is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


class Progress:
    def __init__(self, total):
        self.total, self.done, self.t0 = total, 0, time.monotonic()

    def step(self, label):
        self.done += 1
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = time.monotonic() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                         f"{elapsed:4.0f}s eta {eta:3.0f}s {label[:40]:<40}")
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


def _fmt_rate(v):
    if v is None:
        return "-"
    return f"{v / 1e6:.2f} M" if v >= 1e5 else f"{v / 1e3:.1f} k"


def main(argv=None, prog="python benchmarks/run.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64-byte messages only, short runs (< 60 s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, help="publishing time per throughput run")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 8,64,4096")
    parser.add_argument("--only", help="comma-separated contender names to run")
    parser.add_argument("--shapes", default="1p1c,1p3c,pingpong,lossless",
                        help="which of 1p1c,1p3c,pingpong,lossless (default all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                        help="folder for results.json, results.md, PNGs (default benchmarks/results)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the RSS check (10^8 messages, 10^7 with --quick)")
    parser.add_argument("--docs", nargs="?", const=str(ROOT / "docs" / "benchmarks.md"), metavar="PAGE",
                        help="also write this Markdown page with the plots beside it (default docs/benchmarks.md)")
    parser.add_argument("--render", metavar="RESULTS_JSON", help="only re-render tables, plots and --docs from a saved results.json")
    parser.add_argument("--merge", metavar="RESULTS_JSON", action="append", default=[],
                        help="with --render: take the rows (shape and contender) this other run "
                             "measured from it (e.g. a run of --shapes lossless), keeping the rest")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        for other in args.merge:
            result = merge(result, json.loads(Path(other).read_text()))
        return render(result, Path(args.out), args.docs)

    sizes = args.sizes or ([64] if args.quick else SIZES)
    seconds = args.seconds or (0.2 if args.quick else 0.5)
    pp_iterations = 5000 if args.quick else 20000
    shapes = set(args.shapes.split(","))
    only = set(args.only.split(",")) if args.only else None

    notes = []
    contenders = []
    wanted = list(_contenders.PYTHON_CONTENDERS)
    if "lossless" in shapes:
        wanted += _contenders.LOSSLESS_CONTENDERS
    for c in wanted:
        if only and c.name not in only:
            continue
        ok, why = c.available()
        if ok:
            contenders.append(c)
        else:
            notes.append(f"{c.name} skipped: {why}")
    cbench = None
    if (not only or only & {"shmq-c", "c-ref-ring"}) and shapes & {"1p1c", "pingpong"}:
        scratch = tempfile.mkdtemp(prefix="shmq-cbench-")
        atexit.register(shutil.rmtree, scratch, True)
        cbench, why = _find_cbench(scratch)
        if cbench is None:
            notes.append(f"C contenders skipped: {why}")
    c_names = ["shmq-c", "c-ref-ring"] if cbench else []
    if only:
        c_names = [n for n in c_names if n in only]

    lossless_only = {c.name for c in _contenders.LOSSLESS_CONTENDERS}
    general = [c for c in contenders if c.name not in lossless_only]
    plan = []
    for r in range(args.rounds):
        for size in sizes:
            if "1p1c" in shapes:
                plan += [("1p1c", c.name, size, r) for c in general] + [("1p1c", n, size, r) for n in c_names]
            if "1p3c" in shapes:
                plan += [("1p3c", c.name, size, r) for c in general if c.name != "shmq-py-batch"]
        if "pingpong" in shapes:
            plan += [("pingpong", f"{c.name}:{m}", 64, r) for c in general for m in c.pingpong_modes]
            if cbench and not only or (only and "shmq-c" in only):
                plan += [("pingpong", f"shmq-c:{m}", 64, r) for m in ("spin", "block")] if cbench else []
            if cbench and (not only or "c-ref-ring" in only):
                plan += [("pingpong", "c-ref-cacheline:spin", 64, r)]
        if "lossless" in shapes:
            have = {c.name for c in contenders}
            for n in (1, 3):
                plan += [(f"lossless-1p{n}c", who, 64, r) for who in LOSSLESS_THROUGHPUT if who in have]
            plan += [("lossless-pingpong", who, 64, r) for who in LOSSLESS_PINGPONG if who.split(":")[0] in have]

    by_name = {c.name: c for c in contenders}
    loadavg_start = _loadavg()
    others_files = set(Path("/dev/shm").glob("iox2_*"))
    samples = []
    progress = Progress(len(plan))
    for shape, who, size, r in plan:
        sample = {"shape": shape, "contender": who, "size": size, "round": r}
        try:
            if shape in PINGPONG_SHAPES:
                name, mode = who.split(":")
                if name == "shmq-c":
                    res = _cbench(cbench, "pingpong", f"shmq-{mode}", pp_iterations)
                elif name == "c-ref-cacheline":
                    res = _cbench(cbench, "pingpong", "ref", pp_iterations * 5)
                else:
                    res = run_pingpong(by_name[name], mode, pp_iterations)
                sample.update({k: v for k, v in res.items() if k not in ("shape", "contender")})
            elif who in ("shmq-c", "c-ref-ring"):
                res = _cbench(cbench, "throughput", "shmq" if who == "shmq-c" else "ref", size, seconds)
                sample.update(delivered_rate=res["delivered_rate"], publish_rate=res["publish_rate"],
                              sent=res["sent"], lost=res["lost"], consumers=[res],
                              placement="producer on CPU 0, consumer on CPU 1")
            else:
                res = run_throughput(by_name[who], size, seconds, 3 if shape.endswith("1p3c") else 1)
                sample.update(res)
            if "delivered_rate" in sample:
                sample["mb_per_s"] = sample["delivered_rate"] * size / 1e6
        except Exception as e:
            sample["error"] = repr(e)[:300]
        samples.append(sample)
        progress.step(f"{shape} {who} {size}B")

    # iceoryx2 keeps registry files in /dev/shm; remove those this run created.
    for leftover in set(Path("/dev/shm").glob("iox2_*")) - others_files:
        try:
            leftover.unlink()
        except OSError:
            pass
    report = aggregate(samples, sizes)
    machine = _machine()
    machine["loadavg_end"] = _loadavg()
    machine["loadavg_start"] = loadavg_start
    result = {"machine": machine, "versions": _versions(contenders, notes), "notes": notes,
              "settings": {"sizes": sizes, "rounds": args.rounds, "seconds": seconds, "shapes": sorted(shapes),
                           "pingpong_iterations": pp_iterations, "quick": args.quick},
              "segment_check": segment_check(), "samples": samples, "summary": report,
              "command": " ".join([prog] + list(argv if argv is not None else sys.argv[1:]))}
    if not args.skip_memory:
        sys.stderr.write("memory check: publish_many/poll_many of %d messages...\n" % (10**7 if args.quick else 10**8))
        result["memory_check"] = memory_check(10**7 if args.quick else 10**8)
    return render(result, Path(args.out), args.docs)


def render(result, out, docs=None):
    """Writes results.json, results.md and the plots into `out` (and the docs page)."""
    for sample in result["samples"]:  # placement wording of older results
        if sample["shape"] in PINGPONG_SHAPES and "producer" in sample.get("placement", ""):
            sample["placement"] = sample["placement"].replace("producer", "client").replace("consumers", "echo")
        elif sample["shape"] == "1p1c" and "consumers" in sample.get("placement", ""):
            sample["placement"] = sample["placement"].replace("consumers", "consumer")
    result["summary"] = aggregate(result["samples"], result["settings"]["sizes"])
    result["goals"] = goals(result["summary"])
    result["lossless_goals"] = lossless_goals(result["summary"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (out / "results.md").write_text(table)
    plots = plot(result, out)
    if docs:
        write_docs(result, table, plots, Path(docs))
    print(table)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}" + "".join(f", {p}" for p in plots))
    return 0


def merge(result, other):
    """`result` with the rows `other` measured taken from `other`: its samples
    replace those of the same shape and contender (so a run of `--shapes
    pingpong --only shmq-c,c-ref-ring` replaces only the C ping-pong rows), and
    the run they came from is kept beside, per shape, with the contenders it
    supplied (result["runs"][shape]["contenders"])."""
    rows = {(s["shape"], s["contender"]) for s in other["samples"]}
    merged = dict(result)
    kept = [s for s in result["samples"] if (s["shape"], s["contender"]) not in rows]
    merged["samples"] = kept + other["samples"]
    runs = dict(result.get("runs", {}))
    for shape in {shape for shape, _ in rows}:
        supplied = sorted(who for sh, who in rows if sh == shape)
        whole = not any(s["shape"] == shape for s in kept)
        runs[shape] = {k: other[k] for k in ("machine", "settings", "command", "notes", "versions") if k in other}
        runs[shape]["contenders"] = None if whole else supplied
    merged["runs"] = runs
    return merged


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def aggregate(samples, sizes):
    report = {"1p1c": {}, "1p3c": {}, "pingpong": {}}
    keys = {(s["shape"], s["contender"], s["size"]) for s in samples}
    for shape, who, size in sorted(keys):
        report.setdefault(shape, {})
        group = [s for s in samples if (s["shape"], s["contender"], s["size"]) == (shape, who, size)]
        errors = [s["error"] for s in group if "error" in s]
        good = [s for s in group if "error" not in s]
        if shape in PINGPONG_SHAPES:
            entry = {k: _summary([s[k] for s in good]) for k in ("p50_us", "p99_us", "p999_us", "max_us")}
            entry["cdf_us"] = good[len(good) // 2]["cdf_us"] if good and "cdf_us" in good[0] else None
            report[shape][who] = entry
        else:
            entry = {"delivered_rate": _summary([s["delivered_rate"] for s in good]),
                     "publish_rate": _summary([s["publish_rate"] for s in good]),
                     "lost": sum(s.get("lost", 0) for s in good),
                     "sent": sum(s.get("sent", 0) for s in good)}
            if shape.endswith("1p3c"):
                entry["per_consumer_rate"] = [
                    _summary([s["consumers"][i]["delivered_rate"] for s in good]) for i in range(3)]
            report[shape].setdefault(who, {})[str(size)] = entry
        if errors:
            (report[shape][who] if shape in PINGPONG_SHAPES else report[shape][who][str(size)])["errors"] = errors
    return report


def segment_check():
    """Goal 6, second half: the ring's segment is exactly a header plus the
    slots: it grows by exactly one slot stride (16 + slot size rounded up to
    16) per slot, and what is left is a header of whole pages, at most two."""
    page = os.sysconf("SC_PAGE_SIZE")
    stride = 16 + (64 + 15) // 16 * 16
    sizes = {}
    for capacity in (4096, 8192):
        name = f"bench-size-{os.getpid()}-{capacity}"
        with shmq.Producer(name, slot_size=64, capacity=capacity, unlink_on_close=True):
            sizes[capacity] = os.stat(f"/dev/shm/{shmq.NAME_PREFIX}{name}").st_size
    header = sizes[4096] - 4096 * stride
    exact = (sizes[8192] - sizes[4096] == 4096 * stride and 0 < header <= 2 * page and header % page == 0)
    return {"slot_size": 64, "capacity": 4096, "bytes": sizes[4096], "header_bytes": header,
            "header_plus_slots": header + 4096 * stride if exact else None, "exact": exact}


def memory_check(total):
    """Goal 6, first half: RSS stays flat while `total` messages go through
    publish_many and poll_many (every poll makes a bytes object) in one process."""
    def rss_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    name = f"bench-rss-{os.getpid()}"
    batch = [bytes(64)] * 1000
    with shmq.Producer(name, slot_size=64, capacity=4096, unlink_on_close=True) as p, \
            shmq.Consumer(name) as c:
        samples = []
        done = 0
        t0 = time.perf_counter()
        while done < total:
            p.publish_many(batch)
            if len(c.poll_many(1000)) != 1000:
                raise RuntimeError("memory check: lost messages in a single process")
            done += 1000
            if done % (total // 10) == 0:
                samples.append((done, rss_kib()))
        seconds = time.perf_counter() - t0
    growth = samples[-1][1] - samples[0][1]
    return {"messages": total, "rss_kib": samples, "growth_kib": growth, "seconds": seconds,
            "flat": growth < 1024}


def _median(report, shape, who, size="64", key="delivered_rate"):
    try:
        if shape in PINGPONG_SHAPES:
            return report["pingpong"][who][key]["median"]
        return report[shape][who][size][key]["median"]
    except (KeyError, TypeError):
        return None


def goals(report):
    out = []

    def ratio(a, b):
        return a / b if a and b else None

    py = _median(report, "1p1c", "shmq-py")
    out.append({"goal": "1. Python 1P->1C one call per message >= 5 M msgs/s", "value": py,
                "met": py is not None and py >= 5e6})
    for peer, need in (("mp.Queue", 30), ("pyzmq-ipc", 8), ("faster-fifo", 3), ("iceoryx2", 3)):
        r = ratio(py, _median(report, "1p1c", peer))
        out.append({"goal": f"1. shmq-py >= {need}x {peer}", "value": r, "met": r is not None and r >= need})
    bulk = _median(report, "1p1c", "shmq-py-bulk")
    out.append({"goal": "2. bulk read into a caller buffer >= 50 M msgs/s", "value": bulk,
                "met": bulk is not None and bulk >= 50e6})
    r = ratio(_median(report, "1p1c", "shmq-c"), _median(report, "1p1c", "c-ref-ring"))
    out.append({"goal": "3. C core 1P->1C >= 0.8x the C reference ring", "value": r, "met": r is not None and r >= 0.8})
    p = _median(report, "pingpong", "shmq-py:spin", key="p50_us")
    out.append({"goal": "4. Python spinning round trip median <= 2 us", "value": p, "met": p is not None and p <= 2})
    r = ratio(_median(report, "pingpong", "shmq-c:spin", key="p50_us"),
              _median(report, "pingpong", "c-ref-cacheline:spin", key="p50_us"))
    out.append({"goal": "4. C spinning round trip <= 2x a bare cache-line ping-pong", "value": r,
                "met": r is not None and r <= 2})
    r = ratio(_median(report, "pingpong", "shmq-py:block", key="p50_us"),
              _median(report, "pingpong", "posix_ipc-mq:block", key="p50_us"))
    out.append({"goal": "5. blocking round trip no slower than posix_ipc (ratio <= 1)", "value": r,
                "met": r is not None and r <= 1})
    return out


def lossless_goals(report):
    """The lossless mode's goals, from the lossless shape's 1P->1C rows (one run)."""
    out = []
    rate = _median(report, "lossless-1p1c", "shmq-py-lossless")
    entry = report.get("lossless-1p1c", {}).get("shmq-py-lossless", {}).get("64", {})
    for peer, need, what in (("shmq-py", 0.8, "the lossy rate (shmq-py, same run)"),
                             ("mp.Queue", 30, "mp.Queue"), ("faster-fifo", 10, "faster-fifo put/get")):
        base = _median(report, "lossless-1p1c", peer)
        r = rate / base if rate and base else None
        out.append({"goal": f"lossless 1P->1C >= {need:g}x {what}", "value": r,
                    "met": r is not None and r >= need})
    delivered = bool(entry) and not entry.get("errors") and entry.get("lost", 1) == 0 and entry.get("sent", 0) > 0
    out.append({"goal": "lossless: every message delivered (count checked by each consumer, lost == 0)",
                "value": None, "met": delivered})
    return out


def _lossless_section(result):
    rep = result["summary"]
    if not any(rep.get(k) for k in ("lossless-1p1c", "lossless-1p3c", "lossless-pingpong")):
        return []
    lines = ["### Lossless mode\n"]
    run = result.get("runs", {}).get("lossless-1p1c")
    m, s = (run["machine"], run["settings"]) if run else (result["machine"], result["settings"])
    load = ""
    if m.get("loadavg_start"):
        load = (f" Load average (1 min) {m['loadavg_start'][0]:.1f} at the start and "
                f"{m['loadavg_end'][0]:.1f} at the end, on {m['cpus_usable']} CPUs: the machine was shared "
                "with other work, so absolute numbers are less reliable than on an idle one; compare the "
                "ratios, which come from interleaved rounds.")
    lines.append(("From a separate run, " if run else "From this run, ")
                 + f"`{run['command'] if run else result.get('command', '')}`: {m['cpu']}, {m['cpus_usable']} usable CPUs, "
                 f"{m['date']}" + "".join(f", {k} {v}" for k, v in (run or {}).get("versions", {}).items()
                                          if k in ("python", "shmq", "faster-fifo", "posix_ipc-mq"))
                 + f"; {s['rounds']} interleaved rounds of {s['seconds']} s, "
                 f"{s['pingpong_iterations']} round trips; medians (min-max).{load}\n")
    lines.append("`shmq-py-lossless` is `Producer(name, lossless=True)` with one `publish(msg)` "
                 "(waiting for room) and one `poll()` per message. Every lossless consumer checks "
                 "that it received every message the producer sent, or the run fails; lossy "
                 "`shmq-py` counts what it lost instead, and its rate is what its consumer received. "
                 "mp.Queue and faster-fifo (`put`/`get`) are lossless peers; with three consumers "
                 "they get one queue per consumer, and the producer puts each message into all three.\n")
    lines.append("| contender | 1P -> 1C, 64 B | 1P -> 3C, 64 B (slowest consumer) | lost (all runs) of due |")
    lines.append("|---|---|---|---|")
    for who in LOSSLESS_THROUGHPUT:
        cells, lost, due = [], 0, 0
        for shape, n in (("lossless-1p1c", 1), ("lossless-1p3c", 3)):
            e = rep.get(shape, {}).get(who, {}).get("64")
            d = e and e.get("delivered_rate")
            if not d:
                cells.append("error" if e and e.get("errors") else "-")
                continue
            cells.append(f"{_fmt_rate(d['median'])} ({_fmt_rate(d['min'])}-{_fmt_rate(d['max'])})")
            lost += e.get("lost", 0)
            due += e.get("sent", 0) * n
        if any(c != "-" for c in cells):
            lines.append(f"| {who} | " + " | ".join(cells) + f" | {lost:,} of {due:,} |")
    lines.append("")
    pp = rep.get("lossless-pingpong", {})
    if pp:
        lines.append("Blocking round trip, 64 B (microseconds). `shmq-py-lossless:full` ping-pongs over two "
                     "lossless rings of capacity 2 kept full, so each hop is a producer blocked in "
                     "`publish()` that its consumer's read releases (a futex wake, unless the read "
                     "comes while it still spins); `posix_ipc-mq:block` is a "
                     "blocking `send`/`receive` ping-pong over two POSIX message queues, and "
                     "`shmq-py:block` the lossy ping-pong where the consumer sleeps in `poll(None)`.\n")
        lines.append("| contender:mode | p50 | p99 | p99.9 | max |")
        lines.append("|---|---|---|---|---|")
        for who in LOSSLESS_PINGPONG:
            e = pp.get(who)
            if not e:
                continue
            if not e.get("p50_us"):
                lines.append(f"| {who} | error | | | |")
                continue
            lines.append(f"| {who} | " + " | ".join(
                f"{e[k]['median']:.2f} ({e[k]['min']:.2f}-{e[k]['max']:.2f})"
                for k in ("p50_us", "p99_us", "p999_us", "max_us")) + " |")
        lines.append("")
    full = [x for x in result["samples"] if x["shape"] == "lossless-pingpong"
            and x["contender"] == "shmq-py-lossless:full" and "client_sleeps_per_round_trip" in x]
    if full:
        # A futex wake costs several microseconds a hop on a virtual machine;
        # a round trip under SPUN_US cannot have slept in its median hop.
        slept = [x["p50_us"] for x in full if x["p50_us"] >= SPUN_US]
        spun = [x["p50_us"] for x in full if x["p50_us"] < SPUN_US]
        lines.append("A blocked `publish()` spins briefly (64 looks at the consumers) before it sleeps, "
                     "so the rounds differ. Per round, the p50 and the client's voluntary context "
                     "switches (sleeps) per round trip: "
                     + ", ".join(f"round {x['round']}: {x['p50_us']:.2f} us, "
                                 f"{x['client_sleeps_per_round_trip']:.2f} sleeps" for x in full) + ". "
                     + (f"In the {len(slept)} round(s) with a p50 of {SPUN_US} us or more, where the "
                        f"typical hop was a futex wake (the case to compare with posix_ipc), the p50 was "
                        f"{statistics.median(slept):.2f} us ({min(slept):.2f}-{max(slept):.2f}). "
                        if slept else "")
                     + (f"In the {len(spun)} round(s) under {SPUN_US} us, both processes kept their CPUs "
                        f"and most reads reached the producer while it still spun: p50 "
                        f"{statistics.median(spun):.2f} us. " if spun else "") + "\n")
    lines.append("| goal (lossless, 64 B) | measured | met |")
    lines.append("|---|---|---|")
    for g in result.get("lossless_goals", []):
        v = g["value"]
        lines.append(f"| {g['goal']} | {'-' if v is None else f'{v:.2f}x'} | {'yes' if g['met'] else 'no'} |")
    a = _median(rep, "lossless-pingpong", "shmq-py-lossless:full", key="p50_us")
    b = _median(rep, "lossless-pingpong", "posix_ipc-mq:block", key="p50_us")
    if a and b:
        lines.append(f"| (no goal) blocked-producer round trip vs posix_ipc, p50 ratio (medians over all rounds) "
                     f"| {a / b:.2f}x | - |")
    lines.append("")
    return lines


def _separate(result, shape, who):
    """" (*)" for a row merged in from another run than the rest of its table."""
    run = result.get("runs", {}).get(shape)
    return " (*)" if run and who in (run.get("contenders") or ()) else ""


def markdown(result):
    rep = result["summary"]
    lines = []
    m = result["machine"]
    lines.append(f"Machine: {m['cpu']}, {m['cpus_usable']} usable CPUs, Linux {m['kernel']}, "
                 f"{m['date']}. Python {result['versions']['python']}.")
    s = result["settings"]
    lines.append(f"Settings: {s['rounds']} interleaved rounds, {s['seconds']} s of publishing per "
                 f"throughput run, {s['pingpong_iterations']} ping-pong round trips; medians (min-max).")
    placements = sorted({f"{x['shape']}: {x['placement']}" for x in result["samples"] if x.get("placement")})
    if placements:
        lines.append("Placement: " + "; ".join(placements) + ".")
    for shape, run in sorted(result.get("runs", {}).items()):
        if shape.startswith("lossless") or not run.get("contenders"):
            continue  # the lossless section says where its rows come from
        rm = run["machine"]
        load = (f", load average (1 min) {rm['loadavg_start'][0]:.1f} at the start on {rm['cpus_usable']} CPUs"
                if rm.get("loadavg_start") else "")
        lines.append(f"Rows marked (*) in {shape}, " + ", ".join(run["contenders"])
                     + f", come from a separate run, `{run['command']}`, {rm['date']}{load}, "
                     f"{run['settings']['rounds']} interleaved rounds: compare them with each other, "
                     "not with the rows of this run (goals that compare two of them, as goal 4 does for C, "
                     "stay within one run).")
    lines.append("")
    for shape, title in (("1p1c", "1P -> 1C throughput (messages delivered per second)"),
                         ("1p3c", "1P -> 3C multicast (slowest consumer's delivered rate)")):
        if not rep[shape]:
            continue
        sizes = sorted({int(k) for v in rep[shape].values() for k in v})
        lines.append(f"### {title}\n")
        lost_head = "lost (all consumers, all runs) of messages due" if shape == "1p3c" else "lost (all runs) of sent"
        lines.append("| contender | " + " | ".join(f"{z} B" for z in sizes) + f" | {lost_head} |")
        lines.append("|---|" + "---|" * len(sizes) + "---|")
        for who, by_size in rep[shape].items():
            cells = []
            for z in sizes:
                e = by_size.get(str(z))
                d = e and e["delivered_rate"]
                if not d:
                    cells.append("error" if e and e.get("errors") else "-")
                    continue
                mb = d["median"] * z / 1e6
                cells.append(f"{_fmt_rate(d['median'])} ({_fmt_rate(d['min'])}-{_fmt_rate(d['max'])}), {mb:,.0f} MB/s")
            lost = sum(e.get("lost", 0) for e in by_size.values())
            due = sum(e.get("sent", 0) for e in by_size.values()) * (3 if shape == "1p3c" else 1)
            lines.append(f"| {who}{_separate(result, shape, who)} | " + " | ".join(cells) + f" | {lost:,} of {due:,} |")
        lines.append("")
    if rep["pingpong"]:
        lines.append("### Ping-pong round trip, 64 B (microseconds)\n")
        lines.append("| contender:mode | p50 | p99 | p99.9 | max |")
        lines.append("|---|---|---|---|---|")
        for who, e in sorted(rep["pingpong"].items(), key=lambda kv: (kv[1]["p50_us"] or {}).get("median", 1e9)):
            if not e.get("p50_us"):
                lines.append(f"| {who} | error | | | |")
                continue
            lines.append(f"| {who}{_separate(result, 'pingpong', who)} | " + " | ".join(
                f"{e[k]['median']:.2f} ({e[k]['min']:.2f}-{e[k]['max']:.2f})" for k in ("p50_us", "p99_us", "p999_us", "max_us")) + " |")
        lines.append("")
    lines.append("### Goals (64-byte messages, this run)\n")
    lines.append("| goal | measured | met |")
    lines.append("|---|---|---|")
    for g in result["goals"]:
        v = g["value"]
        shown = "-" if v is None else (_fmt_rate(v) + " msgs/s" if v > 1000 else f"{v:.2f}")
        lines.append(f"| {g['goal']} | {shown} | {'yes' if g['met'] else 'no'} |")
    seg = result["segment_check"]
    if seg["header_plus_slots"]:
        measured = f"{seg['bytes']:,} bytes = {seg['header_plus_slots'] - seg['capacity'] * (16 + seg['slot_size']):,} header + slots"
    else:
        measured = f"{seg['bytes']:,} bytes"
    lines.append(f"| 6. segment is exactly header + slots ({seg['capacity']} x {seg['slot_size']} B) | "
                 f"{measured} | {'yes' if seg['exact'] else 'no'} |")
    mem = result.get("memory_check")
    if mem:
        lines.append(f"| 6. RSS flat over {mem['messages']:,} messages (publish_many/poll_many) | "
                     f"grew {mem['growth_kib']:,} KiB from {mem['rss_kib'][0][1]:,} KiB | {'yes' if mem['flat'] else 'no'} |")
    lines.append("")
    if result["notes"]:
        lines.append("Notes: " + "; ".join(result["notes"]))
        lines.append("")
    lines += _lossless_section(result)
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()))
    return "\n".join(lines) + "\n"


# One fixed colour and marker per contender in every plot. The colours are
# Okabe-Ito's eight (black, orange, sky blue, bluish green, blue, vermillion,
# reddish purple; grey for the C references) and, past eight, Paul Tol's
# "muted" set; fourteen contenders cannot all differ in hue for every kind of
# colour vision, so each also has its own marker. shmq is drawn in warm
# colours and thick lines, its peers in cool ones; C in dashed lines.
STYLE = {
    "shmq-py": ("#D55E00", "o"),
    "shmq-py-batch": ("#E69F00", "s"),
    "shmq-py-bulk": ("#CC79A7", "D"),
    "shmq-py-lossless": ("#882255", "P"),
    "shmq-c": ("#000000", "o"),
    "c-ref-ring": ("#999999", "X"),
    "c-ref-cacheline": ("#999999", "X"),
    "mp.Queue": ("#56B4E9", "v"),
    "mp.Pipe": ("#0072B2", "^"),
    "faster-fifo": ("#009E73", "<"),
    "faster-fifo-get_many": ("#999933", ">"),
    "pyzmq-ipc": ("#332288", "p"),
    "iceoryx2": ("#AA4499", "h"),
    "posix_ipc-mq": ("#44AA99", "*"),
}
# Contenders that drop messages when lapped instead of holding the producer back.
LOSSY = ("shmq-py", "shmq-py-batch", "shmq-py-bulk", "shmq-c", "iceoryx2")


def _style(who):
    """Colour, marker, line style and width for `who` ("name" or "name:mode")."""
    name, _, mode = who.partition(":")
    color, marker = STYLE.get(name, ("#777777", "."))
    # Ping-pong lines differ by mode (blocking dashed), rates by language (C dashed).
    dashed = mode == "block" if mode else name.startswith("c-") or name.endswith("-c")
    return {"color": color, "marker": marker, "linestyle": "--" if dashed else "-",
            "linewidth": 2.4 if name.startswith("shmq") else 1.3}


def _loss_fraction(entry, consumers):
    due = entry.get("sent", 0) * consumers
    return entry.get("lost", 0) / due if due else None


def _pct(f):
    if f == 0:
        return "0"
    return "<0.1%" if f < 0.001 else f"{100 * f:.1f}%" if f < 0.1 else f"{100 * f:.0f}%"


def plot(result, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        result["notes"].append("plots skipped: pip install matplotlib")
        return []
    written = []
    for shape, consumers, name, title in (
            ("1p1c", 1, "throughput.png", "1 producer -> 1 consumer"),
            ("1p3c", 3, "multicast.png", "1 producer -> 3 consumers (slowest consumer)")):
        if result["summary"].get(shape):
            written.append(_plot_rates(result, shape, consumers, title, out / name, plt))
    path = _plot_lossless(result, out, plt)
    if path:
        written.append(path)
    if result["summary"]["pingpong"]:
        written.append(_plot_latency(result, out / "latency_cdf.png", plt))
    return written


def _plot_rates(result, shape, consumers, title, path, plt):
    """Delivered rate by size (top) and, for the lossy contenders, the share
    of due messages lost (bottom), in the same colours."""
    rep = result["summary"][shape]
    fig, (ax, lx) = plt.subplots(2, 1, figsize=(11.5, 8.5), height_ratios=(3, 2))
    for who, by_size in sorted(rep.items(), key=lambda kv: (not kv[0].startswith("shmq"), kv[0])):
        pts = sorted((int(z), e["delivered_rate"]["median"]) for z, e in by_size.items() if e.get("delivered_rate"))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=who, markersize=6, **_style(who))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    all_sizes = sorted({int(z) for v in rep.values() for z in v})
    ax.set_xticks(all_sizes, [f"{z} B" for z in all_sizes])
    ax.minorticks_off()
    ax.set_xlabel("message size")
    ax.set_ylabel("messages delivered per second (median)")
    ax.set_title(f"{title}: delivered rate")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    lossy = [w for w in LOSSY if w in rep]
    sizes = sorted({int(z) for w in lossy for z in rep[w]})
    width = 0.8 / max(len(lossy), 1)
    for i, who in enumerate(lossy):
        for j, z in enumerate(sizes):
            e = rep[who].get(str(z))
            f = e and _loss_fraction(e, consumers)
            if f is None:
                continue
            x = j - 0.4 + width * (i + 0.5)
            lx.bar(x, 100 * f, width, color=_style(who)["color"], edgecolor="black", linewidth=0.4,
                   hatch="//", label=who if j == 0 else None)
            lx.text(x, 100 * f + 1.5, _pct(f), ha="center", va="bottom", fontsize=7, rotation=90)
    lx.set_xticks(range(len(sizes)), [f"{z} B" for z in sizes])
    lx.set_ylim(0, 118)
    lx.set_yticks(range(0, 101, 25))
    lx.set_ylabel("lost, % of messages due")
    lx.set_title("Lossy contenders: messages lost to overrun (all rounds; lossless peers lose none)", fontsize=10)
    lx.grid(True, axis="y", alpha=0.3)
    lx.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_latency(result, path, plt):
    """The CDF's body on a linear scale (left) and p50 to max on a log scale (right)."""
    pp = result["summary"]["pingpong"]
    order = sorted(pp, key=lambda w: (pp[w].get("p50_us") or {}).get("median", 1e9))
    fig, (ax, tx) = plt.subplots(1, 2, figsize=(14.5, 5.8), width_ratios=(3, 2))
    qs = [q / 100 for q in range(0, 100)] + [1.0]
    for who in order:
        e = pp[who]
        st = _style(who)
        if e.get("cdf_us"):
            ax.plot(e["cdf_us"][:100], qs[:100], label=who, color=st["color"], linestyle=st["linestyle"],
                    linewidth=st["linewidth"])
        keys = [k for k in ("p50_us", "p99_us", "p999_us", "max_us") if e.get(k)]
        if keys:
            tx.plot(range(len(keys)), [e[k]["median"] for k in keys], label=who, markersize=6, **st)
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("round trip (microseconds, log scale)")
    ax.set_ylabel("fraction of round trips (p0 to p99)")
    ax.set_title("Round-trip CDF up to p99", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    tx.set_yscale("log")
    tx.set_xticks(range(4), ["p50", "p99", "p99.9", "max"])
    tx.set_ylabel("round trip (microseconds, log scale)")
    tx.set_title("Tails: median over rounds of each percentile", fontsize=10)
    tx.grid(True, which="both", alpha=0.3)
    tx.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="fastest p50 first",
              title_fontsize=8)
    fig.suptitle("Ping-pong round trip, 64-byte messages (solid: spinning, dashed: blocking)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_lossless(result, out, plt):
    """Bars with min-max whiskers: the lossless shape's rates and round trips;
    a lossy bar is labelled with the share of due messages it lost."""
    rep = result["summary"]
    panels = [(shape, n, title) for shape, n, title in (
        ("lossless-1p1c", 1, "1P -> 1C, 64 B"), ("lossless-1p3c", 3, "1P -> 3C, 64 B (slowest consumer)"))
        if rep.get(shape)]
    pp = rep.get("lossless-pingpong", {})
    if not panels and not pp:
        return None
    fig, axes = plt.subplots(1, len(panels) + bool(pp), figsize=(4.4 * (len(panels) + bool(pp)), 4.8),
                             squeeze=False)
    axes = list(axes[0])
    for ax, (shape, n, title) in zip(axes, panels):
        who = [w for w in LOSSLESS_THROUGHPUT if rep[shape].get(w, {}).get("64", {}).get("delivered_rate")]
        d = [rep[shape][w]["64"]["delivered_rate"] for w in who]
        ax.bar(range(len(who)), [x["median"] for x in d],
               yerr=[[x["median"] - x["min"] for x in d], [x["max"] - x["median"] for x in d]],
               color=[_style(w)["color"] for w in who], edgecolor="black", linewidth=0.4,
               hatch=["//" if w in LOSSY else "" for w in who], capsize=4)
        for i, w in enumerate(who):
            if w in LOSSY:
                f = _loss_fraction(rep[shape][w]["64"], n)
                ax.text(i, d[i]["max"] * 1.3, f"lost {_pct(f)}", ha="center", fontsize=8)
        ax.set_xticks(range(len(who)), who, rotation=25, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(top=max(x["max"] for x in d) * 4)
        ax.set_ylabel("messages delivered per second (median)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    if pp:
        ax = axes[-1]
        who = [w for w in LOSSLESS_PINGPONG if pp.get(w, {}).get("p50_us")]
        d = [pp[w]["p50_us"] for w in who]
        ax.bar(range(len(who)), [x["median"] for x in d],
               yerr=[[x["median"] - x["min"] for x in d], [x["max"] - x["median"] for x in d]],
               color=[_style(w)["color"] for w in who], edgecolor="black", linewidth=0.4, capsize=4)
        ax.set_xticks(range(len(who)), who, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel("round trip p50 (microseconds)")
        ax.set_title("Blocking round trip, 64 B", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Lossless mode (whiskers: min-max over rounds; hatched: lossy, with its loss)", fontsize=11)
    fig.tight_layout()
    path = out / "lossless.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_docs(result, table, plots, page):
    page.parent.mkdir(parents=True, exist_ok=True)
    images = []
    for p in plots:
        target = page.parent / p.name
        if p.resolve() != target.resolve():
            shutil.copy(p, target)
        images.append(f"![{p.stem}]({p.name})")
    (page.parent / "benchmarks.json").write_text(json.dumps(result, indent=1))
    images.append("Every sample of this run: [benchmarks.json](benchmarks.json).")
    text = DOC_TEMPLATE.format(table=table, images="\n\n".join(images),
                               command=result.get("command", "python benchmarks/run.py"))
    # Sections measured by other scripts (the bridge, zero-copy) are written by
    # hand below HAND_WRITTEN on the page; a re-render keeps them as they are.
    old = page.read_text() if page.exists() else ""
    if HAND_WRITTEN in old:
        text += "\n" + old[old.index(HAND_WRITTEN):]
    page.write_text(text)


HAND_WRITTEN = "<!-- Hand-written from here on: `run.py --docs` keeps this part as it is. -->"


DOC_TEMPLATE = """# Benchmarks

Numbers from one run of `{command}` on this project's CI machine (a 2-core
virtual machine). They are only comparable within the run: the host moves the
virtual cores around, and absolute rates drift by tens of percent within
minutes. That is why every contender runs interleaved with the others,
round after round, and why goals are judged by ratios from the same run.

## Method

- **Shapes**, after the LMAX Disruptor's perf tests: one producer process and
  one consumer process (1P->1C); one producer and three consumers that each get
  every message (1P->3C; non-broadcast peers get one channel per consumer and
  the producer sends to each); and a ping-pong over two channels, timed by the
  client, spinning and blocking. The **lossless** shape repeats 1P->1C and
  1P->3C at 64 B for shmq's lossless mode next to lossy shmq and the lossless
  peers, and a blocking ping-pong in which every hop releases a producer
  blocked in `publish()` on a full ring (section "Lossless mode" below).
- **Placement**: the producer (or ping-pong client) is pinned to CPU 0 and the
  consumers to CPU 1; with three consumers they share CPU 1.
- **Rates** are messages *delivered* per second: messages received by the
  (slowest) consumer divided by the time from the producer's start to that
  consumer's last message. The producer publishes as fast as it can for a fixed
  time. Lossy contenders (shmq by default, iceoryx2) report what they lost;
  lossless ones (shmq with `lossless=True`, and the peers) apply backpressure
  instead, and a lossless shmq consumer fails the run unless it received
  every message sent.
- **Contenders**: shmq from Python (`publish`/`poll`; `publish_many`/`poll_many`;
  `poll_many_into` a caller buffer), shmq from C (`benchmarks/cbench.c`),
  `multiprocessing.Queue` and `Pipe`, faster-fifo (`put`/`get` and `get_many`),
  pyzmq over `ipc://` (PUSH/PULL, PAIR for ping-pong), iceoryx2 publish-subscribe,
  POSIX message queues via posix_ipc, and a C reference: the simplest
  shared-memory SPSC ring (lossless, so its consumer writes its index back on
  every message) and a bare cache-line ping-pong.

## Reproduce

```sh
bash scripts/setup-venv.sh && . .venv/bin/activate   # or any venv with shmq installed
pip install '.[bench]'                        # the peers and matplotlib
python benchmarks/run.py --quick              # 64-byte messages, under a minute
python benchmarks/run.py --docs               # the full run (about 7 minutes) that produced this page
python benchmarks/run.py --render benchmarks/results/results.json --docs   # re-render tables, plots and this page
python benchmarks/run.py --shapes lossless --rounds 5 --out benchmarks/results-lossless   # the lossless rows alone
python benchmarks/run.py --render docs/benchmarks.json --merge benchmarks/results-lossless/results.json --docs
                                              # ...merged into this page, keeping the other rows' run
python benchmarks/run.py --shapes pingpong --only shmq-c,c-ref-ring --rounds 5 --skip-memory --out benchmarks/results/c-pingpong
python benchmarks/run.py --render docs/benchmarks.json --merge benchmarks/results/c-pingpong/results.json --docs
                                              # only the C ping-pong rows, replaced (marked (*) below)
```

The plots use one colour and marker per contender throughout (Okabe-Ito,
then Paul Tol's muted colours; shmq warm and thick, its peers cool). The
throughput plots show, under the delivered rates, the share of messages each
lossy contender lost; the latency plot shows the CDF up to p99 and, on a log
scale, p50, p99, p99.9 and max.

## What was tuned, and what it gained

Measured on this machine; instruction-level costs from `timeit` in one
process (stable), cross-process effects from interleaved runs (noisy).

- **`publish_many` skips the buffer protocol for `bytes`.** Exporting and
  releasing a `Py_buffer` per message cost more than the ring itself:
  33 ns -> 14 ns per message. The bulk shape is limited by the Python producer,
  so this moved it from 39 M to about 50 M msgs/s delivered (goal 2).
- **`poll()` copies each message once.** The core's `shmq_consumer_poll_alloc`
  asks the binding for memory once it knows the length, so the payload goes
  straight into its `bytes` object instead of through a scratch buffer;
  waiting moved to `shmq_consumer_wait`, outside the GIL. `publish` + `poll`
  in one process: 4096 B 760 -> 680 ns, 1024 B 245 -> 234 ns, 64 B 79 -> 82-87 ns
  (one indirect call more). Measured after the full run below.
- **The lossy fast path writes nothing the consumer reads except the slot.**
  The consumer never writes shared memory on the data path, so the C core
  delivers 1.1-1.3x the reference ring, whose consumer must write its index
  back for flow control on every message (goal 3).
- **One seq_cst fence per publish, one per batch.** The wake-up handshake needs
  a full fence after the stamp store (Dekker); `publish_many` pays it once per
  batch. Spinning C round trips stay within 1.3-1.7x a bare cache-line
  ping-pong (goal 4).
- **Tried and kept as it was:** slots padded to 64-byte multiples (no
  difference above the noise; the 16-byte-aligned stride moves fewer bytes).
- **Measured and left alone:** a sleep with a timeout arms a kernel timer,
  which costs VM exits here: the C blocking round trip is 14.5 us with an
  infinite wait and 15.6 us with a 50 ms timeout (five interleaved pairs, the
  timed one slower in all five). Python's `poll(timeout=None)` waits in 50 ms
  slices on purpose: a consumer cannot change the futex word (its mapping is
  read-only), so a timer-less sleeper could miss `close()` from another thread,
  or a Ctrl-C delivered to another thread. That is about half of what the
  Python blocking round trip pays over the C one.

Things to read in the numbers:

- shmq is lossy by default. When a Python producer calling `publish_many`
  outruns a consumer (large messages, three consumers on one core), the
  consumer is lapped; every lost message is counted in the last column, and
  no torn message is ever delivered.
- The blocking round trip is dominated by the kernel waking a sleeping vCPU
  (~7 us a hop here); shmq, posix_ipc and a pipe differ by a few microseconds.
  From C, shmq beats posix_ipc in every run (about 0.8x); from Python it is at
  parity, and the ratio moves between runs (0.74 to 1.2 over six runs on this
  machine), so goal 5 is met in some runs and missed in others.
- An "error" cell is a run of a peer that did not finish within a minute; the
  JSON says which process was stuck.

## Results

{table}
{images}
"""

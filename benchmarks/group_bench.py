"""Consumer groups: one dispatcher and a pool of workers that split its stream,
against the work queues Python programs otherwise use, interleaved in one run.

    python benchmarks/group_bench.py                  # the default run, under 3 minutes on 2 cores
    python benchmarks/group_bench.py --quick          # a few seconds: every section, tiny
    python benchmarks/group_bench.py --sections dispatch --rounds 5 --seconds 1
    python benchmarks/group_bench.py --readme-scale 1 # faster-fifo's README counts (minutes)

Sections:

  dispatch  One dispatcher -> 2 and 4 workers sharing 64 B tasks. shmq: a
            lossless queue, the workers one consumer group (`poll_many(256)`);
            faster-fifo: one queue, `get_many(256)`; mp.Queue: one queue,
            `get()`. The dispatcher makes one call per task (`publish`/`put`)
            for --seconds, then ends the stream (closing the producer; the
            peers put one None per worker). Beside them, a plain shmq consumer
            alone (shmq-plain, 1 worker), for the ratio a group pays; and
            both again with a dispatcher that publishes 256 tasks a call
            (shmq-group-batch, shmq-plain-batch), so that the readers, not
            the dispatcher, set the pace.
  pool      dispatcher -> 4 workers -> collector, 64 B and 4 KiB. shmq: the
            group above, each worker the producer of its own lossless results
            queue (`publish_many` of each batch), the collector on all of them
            with `shmq.wait_any` and `poll_many`; the peers: one shared tasks
            queue and one shared results queue (faster-fifo: `get_many` and
            `put_many`; mp.Queue: `get` and `put`).
  readme    The shapes of faster-fifo's README (P producers -> C consumers
            sharing the messages, each message the tuple (i,) * 5), with its
            counts times --readme-scale. shmq has one producer per queue, so
            there are P queues and every consumer process is a member of one
            group on each, waiting on them with `shmq.wait_any`; shmq pickles
            and unpickles each message as the peers do. Rows: consume 1
            (`poll`/`get`) and consume 100 (`poll_many(100)`/`get_many(100)`).

Every queue holds about --capacity messages (shmq: slots; mp.Queue: maxsize;
faster-fifo: bytes for that many), except the readme section's, which are
the README's own (100,000 messages for mp.Queue, 100,000 bytes for
faster-fifo). Every contender is lossless and every run checks that the
workers received exactly what was sent (--verify also checks the sum of the
sequence numbers: each message once). Rates are messages delivered per
second, from the start barrier to the last worker's (collector's) last
message. Contenders run interleaved, round after round; compare ratios within
a round. Placement (dispatch, pool): the dispatcher (and the collector) on the
first usable CPU, the workers on the others, round robin; readme: unpinned.

Writes a Markdown table to stdout, the JSON to --json (default
benchmarks/group_results.json) and a plot to --plot (default docs/groups.png,
needs matplotlib).
"""
import argparse
import json
import multiprocessing as mp
import os
import pickle
import queue
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import suite  # benchmarks/suite.py: this script's folder is first on sys.path
import shmq

ROOT = Path(__file__).resolve().parent.parent
SEQ = struct.Struct("<Q")
GROUP = "workers"

DISPATCH_WORKERS = (2, 4)
POOL_SIZES = (64, 4096)
# faster-fifo's README: (producers, consumers, messages per producer), and the
# seconds it published for its 2-core machine (System #2) as (mp.Queue,
# faster-fifo get(), faster-fifo get_many()).
README_SHAPES = [(1, 1, 200_000), (1, 10, 200_000), (10, 1, 100_000),
                 (3, 20, 100_000), (20, 3, 50_000), (20, 20, 50_000)]
README_PUBLISHED = {"1p1c": (7.86, 2.09, 2.2), "1p10c": (11.68, 4.01, 3.88), "10p1c": (44.48, 16.68, 5.98),
                    "3p20c": (22.59, 7.83, 7.49), "20p3c": (66.3, 22.3, 6.35), "20p20c": (78.75, 14.39, 15.78)}
README_QUEUE = 100_000  # the README's queue_cls(100000)


def _make_msg(i):
    return (i,) * 5  # the README's message


def _messages(size, verify):
    """The dispatcher's messages: one constant, or each carrying its sequence."""
    if not verify:
        msg = bytes(size)
        return lambda i: msg
    pad = bytes(size - SEQ.size)
    return lambda i: SEQ.pack(i) + pad


def _send_for(send, size, seconds, verify, rounds=256, batch=0):
    """Calls send(msg) for `seconds`, `rounds` messages between clock checks
    (batch: send(list of `batch` messages), one batch between clock checks);
    returns the calls made."""
    make = _messages(size, verify)
    clock = time.perf_counter
    end = clock() + seconds
    calls = 0
    if batch:
        while True:
            send([make(i) for i in range(calls * batch, (calls + 1) * batch)])
            calls += 1
            if clock() >= end:
                return calls
    while True:
        for i in range(calls, calls + rounds):
            send(make(i))
        calls += rounds
        if clock() >= end:
            return calls


def _seqsum(msgs):
    unpack = SEQ.unpack_from
    return sum(unpack(m)[0] for m in msgs)


def _drain_group(c, use, verify):
    """A dispatch worker: poll_many batches until the stream ends and the
    group has claimed every message; returns (received, seqsum)."""
    poll_many, wait = c.poll_many, c.wait
    got = total = 0
    while True:
        batch = poll_many(256)
        if batch:
            got += len(batch)
            if verify:
                total += _seqsum(batch)
            if use is not None:
                use(batch)
        elif not wait():  # False: ended and everything read (by this group)
            return got, total


def _drain_all(inboxes, take, count):
    """A collector: takes batches (take(consumer) -> list) from every inbox as
    wait_any finds them ready, until each stream has ended and been read;
    returns (received, the sum of count(batch), when the last was taken)."""
    got = total = 0
    live = list(inboxes)
    while live:
        for c in shmq.wait_any(live, 10):
            ended = c.ended  # before the poll: ended, then nothing left, means done
            batch = take(c)
            if batch:
                got += len(batch)
                total += count(batch)
            elif ended:
                live.remove(c)
    return got, total, time.perf_counter()


# ------------------------------------------------------------------- shmq

class ShmqGroup:
    """shmq: a lossless queue; the workers are one consumer group."""
    name = "shmq-group"
    group = GROUP
    batch = 0  # messages per publish_many (0: one publish per message)

    def available(self):
        return True, ""

    def version(self):
        return shmq.__version__

    def _unique(self, tag):
        return f"bench-{tag}-{os.getpid()}-{time.monotonic_ns() % 10**9}"

    def _create(self, tag, size, capacity, max_consumers=64):
        name = self._unique(tag)
        shmq.Producer(name, slot_size=max(size, 8), capacity=capacity, lossless=True,
                      max_consumers=max_consumers).close()
        return name

    def teardown(self, names):
        for name in names:
            try:
                shmq.unlink(name, force=True)
            except shmq.QueueNotFound:
                pass

    # dispatch
    def dispatch_setup(self, size, capacity, workers):
        return [self._create("grp", size, capacity)]

    def dispatcher(self, names, size, seconds, workers, go, verify):
        with shmq.Producer(names[0]) as p:
            t0 = go()
            if self.batch:
                sent = self.batch * _send_for(p.publish_many, size, seconds, verify, batch=self.batch)
            else:
                sent = _send_for(p.publish, size, seconds, verify)
            t_end = time.perf_counter()
        return {"sent": sent, "t0": t0, "t_end": t_end}

    def worker(self, names, index, go, verify):
        with shmq.Consumer(names[0], group=self.group) as c:
            go()
            got, total = _drain_group(c, None, verify)
            t_end = time.perf_counter()
        return {"received": got, "seqsum": total, "t_end": t_end}

    # pool
    def pool_setup(self, size, capacity, workers):
        return [self._create("pool", size, capacity)] + [self._create(f"res{i}", size, capacity)
                                                          for i in range(workers)]

    def pool_dispatcher(self, names, size, seconds, workers, go, verify):
        return self.dispatcher(names, size, seconds, workers, go, verify)

    def pool_worker(self, names, index, go, verify):
        with shmq.Consumer(names[0], group=GROUP) as c, shmq.Producer(names[1 + index]) as out:
            go()
            got, _ = _drain_group(c, out.publish_many, False)
        return {"received": got}

    def pool_collector(self, names, workers, go, verify):
        inboxes = [shmq.Consumer(name) for name in names[1:]]
        go()
        got, total, t_end = _drain_all(inboxes, lambda c: c.poll_many(4096),
                                       _seqsum if verify else (lambda batch: 0))
        for c in inboxes:
            c.close()
        return {"received": got, "seqsum": total, "t_end": t_end}

    # readme
    def readme_setup(self, producers, consumers):
        return [self._create("ff", 64, 4096, max_consumers=max(64, consumers + 2)) for _ in range(producers)]

    def readme_producer(self, names, index, count, go):
        dumps = pickle.dumps
        with shmq.Producer(names[index]) as p:
            t0 = go()
            publish = p.publish
            for i in range(count):
                publish(dumps(_make_msg(i)))
        return {"sent": count, "t0": t0}

    def readme_finish(self, names, consumers):
        pass  # the producers' close() ended every stream

    def readme_consumer(self, names, index, many, go):
        inboxes = [shmq.Consumer(name, group=GROUP) for name in names]
        go()
        loads = pickle.loads

        def take(c):
            if many:
                return c.poll_many(many)
            m = c.poll()
            return [] if m is None else [m]

        got, total, t_end = _drain_all(inboxes, take,
                                       lambda batch: sum(loads(m)[0] for m in batch))
        for c in inboxes:
            c.close()
        return {"received": got, "seqsum": total, "t_end": t_end}


class ShmqPlain(ShmqGroup):
    """shmq: one plain consumer reading the whole stream alone (the reference a
    group is compared with)."""
    name = "shmq-plain"
    group = None


class ShmqGroupBatch(ShmqGroup):
    """shmq-group with a dispatcher that publishes 256 tasks a call, so that
    the readers, not the dispatcher, set the pace."""
    name = "shmq-group-batch"
    batch = 256


class ShmqPlainBatch(ShmqGroupBatch):
    name = "shmq-plain-batch"
    group = None


# ---------------------------------------------------------------- the peers

class FasterFifo:
    """faster-fifo: one queue shared by the workers; `put` one task at a time,
    `get_many` in the workers and the collector; one None per worker ends it."""
    name = "faster-fifo"

    def available(self):
        try:
            import faster_fifo  # noqa: F401
        except ImportError:
            return False, "pip install faster-fifo"
        return True, ""

    def version(self):
        from importlib.metadata import version
        return version("faster-fifo")

    def _queue(self, max_size_bytes):
        import faster_fifo
        return faster_fifo.Queue(max_size_bytes=max_size_bytes)

    def teardown(self, state):
        pass

    def dispatch_setup(self, size, capacity, workers):
        return [self._queue(capacity * (size + 32))]  # about `capacity` pickled messages

    def dispatcher(self, state, size, seconds, workers, go, verify):
        q = state[0]
        t0 = go()
        sent = _send_for(lambda m: q.put(m, timeout=30), size, seconds, verify)
        t_end = time.perf_counter()
        for _ in range(workers):
            q.put(None, timeout=30)
        return {"sent": sent, "t0": t0, "t_end": t_end}

    @staticmethod
    def _drain(q, many, verify, use=None):
        """get_many(many) until a None; extra Nones taken go back for the others."""
        got = total = 0
        while True:
            batch = q.get_many(max_messages_to_get=many, timeout=30)
            ends = batch.count(None)
            if ends:
                batch = [m for m in batch if m is not None]
            got += len(batch)
            if verify:
                total += _seqsum(batch)
            if use is not None and batch:
                use(batch)
            if ends:
                for _ in range(ends - 1):
                    q.put(None, timeout=30)
                return got, total

    def worker(self, state, index, go, verify):
        go()
        got, total = self._drain(state[0], 256, verify)
        return {"received": got, "seqsum": total, "t_end": time.perf_counter()}

    def pool_setup(self, size, capacity, workers):
        return [self._queue(capacity * (size + 32)), self._queue(capacity * (size + 32))]

    def pool_dispatcher(self, state, size, seconds, workers, go, verify):
        return self.dispatcher(state, size, seconds, workers, go, verify)

    def pool_worker(self, state, index, go, verify):
        tasks, results = state
        go()
        got, _ = self._drain(tasks, 256, False, lambda batch: results.put_many(batch, timeout=30))
        results.put(None, timeout=30)
        return {"received": got}

    def pool_collector(self, state, workers, go, verify):
        results = state[1]
        go()
        got = total = ended = 0
        while ended < workers:
            batch = results.get_many(max_messages_to_get=4096, timeout=30)
            ends = batch.count(None)
            if ends:
                ended += ends
                batch = [m for m in batch if m is not None]
            got += len(batch)
            if verify:
                total += _seqsum(batch)
        return {"received": got, "seqsum": total, "t_end": time.perf_counter()}

    def readme_setup(self, producers, consumers):
        return [self._queue(README_QUEUE)]

    def readme_producer(self, state, index, count, go):
        q = state[0]
        t0 = go()
        for i in range(count):
            q.put(_make_msg(i), timeout=30)
        return {"sent": count, "t0": t0}

    def readme_finish(self, state, consumers):
        for _ in range(consumers):
            state[0].put(None, timeout=30)

    def readme_consumer(self, state, index, many, go):
        q = state[0]
        go()
        got = total = 0
        if many:
            while True:
                batch = q.get_many(max_messages_to_get=many, timeout=30)
                ends = batch.count(None)
                for m in batch:
                    if m is not None:
                        total += m[0]
                        got += 1
                if ends:
                    for _ in range(ends - 1):
                        q.put(None, timeout=30)
                    break
        else:
            get = q.get
            while (m := get(timeout=30)) is not None:
                total += m[0]
                got += 1
        return {"received": got, "seqsum": total, "t_end": time.perf_counter()}


class MpQueue:
    """multiprocessing.Queue: one queue shared by the workers, bounded to
    `capacity` messages; `put` and `get` one at a time; one None per worker."""
    name = "mp.Queue"

    def available(self):
        return True, ""

    def version(self):
        return "stdlib"

    def teardown(self, state):
        for q in state:
            q.cancel_join_thread()
            q.close()

    def dispatch_setup(self, size, capacity, workers):
        return [mp.get_context("fork").Queue(maxsize=capacity)]

    def dispatcher(self, state, size, seconds, workers, go, verify):
        q = state[0]
        t0 = go()
        sent = _send_for(q.put, size, seconds, verify)
        t_end = time.perf_counter()
        for _ in range(workers):
            q.put(None)
        q.close()
        q.join_thread()  # flush the feeder thread before this process exits
        return {"sent": sent, "t0": t0, "t_end": t_end}

    def worker(self, state, index, go, verify):
        get = state[0].get
        go()
        got = total = 0
        while (m := get()) is not None:
            got += 1
            if verify:
                total += SEQ.unpack_from(m)[0]
        return {"received": got, "seqsum": total, "t_end": time.perf_counter()}

    def pool_setup(self, size, capacity, workers):
        ctx = mp.get_context("fork")
        return [ctx.Queue(maxsize=capacity), ctx.Queue(maxsize=capacity)]

    def pool_dispatcher(self, state, size, seconds, workers, go, verify):
        return self.dispatcher(state[:1], size, seconds, workers, go, verify)

    def pool_worker(self, state, index, go, verify):
        tasks, results = state
        get, put = tasks.get, results.put
        go()
        got = 0
        while (m := get()) is not None:
            put(m)
            got += 1
        put(None)
        results.close()
        results.join_thread()
        return {"received": got}

    def pool_collector(self, state, workers, go, verify):
        get = state[1].get
        go()
        got = total = ended = 0
        while ended < workers:
            m = get()
            if m is None:
                ended += 1
                continue
            got += 1
            if verify:
                total += SEQ.unpack_from(m)[0]
        return {"received": got, "seqsum": total, "t_end": time.perf_counter()}

    def readme_setup(self, producers, consumers):
        return [mp.get_context("fork").Queue(README_QUEUE)]

    def readme_producer(self, state, index, count, go):
        q = state[0]
        t0 = go()
        for i in range(count):
            q.put(_make_msg(i))
        q.close()
        q.join_thread()
        return {"sent": count, "t0": t0}

    def readme_finish(self, state, consumers):
        for _ in range(consumers):
            state[0].put(None)

    def readme_consumer(self, state, index, many, go):
        get = state[0].get
        go()
        got = total = 0
        while (m := get()) is not None:
            total += m[0]
            got += 1
        return {"received": got, "seqsum": total, "t_end": time.perf_counter()}


CONTENDERS = [ShmqGroup(), ShmqPlain(), ShmqGroupBatch(), ShmqPlainBatch(), FasterFifo(), MpQueue()]
# readme rows: (row name, contender name, messages per consumer call; 0: one call per message)
README_ROWS = [("shmq-group poll", "shmq-group", 0), ("shmq-group poll_many(100)", "shmq-group", 100),
               ("faster-fifo get", "faster-fifo", 0), ("faster-fifo get_many(100)", "faster-fifo", 100),
               ("mp.Queue get", "mp.Queue", 0)]


# ---------------------------------------------------------------- running

def _child(role, args, kwargs, tag, cpu, barrier, results):
    """One process of a run: set up, meet the others at the barrier, run, report."""
    def go():
        barrier.wait(timeout=60)
        return time.perf_counter()
    try:
        suite._pin(cpu)
        results.put((tag, role(*args, go=go, **kwargs)))
    except BaseException as e:  # reported, never hangs the parent
        barrier.abort()
        results.put(("error", f"{tag[0]}: {type(e).__name__}: {e}"))


class Run:
    """The processes of one measurement, forked from this one."""

    def __init__(self, parties):
        self.ctx = mp.get_context("fork")
        self.barrier = self.ctx.Barrier(parties)
        self.results = self.ctx.Queue()
        self.procs = []

    def start(self, role, args, tag, cpu=None, **kwargs):
        p = self.ctx.Process(target=_child, args=(role, args, kwargs, tag, cpu, self.barrier, self.results))
        p.start()
        self.procs.append(p)

    def collect(self, timeout, on_result=None):
        """Every process's report, by tag; raises the first error."""
        got = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.procs):
            try:
                tag, out = self.results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                stuck = [p.name for p in self.procs if p.is_alive()]
                raise RuntimeError(f"timed out; {len(stuck)} process(es) still running") from None
            if tag == "error":
                raise RuntimeError(out)
            got[tag] = out
            if on_result:
                on_result(tag, got)
        return got

    def reap(self):
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        self.results.cancel_join_thread()


def _placement(workers, cpus):
    if len(cpus) < 2:
        return None, [None] * workers, "unpinned (1 CPU)"
    rest = cpus[1:]
    placed = [rest[i % len(rest)] for i in range(workers)]
    return cpus[0], placed, f"dispatcher on CPU {cpus[0]}, workers on CPU {','.join(map(str, placed))}"


def run_dispatch(contender, size, workers, seconds, capacity, verify, pin=True):
    state = contender.dispatch_setup(size, capacity, workers)
    run = Run(workers + 1)
    dcpu, wcpus, placement = _placement(workers, suite._cpus() if pin else [])
    try:
        for i in range(workers):
            run.start(contender.worker, (state, i), ("worker", i), wcpus[i], verify=verify)
        run.start(contender.dispatcher, (state, size, seconds, workers), ("dispatcher",), dcpu, verify=verify)
        got = run.collect(seconds + 90)
    finally:
        run.reap()
        contender.teardown(state)
    d = got[("dispatcher",)]
    per_worker = [got[("worker", i)]["received"] for i in range(workers)]
    received = sum(per_worker)
    t_end = max(got[("worker", i)]["t_end"] for i in range(workers))
    _check(contender.name, d["sent"], received, [got[("worker", i)].get("seqsum") for i in range(workers)], verify)
    return {"sent": d["sent"], "received": received, "per_worker": per_worker,
            "seconds": t_end - d["t0"], "rate": received / (t_end - d["t0"]),
            "publish_rate": d["sent"] / (d["t_end"] - d["t0"]), "placement": placement}


def run_pool(contender, size, workers, seconds, capacity, verify, pin=True):
    state = contender.pool_setup(size, capacity, workers)
    run = Run(workers + 2)
    dcpu, wcpus, placement = _placement(workers, suite._cpus() if pin else [])
    try:
        for i in range(workers):
            run.start(contender.pool_worker, (state, i), ("worker", i), wcpus[i], verify=verify)
        run.start(contender.pool_collector, (state, workers), ("collector",), dcpu, verify=verify)
        run.start(contender.pool_dispatcher, (state, size, seconds, workers), ("dispatcher",), dcpu,
                  verify=verify)
        got = run.collect(seconds + 90)
    finally:
        run.reap()
        contender.teardown(state)
    d, c = got[("dispatcher",)], got[("collector",)]
    _check(contender.name, d["sent"], c["received"], [c.get("seqsum")], verify)
    per_worker = [got[("worker", i)]["received"] for i in range(workers)]
    return {"sent": d["sent"], "received": c["received"], "per_worker": per_worker,
            "seconds": c["t_end"] - d["t0"], "rate": c["received"] / (c["t_end"] - d["t0"]),
            "placement": placement.replace("workers", "collector on the dispatcher's, workers")}


def run_readme(contender, many, producers, consumers, count):
    state = contender.readme_setup(producers, consumers)
    run = Run(producers + consumers)
    finished = []

    def on_result(tag, got):  # every producer done: the peers' end markers go in
        if tag[0] == "producer" and sum(t[0] == "producer" for t in got) == producers and not finished:
            finished.append(True)
            contender.readme_finish(state, consumers)

    try:
        for i in range(consumers):
            run.start(contender.readme_consumer, (state, i, many), ("consumer", i))
        for i in range(producers):
            run.start(contender.readme_producer, (state, i, count), ("producer", i))
        got = run.collect(300, on_result)
    finally:
        run.reap()
        contender.teardown(state)
    t0 = min(got[("producer", i)]["t0"] for i in range(producers))
    t_end = max(got[("consumer", i)]["t_end"] for i in range(consumers))
    received = sum(got[("consumer", i)]["received"] for i in range(consumers))
    seqsums = [got[("consumer", i)]["seqsum"] for i in range(consumers)]
    _check(contender.name, producers * count, received, seqsums, True, per_producer=producers)
    return {"sent": producers * count, "received": received, "seconds": t_end - t0,
            "rate": received / (t_end - t0),
            "per_consumer": [got[("consumer", i)]["received"] for i in range(consumers)]}


def _check(who, sent, received, seqsums, verify, per_producer=1):
    if received != sent:
        raise RuntimeError(f"{who}: received {received} of {sent}")
    if verify:
        n = sent // per_producer
        want = per_producer * n * (n - 1) // 2
        if sum(seqsums) != want:
            raise RuntimeError(f"{who}: sequence numbers sum to {sum(seqsums)}, not {want}: "
                               "a message delivered twice and another never")


# ---------------------------------------------------------------- reports

def _summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _fmt_range(s, fmt=suite._fmt_rate):
    if not s:
        return "-"
    return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])})" if s["n"] > 1 else fmt(s["median"])


def _ratio(x):
    return f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def summarize(samples):
    """Medians by row, and the ratios of shmq-group to each peer within each round."""
    rows = {}
    for s in samples:
        key = (s["section"], s["who"], s["config"])
        rows.setdefault(key, []).append(s)
    summary = {}
    for (section, who, config), group in rows.items():
        good = [s for s in group if "error" not in s]
        entry = {"rate": _summary([s["rate"] for s in good]),
                 "seconds": _summary([s["seconds"] for s in good]),
                 "errors": [s["error"] for s in group if "error" in s]}
        summary.setdefault(section, {}).setdefault(who, {})[config] = entry
    ratios = {}

    def rate(section, who, config, r):
        for s in rows.get((section, who, config), []):
            if s["round"] == r and "error" not in s:
                return s["rate"]
        return None

    rounds = sorted({s["round"] for s in samples})
    for section, (who, config), (peer, pconfig) in RATIOS:
        per_round = []
        for r in rounds:
            a, b = rate(section, who, config, r), rate(section, peer, pconfig, r)
            if a and b:
                per_round.append(a / b)
        if per_round:
            ratios[f"{section}: {who} ({config}) / {peer} ({pconfig})"] = _summary(per_round)
    return summary, ratios


# (section, (contender, config), (contender, config)): the ratios reported,
# each taken within a round.
RATIOS = ([("dispatch", ("shmq-group", f"{w} workers"), (peer, f"{w} workers"))
           for w in DISPATCH_WORKERS for peer in ("faster-fifo", "mp.Queue")]
          + [("dispatch", ("shmq-group", f"{w} workers"), ("shmq-plain", "1 worker")) for w in DISPATCH_WORKERS]
          + [("dispatch", ("shmq-group-batch", f"{w} workers"), ("shmq-plain-batch", "1 worker"))
             for w in DISPATCH_WORKERS]
          + [("pool", ("shmq-group", f"{z} B"), (peer, f"{z} B")) for z in POOL_SIZES
             for peer in ("faster-fifo", "mp.Queue")])


def goals(ratios):
    out = []

    def goal(text, key, target):
        r = ratios.get(key)
        out.append({"goal": text, "measured": r, "met": r["median"] >= target if r else None})

    for w in DISPATCH_WORKERS:
        for peer in ("faster-fifo", "mp.Queue"):
            goal(f"group of {w} >= 20x {peer} ({w} workers; one call per task)",
                 f"dispatch: shmq-group ({w} workers) / {peer} ({w} workers)", 20)
    for w in DISPATCH_WORKERS:
        goal(f"group of {w} >= 0.5x one plain consumer, dispatcher one publish per task",
             f"dispatch: shmq-group ({w} workers) / shmq-plain (1 worker)", 0.5)
        goal(f"group of {w} >= 0.5x one plain consumer, dispatcher publish_many (the readers' limit)",
             f"dispatch: shmq-group-batch ({w} workers) / shmq-plain-batch (1 worker)", 0.5)
    return out


def markdown(result):
    summary, ratios = result["summary"], result["ratios"]
    lines = []
    settings = result["settings"]
    m = result["machine"]
    lines.append(f"Machine: {m['cpu']}, {m['cpus_usable']} usable CPUs, Linux {m['kernel']}, {m['date']}; "
                 f"load average {m.get('loadavg_start')} at the start. {settings['rounds']} interleaved rounds, "
                 f"{settings['seconds']} s of dispatching per run; medians (min-max).")
    if "dispatch" in summary:
        lines += ["", "### Dispatcher -> workers in a group, 64 B tasks (tasks delivered per second)", "",
                  "| contender | " + " | ".join(f"{w} workers" for w in DISPATCH_WORKERS) + " | 1 worker |",
                  "|---|" + "---:|" * (len(DISPATCH_WORKERS) + 1)]
        for who, by in summary["dispatch"].items():
            cells = [_fmt_range(by.get(f"{w} workers", {}).get("rate")) for w in DISPATCH_WORKERS]
            cells.append(_fmt_range(by.get("1 worker", {}).get("rate")))
            lines.append(f"| {who} | " + " | ".join(cells) + " |")
    if "pool" in summary:
        sizes = sorted({int(c.split()[0]) for by in summary["pool"].values() for c in by})
        lines += ["", f"### Full pool: dispatcher -> {settings['pool_workers']} workers -> collector "
                      "(results collected per second)", "",
                  "| contender | " + " | ".join(f"{z} B" for z in sizes) + " |", "|---|" + "---:|" * len(sizes)]
        for who, by in summary["pool"].items():
            lines.append(f"| {who} | " + " | ".join(_fmt_range(by.get(f"{z} B", {}).get("rate")) for z in sizes) + " |")
    if "readme" in summary:
        scale = settings["readme_scale"]
        configs = [f"{p}p{c}c" for p, c, _ in README_SHAPES]
        lines += ["", f"### faster-fifo's README shapes, x{scale} of its counts "
                      "(seconds from the start barrier to the last message; messages per second)", "",
                  "| row | " + " | ".join(f"{p}P -> {c}C ({int(n * scale):,}/producer)"
                                          for p, c, n in README_SHAPES) + " |",
                  "|---|" + "---:|" * len(configs)]
        for who, by in summary["readme"].items():
            cells = []
            for cfg in configs:
                e = by.get(cfg)
                if not e or not e["rate"]:
                    cells.append("error" if e and e["errors"] else "-")
                    continue
                cells.append(f"{e['seconds']['median']:.3f} s, {suite._fmt_rate(e['rate']['median'])}")
            lines.append(f"| {who} | " + " | ".join(cells) + " |")
        base = "shmq-group poll_many(100)"
        if base in summary["readme"]:
            lines += ["", f"{base} over each row (messages per second, medians):", "",
                      "| row | " + " | ".join(configs) + " |", "|---|" + "---:|" * len(configs)]
            for who, by in summary["readme"].items():
                if who == base:
                    continue
                cells = []
                for cfg in configs:
                    a, b = summary["readme"][base].get(cfg), by.get(cfg)
                    ok = a and b and a["rate"] and b["rate"]
                    cells.append(_ratio(a["rate"]["median"] / b["rate"]["median"]) if ok else "-")
                lines.append(f"| {who} | " + " | ".join(cells) + " |")
    if ratios:
        lines += ["", "### Ratios within each round: median (min-max)", "", "| ratio | measured |", "|---|---:|"]
        for k, r in ratios.items():
            if r:
                lines.append(f"| {k} | {_fmt_range(r, _ratio)} |")
    if any(g["met"] is not None for g in result["goals"]):
        lines += ["", "| goal | measured (median of rounds) | met |", "|---|---:|---|"]
        for g in result["goals"]:
            met = "-" if g["met"] is None else "yes" if g["met"] else "no"
            lines.append(f"| {g['goal']} | {_fmt_range(g['measured'], _ratio)} | {met} |")
    errors = [f"{s['section']} {s['who']} {s['config']} round {s['round']}: {s['error']}"
              for s in result["samples"] if "error" in s]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {e}" for e in errors]
    for note in result["notes"]:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"


COLORS = {"shmq-group": "#D55E00", "shmq-plain": "#E69F00", "shmq-group-batch": "#882255",
          "shmq-plain-batch": "#CC79A7", "shmq-group poll": "#D55E00",
          "shmq-group poll_many(100)": "#882255", "faster-fifo get": "#009E73",
          "faster-fifo get_many(100)": "#999933", "mp.Queue get": "#56B4E9"}


def _color(who):
    return COLORS.get(who) or suite.STYLE.get(who, ("#777777", "."))[0]


def plot(result, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        result["notes"].append("plot skipped: pip install matplotlib")
        return None
    summary = result["summary"]
    panels = [s for s in ("dispatch", "pool", "readme") if s in summary]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.2), squeeze=False)
    titles = {"dispatch": "dispatcher -> workers, 64 B",
              "pool": f"dispatcher -> {result['settings']['pool_workers']} workers -> collector",
              "readme": f"faster-fifo README shapes (x{result['settings']['readme_scale']})"}
    for ax, section in zip(axes[0], panels):
        whos = list(summary[section])
        configs = []
        for by in summary[section].values():
            configs += [c for c in by if c not in configs]
        if section == "readme":
            configs = [c for c in (f"{p}p{c}c" for p, c, _ in README_SHAPES) if c in configs]
        # Each group of bars holds only the contenders measured there, centred.
        labelled = set()
        for j, cfg in enumerate(configs):
            here = [w for w in whos if (summary[section][w].get(cfg) or {}).get("rate")]
            width = 0.8 / max(len(here), 1)
            for k, who in enumerate(here):
                r = summary[section][who][cfg]["rate"]
                ax.bar(j + (k - (len(here) - 1) / 2) * width, r["median"], width,
                       yerr=[[r["median"] - r["min"]], [r["max"] - r["median"]]], capsize=2,
                       label=None if who in labelled else who, color=_color(who),
                       edgecolor="black" if who.startswith("shmq") else "none", linewidth=0.6)
                labelled.add(who)
        ax.set_yscale("log")
        ax.set_xticks(range(len(configs)))
        ax.set_xticklabels(configs, rotation=20 if section == "readme" else 0)
        ax.set_ylabel("messages delivered per second")
        ax.set_title(titles[section])
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, framealpha=0.9)
    m = result["machine"]
    fig.suptitle(f"Consumer groups, {m['cpus_usable']} CPUs ({m['cpu']}), {result['settings']['rounds']} "
                 "round(s): median, bars min-max", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _commit():
    """The checkout's commit, and whether csrc/ or shmq/ differ from it."""
    try:
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "csrc", "shmq"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + (" (csrc/ or shmq/ modified)" if dirty else "")) or None


class Progress(suite.Progress):
    def step(self, label):
        if sys.stderr.isatty():
            super().step(label)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="dispatch,pool,readme", help="any of dispatch,pool,readme")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; readme: --readme-rounds)")
    parser.add_argument("--readme-rounds", type=int, help="rounds of the readme section (default 2)")
    parser.add_argument("--seconds", type=float, help="dispatching time per dispatch/pool run (default 0.5)")
    parser.add_argument("--capacity", type=int, default=4096, help="messages each queue holds (default 4096)")
    parser.add_argument("--pool-workers", type=int, default=4, help="workers in the pool section (default 4)")
    parser.add_argument("--readme-scale", type=float, help="times faster-fifo's README counts (default 0.1)")
    parser.add_argument("--only", help="comma-separated contenders: " + ",".join(c.name for c in CONTENDERS))
    parser.add_argument("--quick", action="store_true", help="one short round of everything (seconds)")
    parser.add_argument("--verify", action="store_true",
                        help="every message carries its sequence number; check each arrived once")
    parser.add_argument("--no-pin", action="store_true", help="leave the dispatch and pool processes unpinned")
    parser.add_argument("--render", metavar="JSON", help="only re-render the table and the plot of a saved run")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "group_results.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "groups.png"))
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        result["summary"], result["ratios"] = summarize(result["samples"])
        result["goals"] = goals(result["ratios"])
        path = plot(result, Path(args.plot)) if args.plot else None
        print(markdown(result))
        print("wrote " + str(path) if path else "no plot")
        return 0
    rounds = args.rounds or (1 if args.quick else 3)
    readme_rounds = args.readme_rounds or args.rounds or (1 if args.quick else 2)
    seconds = args.seconds or (0.1 if args.quick else 0.5)
    scale = args.readme_scale or (0.01 if args.quick else 0.1)
    sections = args.sections.split(",")
    only = set(args.only.split(",")) if args.only else None

    notes, contenders = [], {}
    for c in CONTENDERS:
        if only and c.name not in only:
            continue
        ok, why = c.available()
        if ok:
            contenders[c.name] = c
        else:
            notes.append(f"{c.name} skipped: {why}")

    plan = []
    for r in range(max(rounds, readme_rounds)):
        if "dispatch" in sections and r < rounds:
            for workers in DISPATCH_WORKERS:
                plan += [("dispatch", who, f"{workers} workers", (64, workers), r)
                         for who in ("shmq-group", "faster-fifo", "mp.Queue", "shmq-group-batch")
                         if who in contenders]
            plan += [("dispatch", who, "1 worker", (64, 1), r)
                     for who in ("shmq-plain", "shmq-plain-batch") if who in contenders]
        if "pool" in sections and r < rounds:
            for size in POOL_SIZES:
                plan += [("pool", who, f"{size} B", (size, args.pool_workers), r)
                         for who in ("shmq-group", "faster-fifo", "mp.Queue") if who in contenders]
        if "readme" in sections and r < readme_rounds:
            for p, c, n in README_SHAPES:
                plan += [("readme", row, f"{p}p{c}c", (who, many, p, c, max(1, int(n * scale))), r)
                         for row, who, many in README_ROWS if who in contenders]

    loadavg_start = suite._loadavg()
    samples = []
    progress = Progress(len(plan))
    for section, who, config, params, r in plan:
        sample = {"section": section, "who": who, "config": config, "round": r}
        try:
            if section == "dispatch":
                size, workers = params
                sample.update(run_dispatch(contenders[who], size, workers, seconds, args.capacity, args.verify,
                                           pin=not args.no_pin))
            elif section == "pool":
                size, workers = params
                sample.update(run_pool(contenders[who], size, workers, seconds, args.capacity, args.verify,
                                       pin=not args.no_pin))
            else:
                name, many, p, c, n = params
                sample.update(run_readme(contenders[name], many, p, c, n))
        except Exception as e:
            sample["error"] = repr(e)[:300]
        samples.append(sample)
        progress.step(f"{section} {who} {config}")

    machine = suite._machine()
    machine["loadavg_start"], machine["loadavg_end"] = loadavg_start, suite._loadavg()
    summary, ratios = summarize(samples)
    result = {"machine": machine, "commit": _commit(),
              "versions": {"python": sys.version.split()[0], **{c.name: c.version() for c in contenders.values()}},
              "settings": {"rounds": rounds, "readme_rounds": readme_rounds, "seconds": seconds,
                           "capacity": args.capacity, "pool_workers": args.pool_workers, "readme_scale": scale,
                           "verify": args.verify, "pinned": not args.no_pin, "sections": sections},
              "command": " ".join(["python benchmarks/group_bench.py"] + list(sys.argv[1:] if argv is None else argv)),
              "notes": notes, "samples": samples, "summary": summary, "ratios": ratios, "goals": goals(ratios),
              "readme_published_2core_seconds": {k: dict(zip(("mp.Queue get", "faster-fifo get",
                                                              "faster-fifo get_many(100)"), v))
                                                 for k, v in README_PUBLISHED.items()}}
    path = plot(result, Path(args.plot)) if args.plot else None
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in (args.json, path) if p))
    return 1 if any("error" in s for s in samples) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The main job: one producer process feeding two consumer processes.

The "fast" consumer keeps up; the "slow" one pauses now and then, falls more
than a ring behind, and shows that loss is counted exactly, never hidden:
for each consumer, received + lost == published since it started, and every
message it did receive is whole (its number matches its position).
"""
import multiprocessing as mp
import os
import signal
import struct
import sys
import time

import shmq

PUBLISHED, DONE = 0, 1
FIELDS_PER_CONSUMER = 4  # received, lost, corrupt, start
CONSUMERS = ("fast", "slow")


def _child_ignores_ctrl_c():
    # Ctrl-C reaches the whole process group; the parent alone handles it
    # (stops the children and removes the queue), so children print nothing.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _producer(name, seconds, size, counters, ready):
    _child_ignores_ctrl_c()
    filler = bytes(range(256)) * (size // 256 + 1)
    with shmq.Producer(name) as producer:
        ready.wait()
        publish = producer.publish
        end = time.monotonic() + seconds
        sequence = producer.next_sequence
        tail = filler[: size - 8]
        pack = struct.Struct("<Q").pack
        while True:
            for _ in range(1000):
                publish(pack(sequence) + tail)  # each message carries its own sequence
                sequence += 1
            counters[PUBLISHED] = sequence
            if time.monotonic() >= end:
                break
    counters[DONE] = 1


def _consumer(name, index, counters, started):
    _child_ignores_ctrl_c()
    base = 2 + index * FIELDS_PER_CONSUMER
    slow = CONSUMERS[index] == "slow"
    received = corrupt = 0
    with shmq.Consumer(name, start="latest") as consumer:
        counters[base + 3] = consumer.position
        started.release()
        previous = consumer.position - 1
        batches = 0
        while True:
            batch = consumer.poll_many(512, timeout=0.05)
            for msg in batch:
                received += 1
                (number,) = struct.unpack_from("<Q", msg)  # the producer wrote its sequence
                if number <= previous:
                    corrupt += 1
                previous = number
            if batch and previous != consumer.position - 1:
                corrupt += 1
            batches += 1
            if slow and batches % 50 == 0:
                time.sleep(0.02)  # falls behind by far more than a ring
            counters[base] = received
            counters[base + 1] = consumer.lost
            counters[base + 2] = corrupt
            if not batch and counters[DONE] and consumer.position >= counters[PUBLISHED]:
                break


def _line(counters, elapsed):
    parts = [f"{elapsed:5.1f}s  published {counters[PUBLISHED]:>11,}"]
    rates = []
    for index, label in enumerate(CONSUMERS):
        base = 2 + index * FIELDS_PER_CONSUMER
        rates.append(counters[base])
        parts.append(f"{label}: received {counters[base]:>11,} lost {counters[base + 1]:>10,}")
    return "  ".join(parts), [counters[PUBLISHED]] + rates


def _why_fast_lost(received, published, seconds, capacity, cpus):
    share = f"{1 + len(CONSUMERS)} processes on {cpus} CPU(s)"
    if received < 0.9 * published:
        return (f"it read {received / seconds / 1e6:.2f} M msgs/s against {published / seconds / 1e6:.2f} M "
                f"published ({share}); a reader slower than its producer is lapped, and loss is counted, "
                "not hidden")
    ring_ms = capacity / (published / seconds) * 1e3 if published else 0
    return (f"the ring holds {capacity} messages, {ring_ms:.1f} ms of publishing, and the fast consumer "
            f"was off CPU longer than that at least once ({share}); try a larger --capacity")


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run(seconds: float = 4.0, size: int = 64, capacity: int = 4096) -> int:
    if size < 8:
        print("demo: --size must be at least 8", file=sys.stderr)
        return 2
    processes: list = []
    try:
        return _run(seconds, size, capacity, processes)
    except KeyboardInterrupt:
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        for proc in processes:
            proc.join()
        print("\ninterrupted: demo stopped, queue removed", file=sys.stderr)
        return 130


def _run(seconds, size, capacity, processes) -> int:
    name = f"demo-{os.getpid()}"
    ctx = mp.get_context("fork")
    counters = ctx.RawArray("Q", 2 + FIELDS_PER_CONSUMER * len(CONSUMERS))
    producer_handle = shmq.Producer(name, slot_size=max(size, 64), capacity=capacity)
    try:
        started = ctx.Semaphore(0)
        ready = ctx.Event()
        consumers = [ctx.Process(target=_consumer, args=(name, i, counters, started)) for i in range(len(CONSUMERS))]
        for proc in consumers:
            proc.start()
            processes.append(proc)
        for _ in consumers:
            started.acquire()
        producer_handle.close()  # the producer process takes over the queue
        producer = ctx.Process(target=_producer, args=(name, seconds, size, counters, ready))
        producer.start()
        processes.append(producer)
        cpus = _cpus()
        print(f"shmq demo: queue {name!r}, {size}-byte messages, {capacity} slots, "
              f"1 producer -> consumers {', '.join(CONSUMERS)} for {seconds:g} s on {cpus} CPU(s)")
        if cpus < 1 + len(CONSUMERS):
            print(f"note: {1 + len(CONSUMERS)} processes share {cpus} CPU(s), so even the fast consumer "
                  "is sometimes descheduled while the producer runs, and may lose messages")
        ready.set()
        t0 = time.monotonic()
        last_t, last = t0, [0, 0, 0]
        while producer.is_alive() or any(p.is_alive() for p in consumers):
            time.sleep(0.5)
            if not producer.is_alive():
                counters[DONE] = 1  # even if it died: consumers drain and stop
            now = time.monotonic()
            text, current = _line(counters, now - t0)
            rates = [(c - p) / (now - last_t) / 1e6 for c, p in zip(current, last)]
            print(f"{text}  [M msgs/s: publish {rates[0]:.2f}, "
                  + ", ".join(f"{label} {r:.2f}" for label, r in zip(CONSUMERS, rates[1:])) + "]", flush=True)
            last_t, last = now, current
        for proc in consumers + [producer]:
            proc.join()
        elapsed = time.monotonic() - t0
        published = counters[PUBLISHED]
        print(f"\nsummary: published {published:,} messages in {elapsed:.1f} s "
              f"({published / seconds / 1e6:.2f} M msgs/s while publishing)")
        ok = producer.exitcode == 0
        finals = []
        for index, label in enumerate(CONSUMERS):
            base = 2 + index * FIELDS_PER_CONSUMER
            received, lost, corrupt, start = (counters[base + k] for k in range(4))
            balanced = received + lost == published - start
            ok &= balanced and corrupt == 0 and consumers[index].exitcode == 0
            print(f"  {label:>4}: received {received:,}  lost {lost:,}  corrupt {corrupt}  "
                  f"received + lost == published: {'yes' if balanced else 'NO'}")
            finals.append(f"{label} {received:,} + lost {lost:,}")
            if label == "fast" and lost:
                print("        why: " + _why_fast_lost(received, published, seconds, capacity, cpus))
        verdict = "all invariants hold" if ok else "INVARIANT VIOLATED"
        print(f"{verdict}: published {published:,}; " + "; ".join(finals))
        return 0 if ok else 1
    finally:
        try:
            shmq.unlink(name, force=True)
        except shmq.QueueNotFound:
            pass

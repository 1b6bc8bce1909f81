"""python -m shmq bench: a quick measurement of shmq alone on this machine.

One producer process publishes fixed-size messages with publish() for a few
seconds while one consumer process reads them with poll(), one call per
message, spinning while the ring is empty. It reports the rate of each side,
what the consumer lost to overrun (counted, never an error), and checks that
received + lost == published.

The full suite, which compares shmq with multiprocessing, faster-fifo, pyzmq,
iceoryx2, POSIX message queues and a C ring, lives in benchmarks/ of the
source repository (FULL_SUITE).
"""
import multiprocessing as mp
import os
import sys
import time

import shmq

FULL_SUITE = "https://github.com/shmq/shmq/tree/main/benchmarks"

# Publishes between two looks at the clock: enough that the clock costs
# nothing, few enough that a run ends within a millisecond of its time.
_BATCH = 1024
# The default ring: 65536 slots, fewer for big messages, so it stays <= 64 MiB.
_RING_BYTES = 64 << 20


def default_capacity(size):
    capacity = 65536
    while capacity > 64 and capacity * (size + 16) > _RING_BYTES:
        capacity //= 2
    return capacity


def _consume(name, ready, done, end, deadline, results):
    """The consumer process: polls until the producer is done and every
    message it published was received or counted as lost; sends back what it
    received, what it lost and when it finished (perf_counter, which is the
    system-wide monotonic clock, so the parent can compare it with its own)."""
    try:
        with shmq.Consumer(name, start="earliest") as c:
            poll = c.poll
            received = 0
            ready.set()
            while True:
                if poll() is not None:
                    received += 1
                    continue
                if done.is_set() and c.position >= end.value:
                    break
                if time.perf_counter() > deadline:
                    raise TimeoutError("the producer never finished")
            results.send(("ok", received, c.lost, time.perf_counter()))
    except BaseException as e:  # reported to the parent, which never waits forever
        results.send(("error", f"{type(e).__name__}: {e}"))


def _error(text):
    """Errors go to stderr, one line, as every shmq command's do."""
    print(f"shmq bench: error: {text.splitlines()[0] if text else ''}", file=sys.stderr)


def run(seconds=3.0, size=64, capacity=None) -> int:
    """Runs the measurement, prints it, and returns the exit status."""
    if seconds <= 0 or size < 1:
        _error("--seconds and --size must be positive")
        return 2
    capacity = capacity or default_capacity(size)
    name = f"bench-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    # spawn: the consumer is a fresh interpreter that inherits nothing but its arguments.
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    end = ctx.Value("Q", 0, lock=False)
    results_in, results_out = ctx.Pipe(duplex=False)
    try:
        producer = shmq.Producer(name, slot_size=size, capacity=capacity, unlink_on_close=True)
    except (shmq.ShmqError, ValueError) as e:
        _error(str(e))
        return 2
    print(f"shmq bench: queue '{name}', 1 producer -> 1 consumer process, {size}-byte messages, "
          f"publish() / poll() one call per message, {seconds:g} s, ring of {capacity:,} slots")
    consumer = ctx.Process(target=_consume, daemon=True,
                           args=(name, ready, done, end, time.perf_counter() + seconds + 120, results_out))
    with producer:
        consumer.start()
        try:
            # The consumer must be attached before the first publish, or what
            # it never saw would count neither as received nor as lost.
            while not ready.wait(0.1):
                if not consumer.is_alive():
                    _error("the consumer process died before it attached")
                    return 1
            msg = bytes(size)
            publish = producer.publish
            first = producer.next_sequence
            t0 = now = time.perf_counter()
            deadline = t0 + seconds
            while now < deadline:
                for _ in range(_BATCH):
                    publish(msg)
                now = time.perf_counter()
            published = producer.next_sequence - first
            end.value = producer.next_sequence
            done.set()
            if not results_in.poll(60):
                _error("the consumer did not finish within 60 s")
                return 1
            outcome = results_in.recv()
        finally:
            consumer.join(timeout=5)
            if consumer.is_alive():
                consumer.kill()
                consumer.join()
    if outcome[0] == "error":
        _error(f"in the consumer: {outcome[1]}")
        return 1
    _, received, lost, finished = outcome
    exact = received + lost == published

    def line(what, count, secs):
        rate = count / max(secs, 1e-9)
        return f"  {what:<10}{count:>14,} msgs {rate / 1e6:8.2f} M msgs/s {rate * size / 1e6:9,.0f} MB/s"

    print(line("published", published, now - t0))
    print(line("delivered", received, finished - t0))
    print(f"  {'lost':<10}{lost:>14,} msgs (overrun: counted, not an error)")
    print(f"  received + lost == published: {'yes' if exact else 'NO'}")
    print("The full suite against other IPC libraries runs from a source checkout:\n"
          f"  pip install '.[bench]' && python benchmarks/run.py --quick   ({FULL_SUITE})")
    return 0 if exact else 1

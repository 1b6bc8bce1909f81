"""Real processes over real shared memory: fan-out, C <-> Python interop,
overrun accounting, signals, threads, leaks and process lifecycle."""
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import pytest

import shmq
from shmq import _pattern

PY_CONSUMER = textwrap.dedent("""
    import struct, sys, shmq
    name, count = sys.argv[1], int(sys.argv[2])
    unpack = struct.Struct("<Q").unpack_from
    with shmq.Consumer(name, start="earliest") as c:
        print("ready", flush=True)
        expect = 0
        while expect < count:
            for msg in c.poll_many(4096, timeout=10):
                if unpack(msg)[0] != expect or msg[8:] != bytes([expect % 251]) * (len(msg) - 8) \\
                        or len(msg) != 8 + expect % 57:
                    print("bad message", expect, flush=True)
                    sys.exit(1)
                expect += 1
        print(f"received={expect} lost={c.lost}", flush=True)
""")


def _spawn(code, *args):
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_one_producer_three_consumer_processes_get_every_message_exactly(name):
    count = 1_000_000
    with shmq.Producer(name, slot_size=64, capacity=1 << 20) as p:
        consumers = [_spawn(PY_CONSUMER, name, count) for _ in range(3)]
        for proc in consumers:
            assert proc.stdout.readline().strip() == "ready"
        batch = []
        for i in range(count):
            batch.append(i.to_bytes(8, "little") + bytes([i % 251]) * (i % 57))
            if len(batch) == 1000:
                p.publish_many(batch)
                batch.clear()
        p.publish_many(batch)
        for proc in consumers:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, out + err
            assert out.splitlines()[-1] == f"received={count} lost=0"


def test_c_producer_feeds_two_python_consumers(name, c_programs):
    producer, _ = c_programs
    count, size = 200_000, 100
    shmq.Producer(name, slot_size=size, capacity=1 << 18).close()
    code = textwrap.dedent("""
        import sys, shmq
        from shmq import _pattern
        name, count = sys.argv[1], int(sys.argv[2])
        with shmq.Consumer(name, start="earliest") as c:
            print("ready", flush=True)
            got = 0
            while got < count:
                msg = c.poll(timeout=10)
                assert msg is not None, "timed out"
                assert _pattern.check(msg) == got, f"message {got} is wrong"
                got += 1
            print(f"received={got} lost={c.lost}")
    """)
    consumers = [_spawn(code, name, count) for _ in range(2)]
    for proc in consumers:
        assert proc.stdout.readline().strip() == "ready"
    run = subprocess.run([str(producer), name, "--count", str(count), "--size", str(size)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    for proc in consumers:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == f"received={count} lost=0"


def test_python_producer_feeds_the_c_consumer(name, c_programs):
    _, consumer = c_programs
    count = 100_000
    with shmq.Producer(name, slot_size=128, capacity=1 << 17) as p:
        proc = subprocess.Popen([str(consumer), name, "--count", str(count), "--from", "earliest",
                                 "--timeout", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        for i in range(count):
            p.publish(_pattern.make(i, 8 + i % 121))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == f"received={count} lost=0 corrupt=0"


def test_overrun_on_a_16_slot_ring_counts_every_loss_and_tears_nothing(name):
    published = 300_000
    producer_code = textwrap.dedent("""
        import hashlib, sys, shmq
        name, count = sys.argv[1], int(sys.argv[2])
        with shmq.Producer(name) as p:
            print("ready", flush=True)
            sys.stdin.readline()
            for i in range(count):
                body = i.to_bytes(8, "little") + bytes([i % 256]) * (i % 40)
                p.publish(body + hashlib.blake2b(body, digest_size=8).digest())
    """)
    import hashlib
    with shmq.Producer(name, slot_size=64, capacity=16):
        pass
    with shmq.Consumer(name, start="earliest") as c:
        start = c.position
        proc = subprocess.Popen([sys.executable, "-c", producer_code, name, str(published)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        received = torn = 0
        last = -1
        while c.position - start < published:
            msg = c.poll(timeout=10)
            assert msg is not None, "producer stalled"
            body, digest = msg[:-8], msg[-8:]
            if hashlib.blake2b(body, digest_size=8).digest() != digest:
                torn += 1
            seq = int.from_bytes(body[:8], "little")
            assert seq > last and seq == c.position - 1 - start
            last = seq
            received += 1
            if received % 1000 == 0:
                time.sleep(0.001)  # fall behind on purpose
        proc.communicate(timeout=60)
        assert torn == 0
        assert c.lost > 0
        assert received + c.lost == published


def test_ctrl_c_interrupts_a_blocking_poll_promptly(name):
    shmq.Producer(name, slot_size=8, capacity=8).close()
    code = textwrap.dedent("""
        import sys, shmq
        c = shmq.Consumer(sys.argv[1])
        print("waiting", flush=True)
        try:
            c.poll(timeout=None)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(0)
        sys.exit(3)
    """)
    proc = _spawn(code, name)
    assert proc.stdout.readline().strip() == "waiting"
    time.sleep(0.3)  # well inside the poll, asleep on the futex
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    line = proc.stdout.readline().strip()
    elapsed = time.monotonic() - sent
    proc.communicate(timeout=10)
    assert line == "interrupted"
    assert proc.returncode == 0
    assert elapsed < 0.5, f"KeyboardInterrupt took {elapsed * 1000:.0f} ms"


def _count_for(seconds):
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n


def test_another_thread_runs_freely_while_one_blocks_in_poll(name):
    with shmq.Producer(name, slot_size=8, capacity=8) as p, shmq.Consumer(name) as c:
        baseline = _count_for(0.3)
        result = []
        waiter = threading.Thread(target=lambda: result.append(c.poll(timeout=5)))
        waiter.start()
        time.sleep(0.05)
        with_waiter = _count_for(0.3)
        p.publish(b"wake")
        waiter.join(timeout=5)
        assert result == [b"wake"]
        # Holding the GIL while blocked would leave this thread almost nothing.
        assert with_waiter > 0.5 * baseline


def test_consumer_busy_in_one_thread_is_refused_in_another_and_close_defers(name):
    with shmq.Producer(name, slot_size=8, capacity=8), shmq.Consumer(name) as c:
        errors = []

        def wait():
            try:
                c.poll(timeout=5)
            except ValueError as e:
                errors.append(e)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.1)
        with pytest.raises(RuntimeError, match="in use"):
            c.poll()
        started = time.monotonic()
        c.close()  # deferred: the waiter notices within one wait slice
        waiter.join(timeout=5)
        assert time.monotonic() - started < 1
        assert errors and "closed" in str(errors[0])
        assert c.closed


def _rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@pytest.mark.slow
def test_publish_and_poll_a_million_messages_leak_nothing(name):
    msg = b"m" * 64
    buf = bytearray(64)
    with shmq.Producer(name, slot_size=64, capacity=1024) as p, shmq.Consumer(name) as c:
        def round_trip(n):
            for _ in range(n // 4):
                p.publish(msg)
                c.poll()
                p.publish_many([msg])
                c.poll_many(1)
                p.publish(memoryview(msg))
                c.poll_into(buf)
                p.publish(bytearray(msg))
                c.poll_many_into(buf)

        round_trip(100_000)  # warm up allocator and caches
        before = _rss_kib()
        round_trip(1_000_000)
        assert _rss_kib() - before < 1024, "RSS grew by more than 1 MiB"
        tracemalloc.start()
        round_trip(20_000)
        snapshot1 = tracemalloc.take_snapshot()
        round_trip(100_000)
        snapshot2 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        growth = sum(s.size_diff for s in snapshot2.compare_to(snapshot1, "filename"))
        assert growth < 64 * 1024, f"traced allocations grew by {growth} bytes"
        if hasattr(sys, "gettotalrefcount"):  # debug builds only
            refs = sys.gettotalrefcount()
            round_trip(10_000)
            assert sys.gettotalrefcount() - refs < 100


def test_segment_survives_a_multiprocessing_child_that_attached(name):
    """multiprocessing's resource_tracker must not unlink our segments."""
    import multiprocessing as mp
    shmq.Producer(name, slot_size=8, capacity=8).close()
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_attach_and_exit, args=(name,))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 0
    time.sleep(0.2)
    assert shmq.exists(name)


def _attach_and_exit(name):
    shmq.Consumer(name).close()
    shmq.Producer(name).close()


def test_forked_child_cannot_publish_through_the_inherited_producer(name):
    with shmq.Producer(name, slot_size=8, capacity=8) as p:
        pid = os.fork()
        if pid == 0:
            try:
                p.publish(b"x")
                os._exit(1)
            except shmq.ProducerBusy:
                os._exit(0)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert p.publish(b"parent") == 0


def test_killed_producer_is_replaced_and_the_sequence_continues(name):
    code = textwrap.dedent("""
        import sys, time, shmq
        p = shmq.Producer(sys.argv[1], slot_size=8, capacity=64)
        p.publish_many([b"%d" % i for i in range(10)])
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = _spawn(code, name)
    assert proc.stdout.readline().strip() == "ready"
    with pytest.raises(shmq.ProducerBusy):
        shmq.Producer(name)
    proc.kill()
    proc.communicate(timeout=10)
    with shmq.Producer(name) as p:
        assert p.publish(b"10") == 10
    with shmq.Consumer(name, start="earliest") as c:
        assert c.poll_many(100) == [b"%d" % i for i in range(11)]

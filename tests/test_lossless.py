"""Lossless mode with real processes: registered consumers get every message,
whole and in order; dead consumers and producers never wedge or tear the
queue; timeouts, signals, the entry table, a consumer scribbling over its own
entry, and the C programs on either side.

Messages (_make) carry their sequence number, a body drawn from a fixed pool
at an offset and length that depend on the sequence, and a CRC-32 of all
before it, so a reader verifies the content and the order of every message.
"""
import json
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib

import pytest

import shmq
from shmq import _pattern

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
POOL = bytes(random.Random(7).getrandbits(8) for _ in range(4096 + 64))


def _make(seq: int) -> bytes:
    off, size = (seq * 7919) % 4096, seq % 48
    head = struct.pack("<Q", seq) + POOL[off:off + size]
    return head + struct.pack("<I", zlib.crc32(head))


# A consumer in its own process: prints "ready <start position>", reads
# until `count` messages were received or lost (count 0: to the end of the
# stream) or its deadline, verifies each, and prints one JSON line.
# sleeper: sleeps at random moments; register=0: a lossy observer.
READER = textwrap.dedent("""
    import json, random, struct, sys, time, zlib
    import shmq
    name, count, start, sleeper, register, seconds = sys.argv[1:7]
    count, sleeper, register, seconds = int(count), int(sleeper), int(register), float(seconds)
    start = int(start) if start.isdigit() else start
    POOL = bytes(random.Random(7).getrandbits(8) for _ in range(4096 + 64))
    rng = random.Random()
    unpack_q, unpack_i = struct.Struct("<Q").unpack_from, struct.Struct("<I").unpack_from
    c = shmq.Consumer(name, start=start, register=bool(register))
    print("ready", c.position, flush=True)
    first = expect = None
    received = bad = out_of_order = sleeps = 0
    deadline = time.monotonic() + seconds
    while (not count or received + bad + c.lost < count) and time.monotonic() < deadline:
        batch = c.poll_many(256, timeout=0.1)
        if not batch and c.ended:
            if not count:
                break
            time.sleep(0.001)
        for msg in batch:
            seq = unpack_q(msg)[0] if len(msg) >= 12 else -1
            off, size = (seq * 7919) % 4096, seq % 48
            if (len(msg) != 12 + size or msg[8:-4] != POOL[off:off + size]
                    or unpack_i(msg, len(msg) - 4)[0] != zlib.crc32(msg[:-4])):
                bad += 1
                continue
            if first is None:
                first = expect = seq
            if seq != expect:
                out_of_order += 1
            expect = seq + 1
            received += 1
            if sleeper and rng.random() < 0.0005:
                time.sleep(rng.random() * 0.003)
                sleeps += 1
    print(json.dumps(dict(received=received, lost=c.lost, bad=bad, out_of_order=out_of_order,
                          first=first, sleeps=sleeps, position=c.position)), flush=True)
    c.close()
""")


def _spawn(code, *args):
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _reader(name, count, start="earliest", sleeper=False, register=True, seconds=60):
    proc = _spawn(READER, name, count, start, int(sleeper), int(register), seconds)
    line = proc.stdout.readline()
    assert line.startswith("ready"), (line, proc.stderr.read())
    proc.start_position = int(line.split()[1])
    return proc


def _result(proc, timeout=90):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _kill_all(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _publish_all(p, first, count, deadline_s=120):
    deadline = time.monotonic() + deadline_s
    for seq in range(first, first + count):
        while True:
            try:
                assert p.publish(_make(seq), timeout=1.0) == seq
                break
            except shmq.Full:
                assert time.monotonic() < deadline, f"stuck at {seq}"


@pytest.mark.timeout(180)
def test_three_registered_consumers_one_sleeping_get_every_message(name):
    count = 1_000_000
    with shmq.Producer(name, 64, 256, lossless=True, max_consumers=8) as p:
        readers = [_reader(name, count, sleeper=(k == 0), seconds=150) for k in range(3)]
        try:
            assert sum(c["registered"] for c in p.consumers) == 3
            t0 = time.monotonic()
            _publish_all(p, 0, count, deadline_s=150)
            seconds = time.monotonic() - t0
            results = [_result(r, timeout=150) for r in readers]
        finally:
            _kill_all(readers)
    for r in results:
        assert r == dict(r, received=count, lost=0, bad=0, out_of_order=0, first=0,
                         position=count), r
    assert results[0]["sleeps"] > 0
    print(f"{count} messages to 3 registered consumers in {seconds:.1f} s "
          f"({count / seconds:.0f}/s)")


def _registered_sleeper(name):
    """A registered consumer in its own process that never reads."""
    code = "import sys, time, shmq\nc = shmq.Consumer(sys.argv[1])\n" \
           "print('ready', c.position, flush=True)\ntime.sleep(600)\n"
    proc = _spawn(code, name)
    assert proc.stdout.readline().startswith("ready"), proc.stderr.read()
    return proc


@pytest.mark.timeout(120)
def test_killed_consumer_frees_a_blocked_producer_promptly(names):
    delays = []
    for _ in range(5):
        name = names()
        with shmq.Producer(name, 16, 32, lossless=True, max_consumers=4) as p:
            stuck = _registered_sleeper(name)
            try:
                for i in range(32):
                    p.publish(b"x")
                with pytest.raises(shmq.Full):
                    p.publish(b"x", timeout=0)
                killed_at = []

                def kill():
                    killed_at.append(time.monotonic())
                    stuck.kill()

                timer = threading.Timer(0.05 + random.random() * 0.05, kill)
                timer.start()
                p.publish(b"after", timeout=10)
                resumed = time.monotonic()
                timer.join()
                assert killed_at and resumed > killed_at[0]
                delays.append(resumed - killed_at[0])
            finally:
                _kill_all([stuck])
        shmq.unlink(name, force=True)
    print(f"resumed after at most {max(delays) * 1000:.1f} ms")
    assert max(delays) < 0.25, delays


PRODUCER = textwrap.dedent("""
    import struct, sys, random, zlib
    import shmq
    POOL = bytes(random.Random(7).getrandbits(8) for _ in range(4096 + 64))
    def make(seq):
        off, size = (seq * 7919) % 4096, seq % 48
        head = struct.pack("<Q", seq) + POOL[off:off + size]
        return head + struct.pack("<I", zlib.crc32(head))
    name, until = sys.argv[1], int(sys.argv[2])
    p = shmq.Producer(name, lossless=True)
    print("ready", p.next_sequence, flush=True)
    for seq in range(p.next_sequence, until):
        assert p.publish(make(seq)) == seq
    p.close()
""")


@pytest.mark.timeout(180)
def test_killed_producer_neither_tears_nor_duplicates_and_restart_continues(name):
    count = 300_000
    shmq.Producer(name, 64, 64, lossless=True).close()
    readers = [_reader(name, count, seconds=150) for _ in range(2)]
    try:
        starts = []
        kills = 0
        while kills < 8:
            producer = _spawn(PRODUCER, name, count)
            line = producer.stdout.readline()
            assert line.startswith("ready"), producer.stderr.read()
            starts.append(int(line.split()[1]))
            time.sleep(0.02 + random.random() * 0.08)
            _kill_all([producer])
            if producer.returncode == 0:
                break
            kills += 1
        last = _spawn(PRODUCER, name, count)
        assert last.stdout.readline().startswith("ready")
        _, err = last.communicate(timeout=150)
        assert last.returncode == 0, err
        results = [_result(r, timeout=150) for r in readers]
    finally:
        _kill_all(readers)
    assert starts == sorted(starts) and starts[-1] > 0  # each one continued the sequence
    for r in results:
        assert r == dict(r, received=count, lost=0, bad=0, out_of_order=0, first=0), r
    assert kills >= 4


@pytest.mark.timeout(60)
def test_entry_table_full_closing_frees_and_observer_never_blocks(name):
    with shmq.Producer(name, 64, 16, lossless=True, max_consumers=2) as p:
        a, b = shmq.Consumer(name), shmq.Consumer(name)
        assert a.registered and b.registered and a.lossless
        with pytest.raises(shmq.TooManyConsumers):
            shmq.Consumer(name)
        a.close()
        c = shmq.Consumer(name)
        assert c.registered
        c.close()
        b.close()
        # An observer in another process: the producer laps it freely.
        observer = _reader(name, 100_000, start="latest", register=False, seconds=30)
        for seq in range(100_000):
            p.publish(_make(seq), timeout=0)  # never Full: nobody registered
        assert p.consumers == []  # an observer takes no entry
        p.close()
        r = _result(observer)
    assert r["bad"] == 0 and r["lost"] > 0
    assert r["received"] + r["lost"] == 100_000  # it counted exactly what it lost


@pytest.mark.timeout(60)
def test_lossy_observer_in_process_counts_losses(name):
    with shmq.Producer(name, 64, 16, lossless=True) as p, \
            shmq.Consumer(name, register=False) as observer, shmq.Consumer(name) as reader:
        assert not observer.registered and observer.lossless and reader.registered
        for seq in range(16):
            p.publish(_make(seq), timeout=0)
        with pytest.raises(shmq.Full):
            p.publish(_make(16), timeout=0)
        got = reader.poll_many(100)
        assert [struct.unpack_from("<Q", m)[0] for m in got] == list(range(16))
        for seq in range(16, 32):
            p.publish(_make(seq), timeout=0)
        assert len(observer.poll_many(100)) + observer.lost == 32
        assert observer.lost > 0 and reader.lost == 0


@pytest.mark.timeout(60)
def test_publish_timeouts_on_a_full_ring(name):
    with shmq.Producer(name, 16, 8, lossless=True) as p, shmq.Consumer(name) as c:
        for i in range(8):
            p.publish(b"m%d" % i)
        t0 = time.monotonic()
        with pytest.raises(shmq.Full) as info:
            p.publish(b"late", timeout=0)
        assert time.monotonic() - t0 < 0.02
        assert info.value.published == 0
        t0 = time.monotonic()
        with pytest.raises(shmq.Full):
            p.publish(b"late", timeout=0.05)
        waited = time.monotonic() - t0
        assert 0.04 <= waited < 1.0, waited
        assert c.backlog == 8 and p.next_sequence == 8
        assert c.poll() == b"m0"
        assert p.publish(b"fits", timeout=0) == 8


@pytest.mark.timeout(60)
def test_ctrl_c_interrupts_a_blocked_publish(name):
    code = textwrap.dedent("""
        import sys, time, shmq
        p = shmq.Producer(sys.argv[1], 16, 8, lossless=True)
        c = shmq.Consumer(sys.argv[1])
        for i in range(8):
            p.publish(b"x")
        print("blocking", flush=True)
        try:
            p.publish(b"y")
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), p.next_sequence, flush=True)
    """)
    proc = _spawn(code, name)
    try:
        assert proc.stdout.readline() == "blocking\n", proc.stderr.read()
        time.sleep(0.2)  # well inside the wait
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        _kill_all([proc])
    word, when, next_sequence = out.split()
    assert word == "interrupted", err
    assert float(when) - sent < 0.5
    assert next_sequence == "8"  # the interrupted message was not published


@pytest.mark.timeout(60)
def test_publish_many_full_says_how_many_went_out_and_they_are_the_first(name):
    with shmq.Producer(name, 64, 16, lossless=True) as p, shmq.Consumer(name) as c:
        p.publish_many([_make(s) for s in range(10)])
        batch = [_make(s) for s in range(10, 40)]
        t0 = time.monotonic()
        with pytest.raises(shmq.Full) as info:
            p.publish_many(batch, timeout=0.05)
        assert 0.04 <= time.monotonic() - t0 < 1.0
        assert info.value.published == 6 and p.next_sequence == 16
        with pytest.raises(shmq.Full) as info:
            p.publish_many(batch[6:], timeout=0)
        assert info.value.published == 0
        got = c.poll_many(100)
        assert got == [_make(s) for s in range(16)]
        assert p.publish_many(batch[6:22], timeout=0) == 31
        with pytest.raises(shmq.Full) as info:
            p.publish_many(batch[22:], timeout=0)
        assert info.value.published == 0
        assert c.poll_many(100) == [_make(s) for s in range(16, 32)]
        assert c.lost == 0


SCRIBBLER = textwrap.dedent("""
    import ctypes, os, random, struct, sys, time
    import shmq
    name, seconds = sys.argv[1], float(sys.argv[2])
    c = shmq.Consumer(name)
    print("ready", c.position, flush=True)
    index = int(sys.stdin.readline())
    # Its own entry is the one writable System V page of this process that
    # is not the wake page (which carries the tag "shmqwake" at 256).
    entry = None
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[1] == "rw-s" and fields[5].startswith("/SYSV"):
                start = int(fields[0].split("-")[0], 16)
                if ctypes.string_at(start + 256, 8) != b"shmqwake":
                    entry = start
    assert entry is not None and struct.unpack("=I", ctypes.string_at(entry + 32, 4))[0] == index
    position = ctypes.c_uint64.from_address(entry)
    rng = random.Random(11)
    end = time.monotonic() + seconds
    writes = 0
    while time.monotonic() < end:
        position.value = rng.choice([rng.getrandbits(64), 0, 2**64 - 1, 2**63,
                                     rng.getrandbits(64) & 0xffff, rng.getrandbits(64) >> 1])
        writes += 1
        if writes % 64 == 0:
            time.sleep(0.0005)
    print("writes", writes, flush=True)
    os._exit(0)  # dies registered, with garbage in its entry
""")


@pytest.mark.timeout(120)
def test_scribbling_consumer_never_makes_the_producer_overwrite_another(name):
    count = 100_000
    with shmq.Producer(name, 64, 64, lossless=True, max_consumers=4) as p:
        assert shmq.NAME_PREFIX == "shmq-"
        honest = _reader(name, count, seconds=90)
        scribbler = _spawn(SCRIBBLER, name, 3.0)
        try:
            assert scribbler.stdout.readline().startswith("ready"), scribbler.stderr.read()
            (index,) = [c["index"] for c in p.consumers if c["pid"] == scribbler.pid]
            scribbler.stdin.write(f"{index}\n")
            scribbler.stdin.flush()
            # Publishes while the garbage flies (stalling is allowed), then on.
            _publish_all(p, 0, count, deadline_s=90)
            r = _result(honest)
            out, err = scribbler.communicate(timeout=30)
            assert scribbler.returncode == 0, err
        finally:
            _kill_all([honest, scribbler])
    assert int(out.split()[-1]) > 1000
    assert r == dict(r, received=count, lost=0, bad=0, out_of_order=0, first=0), r


@pytest.mark.timeout(120)
def test_c_lossless_producer_to_python_registered_consumers(name, c_programs):
    producer, _ = c_programs
    count = 200_000
    shmq.Producer(name, 64, 128, lossless=True).close()
    code = textwrap.dedent("""
        import json, sys, time, shmq
        from shmq import _pattern
        name, count = sys.argv[1], int(sys.argv[2])
        c = shmq.Consumer(name, start="earliest")
        print("ready", c.position, flush=True)
        got = bad = out_of_order = 0
        deadline = time.monotonic() + 100
        while got + bad < count and time.monotonic() < deadline:
            batch = c.poll_many(512, timeout=0.1)
            if not batch:
                time.sleep(0.001)
            for msg in batch:
                i = _pattern.check(msg)
                if i < 0 or len(msg) != 64:
                    bad += 1
                    continue
                out_of_order += i != got
                got += 1
        print(json.dumps(dict(received=got, lost=c.lost, bad=bad, out_of_order=out_of_order)))
    """)
    readers = [_spawn(code, name, count) for _ in range(2)]
    try:
        for r in readers:
            assert r.stdout.readline().startswith("ready"), r.stderr.read()
        run = subprocess.run([str(producer), name, "--lossless", "--count", str(count),
                              "--size", "64"], capture_output=True, text=True, timeout=100)
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith(f"published={count} ")
        results = [_result(r, timeout=100) for r in readers]
    finally:
        _kill_all(readers)
    for r in results:
        assert r == dict(received=count, lost=0, bad=0, out_of_order=0), r


@pytest.mark.timeout(120)
def test_python_lossless_producer_to_c_consumer(name, c_programs):
    _, consumer = c_programs
    count = 200_000
    with shmq.Producer(name, 64, 128, lossless=True) as p:
        proc = subprocess.Popen([str(consumer), name, "--count", str(count), "--from", "earliest",
                                 "--timeout", "30"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not any(c["registered"] for c in p.consumers):
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.005)
            for i in range(count):
                p.publish(_pattern.make(i, 64), timeout=30)
            out, err = proc.communicate(timeout=60)
        finally:
            _kill_all([proc])
    assert proc.returncode == 0, err
    assert out.strip() == f"received={count} lost=0 corrupt=0"


@pytest.mark.timeout(120)
def test_consumers_registering_under_load_lose_nothing_from_their_start(name):
    count, tail = 200_000, 20_000
    with shmq.Producer(name, 64, 64, lossless=True, max_consumers=8) as p:
        first = _reader(name, 0, seconds=90)  # slow: keeps the ring full
        late, threads = [], []
        seq = 0
        deadline = time.monotonic() + 90
        while seq < count:
            try:
                p.publish(_make(seq), timeout=1.0)
                seq += 1
            except shmq.Full:
                assert time.monotonic() < deadline
                continue
            if seq in (10_000, 40_000, 70_000, 100_000):
                # They register while this thread publishes into the full ring.
                threads.append(threading.Thread(target=lambda: late.append(
                    _reader(name, 0, start="latest", seconds=90))))
                threads[-1].start()
        for thread in threads:
            thread.join(30)
        assert len(late) == 4
        _publish_all(p, count, tail, deadline_s=90)
        p.close()
        try:
            results = [_result(r) for r in [first] + late]
        finally:
            _kill_all([first] + late)
    for proc, r in zip([first] + late, results):
        assert r == dict(r, lost=0, bad=0, out_of_order=0), r
        assert r["first"] == proc.start_position  # nothing lost at the start either
        assert r["first"] + r["received"] == count + tail
        assert r["position"] == count + tail
    assert results[0]["first"] == 0


@pytest.mark.timeout(60)
def test_backlog_and_consumers_report_positions_and_lag(name):
    with shmq.Producer(name, 16, 16, lossless=True, max_consumers=4) as p:
        a = shmq.Consumer(name)
        b = shmq.Consumer(name, register=False)
        assert [c["registered"] for c in p.consumers] == [True]
        (entry,) = p.consumers
        assert entry == dict(entry, pid=os.getpid(), position=0, lag=0, lost=0)
        for i in range(10):
            p.publish(b"%d" % i)
        assert a.backlog == 10 and b.backlog == 10
        assert a.poll_many(4) == [b"0", b"1", b"2", b"3"]
        assert a.backlog == 6 and a.position == 4
        (entry,) = p.consumers
        assert entry["position"] == 4 and entry["lag"] == 6
        remote = _registered_sleeper(name)  # registers at 10, never reads
        try:
            entries = {c["pid"]: c for c in p.consumers}
            assert set(entries) == {os.getpid(), remote.pid}
            assert entries[remote.pid] == dict(entries[remote.pid], registered=True,
                                               position=10, lag=0)
            for i in range(10, 20):  # a, at 4, has room up to 19
                p.publish(b"%d" % i, timeout=0)
            with pytest.raises(shmq.Full):
                p.publish(b"x", timeout=0)
            entries = {c["pid"]: c for c in p.consumers}
            assert entries[os.getpid()]["lag"] == 16 and entries[remote.pid]["lag"] == 10
            assert a.backlog == 16 and b.backlog == 20
        finally:
            _kill_all([remote])
        a.close()
        assert p.consumers == []
        b.close()

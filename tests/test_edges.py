"""Edges the trust-boundary issue listed as defects, one scenario each.

Each test fails on the behaviour the issue reported: a huge batch size that
sized an allocation, garbage stamps that made a blocking poll spin for ever, a
spin budget that overran the timeout, start='earliest' losing a message on a
full ring, argument errors that named the wrong thing, a corrupt length
reported as an incompatible queue, and a producer that reused the sequence
numbers of messages a killed predecessor had already delivered.

Scenarios that play a crashed or corrupting producer write the ring through a
read-write mapping of their own, at the offsets csrc/shmq_layout.h draws.
"""
import array
import json
import mmap
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest

import shmq
from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
HEAD_OFFSET = 128  # line 1 of the control page


def ring_path(name):
    return f"/dev/shm/shmq-{name}"




def run_python(code, *args, timeout=60):
    """Runs code in a fresh interpreter that imports the working tree's shmq."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=ENV)




class Ring:
    """The ring's bytes, read-write: we play the producer (or a vandal)."""

    def __init__(self, name):
        self._file = open(ring_path(name), "r+b")
        self.map = mmap.mmap(self._file.fileno(), 0)
        self.slot_size, self.stride, self.capacity, self.page = struct.unpack_from("=IIII", self.map, 16)
        self.data = struct.unpack_from("=Q", self.map, 72)[0]  # data_offset
        spanning = struct.unpack_from("=I", self.map, 12)[0] & 2  # flags: SHMQ_FLAG_SPANNING
        self.record_stride = 16 if spanning else self.stride

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.map.close()
        self._file.close()

    @property
    def head(self):
        return struct.unpack_from("=Q", self.map, HEAD_OFFSET)[0]

    def slot(self, sequence):
        """The index record of sequence (16 bytes: stamp, length, first slot)."""
        return self.page + (sequence % self.capacity) * self.record_stride

    def set_stamp(self, sequence, stamp):
        struct.pack_into("=Q", self.map, self.slot(sequence), stamp % 2**64)

    def set_length(self, sequence, length):
        struct.pack_into("=I", self.map, self.slot(sequence) + 8, length)

    def write_message(self, sequence, payload):
        """What a publish does for a one-slot record that goes where the
        last one ended (slot sequence % capacity in a ring that has only held
        one-slot records from sequence 0): in-progress stamp, length, first
        slot, payload, final stamp. Head is left alone, as a producer killed
        inside a batch leaves it."""
        at, slot = self.slot(sequence), sequence % self.capacity
        self.set_stamp(sequence, sequence - 1)
        struct.pack_into("=II", self.map, at + 8, len(payload), slot)
        start = self.data + slot * self.stride
        self.map[start:start + len(payload)] = payload
        self.set_stamp(sequence, sequence)


# ------------------------------------------------------------ sizes from the caller

def test_poll_many_into_with_a_huge_max_neither_crashes_nor_over_allocates(queue_name):
    run = run_python("""
        import sys, tracemalloc, shmq
        name = sys.argv[1]
        with shmq.Producer(name, slot_size=64, capacity=16) as p, shmq.Consumer(name) as c:
            p.publish_many([b"ab", b"cde"])
            tracemalloc.start()
            first = c.poll_many_into(bytearray(64), 2**61)
            second = c.poll_many_into(bytearray(64), 10**8)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            try:
                c.poll_many_into(bytearray(64), -1)
                negative = "accepted"
            except ValueError:
                negative = "ValueError"
            print(first, second, peak, negative)
    """, queue_name)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("[2, 3] [] "), run.stdout
    *_, peak, negative = run.stdout.split()
    assert int(peak) < 64 * 1024, f"poll_many_into allocated {int(peak)} bytes at its peak"
    assert negative == "ValueError"


# ------------------------------------------------------------ garbage in the ring

def test_garbage_stamps_make_every_poll_raise_corrupt_slot_promptly(queue_name):
    name = queue_name
    with shmq.Producer(name, slot_size=64, capacity=16) as p:
        p.publish_many([b"%d" % i for i in range(5)])
        with Ring(name) as ring:
            for i in range(ring.capacity):
                ring.set_stamp(i, 2**62)
        run = run_python("""
            import sys, time, shmq
            c = shmq.Consumer(sys.argv[1])
            for timeout in (0, None, 5, 0, None):
                started = time.monotonic()
                try:
                    c.poll(timeout=timeout)
                    print("returned", timeout)
                except shmq.CorruptSlot:
                    print("corrupt", timeout, time.monotonic() - started, flush=True)
            print("lost", c.lost)
        """, name, timeout=30)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 6, run.stdout
    for line in lines[:5]:
        word, timeout, seconds = line.split()
        assert word == "corrupt", line
        assert float(seconds) < 0.5, f"poll(timeout={timeout}) took {seconds} s to say so"
    assert int(lines[5].split()[1]) > 0  # what it skipped is counted, not delivered


def test_ctrl_c_interrupts_a_blocking_poll_on_a_ring_of_stale_stamps(queue_name):
    name = queue_name
    shmq.Producer(name, slot_size=8, capacity=16).close()
    with Ring(name) as ring:
        for i in range(ring.capacity):
            ring.set_stamp(i, i - 2**62)  # far in the past: "not yet", for ever
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, shmq
        c = shmq.Consumer(sys.argv[1])
        print("waiting", flush=True)
        try:
            c.poll(timeout=None)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(0)
        sys.exit(3)
    """), name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(0.3)  # asleep by now
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert out.strip() == "interrupted", err
    assert proc.returncode == 0
    assert elapsed < 0.5, f"KeyboardInterrupt took {elapsed * 1000:.0f} ms"


def test_a_corrupt_length_raises_corrupt_slot_counts_one_lost_and_reading_goes_on(queue_name):
    name = queue_name
    with shmq.Producer(name, slot_size=64, capacity=16) as p, shmq.Consumer(name) as c:
        p.publish_many([b"first", b"second", b"third"])
        with Ring(name) as ring:
            ring.set_length(1, 10**6)
        assert c.poll() == b"first"
        with pytest.raises(shmq.CorruptSlot) as raised:
            c.poll()
        assert not isinstance(raised.value, shmq.IncompatibleQueue)
        assert c.lost == 1
        assert c.poll() == b"third"
        assert c.position == 3


# ------------------------------------------------------------ spin, start, arguments

def test_a_huge_spin_budget_still_honours_a_short_timeout(queue_name):
    name = queue_name
    shmq.Producer(name, slot_size=8, capacity=8).close()
    with shmq.Consumer(name, spin=3 * 10**7) as c:
        for _ in range(3):
            started = time.monotonic()
            assert c.poll(timeout=0.01) is None
            elapsed = time.monotonic() - started
            assert elapsed < 0.2, f"poll(timeout=0.01) took {elapsed:.3f} s"
    with pytest.raises(ValueError, match="spin"):
        shmq.Consumer(name, spin=-1)
    with pytest.raises(TypeError, match="spin"):
        shmq.Consumer(name, spin="x")


def test_start_earliest_on_a_full_ring_loses_nothing_to_the_next_publish(queue_name):
    name = queue_name
    with shmq.Producer(name, slot_size=8, capacity=16) as p:
        p.publish_many([b"%d" % i for i in range(100)])
        with shmq.Consumer(name, start="earliest") as c:
            p.publish(b"new")
            assert c.poll_many(100) == [b"%d" % i for i in range(85, 100)] + [b"new"]
            assert c.lost == 0


def test_bad_arguments_name_the_argument_and_the_value(queue_name):
    name = queue_name
    with shmq.Producer(name, slot_size=8, capacity=8) as p, shmq.Consumer(name) as c:
        buf = bytearray(8)
        for call in (lambda: c.poll(timeout=True), lambda: c.poll_many(1, timeout=True),
                     lambda: c.poll_into(buf, timeout=True),
                     lambda: c.poll_many_into(buf, timeout=True)):
            with pytest.raises(TypeError, match="timeout"):
                call()
        p.publish(b"kept")
        assert c.poll() == b"kept"  # none of them consumed anything
    # start= takes 'latest', 'earliest' or a sequence number (start=5 is valid)
    with pytest.raises(TypeError, match=r"5\.0"):
        shmq.Consumer(name, start=5.0)
    with pytest.raises(TypeError, match="True"):
        shmq.Consumer(name, start=True)
    with pytest.raises(ValueError, match="-1"):
        shmq.Consumer(name, start=-1)
    with pytest.raises(ValueError, match="bad"):
        shmq.Consumer(name, start="bad")
    with pytest.raises(ValueError) as raised:
        shmq.Producer(name + "x", capacity=12)
    assert "capacity" in str(raised.value) and name not in str(raised.value)
    assert not shmq.exists(name + "x")


@pytest.mark.parametrize("call", ["Producer", "Consumer", "unlink", "exists"])
def test_a_queue_name_ending_in_dot_consumers_is_refused(queue_name, call):
    name = queue_name
    shmq.Producer(name, slot_size=8, capacity=8).close()
    assert os.path.exists(ring_path(name) + ".consumers")
    fn = {"Producer": shmq.Producer, "Consumer": shmq.Consumer, "unlink": shmq.unlink,
          "exists": shmq.exists}[call]
    for bad in (name + ".consumers", "other.consumers"):
        with pytest.raises(ValueError):
            fn(bad)
    assert os.path.exists(ring_path(name) + ".consumers")  # the real one is untouched


# ------------------------------------------------------------ publish_many inputs

def test_publish_many_takes_lists_tuples_and_generators_alike(queue_name):
    name = queue_name
    batch = [b"a", bytearray(b"bb"), memoryview(b"ccc"), b""]
    with shmq.Producer(name, slot_size=8, capacity=64) as p, shmq.Consumer(name) as c:
        assert p.publish_many(batch) == 3
        assert p.publish_many(tuple(batch)) == 7
        assert p.publish_many(m for m in batch) == 11
        assert p.publish_many(iter(batch)) == 15
        assert c.poll_many(100) == [b"a", b"bb", b"ccc", b""] * 4


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ in Python needs 3.12 (PEP 688)")
def test_publish_many_is_safe_when_an_items_buffer_empties_the_list(queue_name):
    run = run_python("""
        import gc, sys, shmq
        name = sys.argv[1]

        class Vandal:
            def __buffer__(self, flags):
                batch.clear()  # the list the producer is reading
                gc.collect()
                return memoryview(b"vandal")

        with shmq.Producer(name, slot_size=16, capacity=16) as p, shmq.Consumer(name) as c:
            batch = [b"one", Vandal(), bytes(b"three"), bytearray(b"four")]
            last = p.publish_many(batch)
            print(last, c.poll_many(10))
    """, queue_name)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "3 [b'one', b'vandal', b'three', b'four']"


# ------------------------------------------------------------ a producer killed inside a batch

PRODUCER = """
    import sys, shmq
    name, count = sys.argv[1], int(sys.argv[2])
    p = shmq.Producer(name, slot_size=64, capacity=64)
    p.publish_many([b"m%d" % i for i in range(count)])
    print("ready", p.next_sequence, flush=True)
    sys.stdin.readline()
"""


def test_a_producer_killed_inside_a_batch_never_has_its_delivered_messages_renumbered(
        queue_name, children):
    name, k = queue_name, 5
    producer = children(PRODUCER, name, k)
    assert producer.expect("ready") == f"ready {k}"
    with shmq.Consumer(name, start="earliest") as c, Ring(name) as ring:
        assert ring.head == k
        # The dead producer's batch got this far: three whole messages, head not yet moved.
        for seq in range(k, k + 3):
            ring.write_message(seq, b"ghost-%d" % seq)
        assert ring.head == k
        delivered = [b"m%d" % i for i in range(k)] + [b"ghost-%d" % s for s in range(k, k + 3)]
        assert c.poll_many(100) == delivered
        producer.kill()
        with shmq.Producer(name) as successor:
            assert successor.next_sequence == k + 3
            assert successor.publish_many([b"new-%d" % i for i in range(3)]) == k + 5
        assert c.poll_many(100) == [b"new-0", b"new-1", b"new-2"]
        assert c.lost == 0
        with shmq.Consumer(name, start="earliest") as late:
            assert late.poll_many(100) == delivered + [b"new-0", b"new-1", b"new-2"]


# ------------------------------------------------------------ 200 producers killed flat out

KILL_ROUNDS = 200
SLOT_SIZE = 128

SPAWNER = """
    import json, os, random, select, signal, struct, sys, zlib, shmq
    name, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    pool = random.Random(seed + 1).randbytes(1 << 16)
    head = struct.Struct("<QI").pack

    def message(seq, incarnation):
        body = head(seq, incarnation) + pool[seq % 60000:seq % 60000 + seq % 101]
        return body + zlib.crc32(body).to_bytes(4, "little")

    def produce(incarnation, batches, w):
        p = shmq.Producer(name)
        seq = p.next_sequence
        os.write(w, b"%d\\n" % seq)
        n = 0
        while True:
            if batches:
                count = 1 + n % 48
                last = p.publish_many([message(seq + i, incarnation) for i in range(count)])
                if last != seq + count - 1:
                    sys.stderr.write(f"publish_many returned {last}, expected {seq + count - 1}\\n")
                    os._exit(4)
                seq += count
            else:
                got = p.publish(message(seq, incarnation))
                if got != seq:
                    sys.stderr.write(f"publish returned {got}, expected {seq}\\n")
                    os._exit(4)
                seq += 1
            n += 1

    starts = []
    for incarnation in range(rounds):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                os.close(r)
                produce(incarnation, incarnation >= rounds // 2, w)
            except BaseException as e:
                sys.stderr.write(f"incarnation {incarnation}: {e!r}\\n")
            finally:
                os._exit(code)
        os.close(w)
        ready, _, _ = select.select([r], [], [], 20)
        line = os.read(r, 64) if ready else b""
        os.close(r)
        if line:  # publishing flat out now: let it run a little, then kill it mid-write
            select.select([], [], [], rng.uniform(0.001, 0.03))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if not line or os.waitstatus_to_exitcode(status) != -signal.SIGKILL:
            print(json.dumps({"failed": incarnation, "status": os.waitstatus_to_exitcode(status)}))
            sys.exit(1)
        starts.append(int(line))
    print(json.dumps({"starts": starts}), flush=True)
"""

VERIFIER = """
    import array, json, struct, sys, zlib, shmq
    name, out = sys.argv[1], sys.argv[2]
    c = shmq.Consumer(name, start="earliest")
    start = c.position
    print("ready", flush=True)
    seqs, incarnations, crcs = array.array("Q"), array.array("I"), array.array("I")
    unpack = struct.Struct("<QI").unpack_from
    received = bad = 0
    last = -1
    problems = []
    while True:
        msg = c.poll(timeout=1)
        if msg is None:
            continue
        received += 1
        if msg == b"":  # the test's end marker
            break
        seq = c.position - 1
        crc = int.from_bytes(msg[-4:], "little")
        ok = len(msg) >= 16 and zlib.crc32(msg[:-4]) == crc and unpack(msg)[0] == seq and seq > last
        if not ok:
            bad += 1
            if len(problems) < 5:
                problems.append(f"seq {seq} after {last}: {msg[:16].hex()} len {len(msg)}")
            continue
        last = seq
        seqs.append(seq)
        incarnations.append(unpack(msg)[1])
        crcs.append(crc)
    with open(out, "wb") as f:
        seqs.tofile(f)
        incarnations.tofile(f)
        crcs.tofile(f)
    print(json.dumps({"start": start, "position": c.position, "lost": c.lost, "received": received,
                      "bad": bad, "problems": problems, "kept": len(seqs)}), flush=True)
"""


def _load(path, kept):
    seqs, incarnations, crcs = array.array("Q"), array.array("I"), array.array("I")
    with open(path, "rb") as f:
        seqs.fromfile(f, kept)
        incarnations.fromfile(f, kept)
        crcs.fromfile(f, kept)
    return seqs, incarnations, crcs


def _compare(a, b):
    """Merges two consumers' increasing sequences; returns how many they share
    and on how many of those they saw different payloads."""
    (seqs_a, incs_a, crcs_a), (seqs_b, incs_b, crcs_b) = a, b
    i = j = common = differ = 0
    while i < len(seqs_a) and j < len(seqs_b):
        if seqs_a[i] < seqs_b[j]:
            i += 1
        elif seqs_a[i] > seqs_b[j]:
            j += 1
        else:
            common += 1
            differ += (incs_a[i], crcs_a[i]) != (incs_b[j], crcs_b[j])
            i += 1
            j += 1
    return common, differ


@pytest.mark.timeout(300)
def test_200_producers_killed_flat_out_never_tear_or_renumber_a_message(queue_name, children, tmp_path):
    name = queue_name
    shmq.Producer(name, slot_size=SLOT_SIZE, capacity=1024).close()
    verifiers = [children(VERIFIER, name, tmp_path / f"v{i}") for i in range(2)]
    for v in verifiers:
        v.expect("ready")
    spawner = children(SPAWNER, name, KILL_ROUNDS, random.randrange(1 << 30))
    outcome = json.loads(spawner.line(timeout=240))
    assert spawner.wait() == 0 and "starts" in outcome, (outcome, spawner.errors())
    starts = outcome["starts"]
    with shmq.Producer(name) as last:
        end = last.publish(b"")
    assert len(starts) == KILL_ROUNDS
    assert all(a <= b for a, b in zip(starts, starts[1:])), "a producer went back in the sequence"
    bounds = starts + [end]

    delivered = []
    for index, v in enumerate(verifiers):
        summary = json.loads(v.line(timeout=60))
        assert v.wait() == 0, v.errors()
        assert summary["bad"] == 0, summary["problems"]
        assert summary["position"] == end + 1
        assert summary["received"] + summary["lost"] == summary["position"] - summary["start"], summary
        assert summary["kept"] > 0
        seqs, incarnations, crcs = _load(tmp_path / f"v{index}", summary["kept"])
        for seq, incarnation in zip(seqs, incarnations):
            # every message lies inside its own producer's stretch of the sequence
            assert bounds[incarnation] <= seq < bounds[incarnation + 1], (seq, incarnation)
        delivered.append((seqs, incarnations, crcs))
    common, disagreements = _compare(*delivered)
    assert disagreements == 0, f"{disagreements} sequences delivered with two payloads"
    print(f"{KILL_ROUNDS} kills, {end} messages published, consumers received "
          f"{len(delivered[0][0])} and {len(delivered[1][0])} ({common} in common)")

"""Messages larger than a slot (max_message_size), with real processes and
real shared memory: every size at the boundaries through every way to
publish and to read, records at every slot and across the ring's end, one
message as large as the ring, the bounds the queue accepts at creation and
keeps for life, mixed sizes that wrap a small lossless ring many times
(with an unregistered observer lapped meanwhile), a lossless producer
waiting for room for a whole record, consumers joining a running lossless
stream, a lossy reader lapped inside large records, earliest and numbered
starts on a lapped ring, views of lapped large records, producers killed
inside a large record and a consumer killed inside a view, the C programs,
lossless and lossy consumer groups, and poll_async.

Messages are tests/large_helpers.py records (sequence number, length and
CRC32 of a body cut from seeded random bytes), so a torn, stale or misplaced
byte fails the check; the C interoperability test uses shmq._pattern, the
format of csrc/tools/pattern.h. Peers run in Child processes
(tests/conftest.py) playing the roles of large_helpers.py. Each queue comes
from the `qname` fixture, which unlinks it and fails the test if anything
named after it is left in /dev/shm. Seeds are printed; SHMQ_LARGE_SEED
replays one.
"""
import array
import asyncio
import hashlib
import itertools
import json
import os
import queue
import random
import signal
import subprocess
import time
import zlib

import pytest

import large_helpers as H
import shmq
from conftest import CHILD_ENV, ROOT, run_python
from shmq import _pattern

KiB, MiB = 1 << 10, 1 << 20
TESTS = ROOT / "tests"
RUN_ROLE = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import large_helpers; "
            "large_helpers.ROLES[sys.argv[1]](*sys.argv[2:])")


@pytest.fixture
def qname(clean_queue):
    """conftest's clean_queue: nothing named after it may be left."""
    return clean_queue


@pytest.fixture
def seed():
    value = int(os.environ.get("SHMQ_LARGE_SEED", random.randrange(1 << 32)))
    print(f"seed={value} (SHMQ_LARGE_SEED={value} replays it)")
    return value


def _role(children, role, *args):
    return children(RUN_ROLE, role, *args)


def _blob(tag: str, size: int) -> bytes:
    """size bytes that depend on tag and on every position (no period)."""
    return hashlib.shake_256(tag.encode()).digest(size)


# ------------------------------------ boundary sizes and places in the ring

SLOT = 256
BOUNDARY_MAX = 3 * MiB + 5
BOUNDARY_SIZES = [0, 1, SLOT - 1, SLOT, SLOT + 1, 3 * SLOT, MiB, BOUNDARY_MAX]
WRITERS = ["publish", "publish_many", "loan"]
READERS = ["poll", "poll_into", "poll_many", "poll_many_into", "view", "iteration"]


def _publish_all(p, how, messages):
    if how == "publish":
        for m in messages:
            p.publish(m, timeout=5)
    elif how == "publish_many":
        assert p.publish_many(messages, timeout=5) == p.next_sequence - 1
    else:
        for m in messages:
            with p.loan(len(m), timeout=5) as buf:
                assert len(buf) == len(m) and buf.contiguous and not buf.readonly
                buf[:] = m


def _read_all(c, how, sizes):
    n = len(sizes)
    if how == "poll":
        return [c.poll(timeout=5) for _ in range(n)]
    if how == "poll_into":
        got = []
        for size in sizes:
            if size:
                with pytest.raises(shmq.MessageTooLarge):
                    c.poll_into(bytearray(size - 1))  # too small by one byte: kept
            buf = bytearray(size)
            assert c.poll_into(buf, timeout=5) == size
            got.append(bytes(buf))
        return got
    if how == "poll_many":
        got = []
        while len(got) < n:
            batch = c.poll_many(n - len(got), timeout=5)
            assert batch, f"poll_many returned nothing after {len(got)} of {n}"
            got += batch
        return got
    if how == "poll_many_into":
        buf = bytearray(sum(sizes))
        lengths = []
        while len(lengths) < n:
            done = sum(lengths)
            more = c.poll_many_into(memoryview(buf)[done:], n - len(lengths), timeout=5)
            assert more, f"poll_many_into returned nothing after {len(lengths)} of {n}"
            lengths += more
        offsets = list(itertools.accumulate(lengths, initial=0))
        return [bytes(buf[a:b]) for a, b in zip(offsets, offsets[1:])]
    if how == "view":
        got = []
        for _ in range(n):
            with c.view(timeout=5) as msg:
                assert msg is not None
                assert msg.readonly and msg.contiguous and msg.ndim == 1 and msg.itemsize == 1
                assert len(msg) == msg.nbytes
                got.append(bytes(msg))
        return got
    return list(itertools.islice(c, n))


@pytest.mark.timeout(120)
def test_every_boundary_size_goes_through_every_publish_and_every_read_byte_for_byte(qname):
    with shmq.Producer(qname, SLOT, 1 << 16, max_message_size=BOUNDARY_MAX, lossless=True) as p, \
            shmq.Consumer(qname, start="earliest") as c:
        assert p.max_message_size == c.max_message_size == BOUNDARY_MAX
        for writer, reader in itertools.product(WRITERS, READERS):
            sent = [_blob(f"{writer}/{reader}/{size}", size) for size in BOUNDARY_SIZES]
            first = p.next_sequence
            _publish_all(p, writer, sent)
            assert p.next_sequence == first + len(sent)
            got = _read_all(c, reader, BOUNDARY_SIZES)
            assert [len(m) for m in got] == BOUNDARY_SIZES, (writer, reader)
            for size, want, have in zip(BOUNDARY_SIZES, sent, got):
                assert have == want, f"{writer} -> {reader}: the {size}-byte message differs"
            assert c.position == p.next_sequence and c.lost == 0
            assert c.poll() is None


def test_one_byte_over_max_message_size_raises_message_too_large_and_publishes_nothing(qname):
    with shmq.Producer(qname, SLOT, 1 << 16, max_message_size=BOUNDARY_MAX) as p, \
            shmq.Consumer(qname, start="earliest") as c:
        p.publish(b"before")
        over = bytearray(BOUNDARY_MAX + 1)
        with pytest.raises(shmq.MessageTooLarge):
            p.publish(over)
        with pytest.raises(shmq.MessageTooLarge):
            p.publish(memoryview(over))
        with pytest.raises(shmq.MessageTooLarge):
            p.publish_many([b"fits", bytes(BOUNDARY_MAX), over])  # checked first: none goes out
        with pytest.raises(shmq.MessageTooLarge):
            p.loan(BOUNDARY_MAX + 1)
        assert p.next_sequence == 1 and p.last_sequence == 0
        assert c.poll() == b"before" and c.poll() is None
        p.publish(b"after")
        assert c.poll() == b"after" and c.lost == 0


def test_too_small_buffers_for_a_large_message_raise_and_keep_it(qname):
    with shmq.Producer(qname, SLOT, 1 << 14, max_message_size=2 * MiB) as p, \
            shmq.Consumer(qname, start="earliest") as c:
        big = _blob("big", MiB + 3)
        p.publish(big)
        with pytest.raises(shmq.MessageTooLarge):
            c.poll_into(bytearray(SLOT))  # room for one slot, not for the message
        with pytest.raises(shmq.MessageTooLarge):
            c.poll_many_into(bytearray(len(big) - 1))
        assert c.position == 0 and c.lost == 0
        buf = bytearray(2 * MiB)
        assert c.poll_many_into(buf) == [len(big)]
        assert buf[:len(big)] == big
        batch = [_blob("a", KiB), _blob("b", 600 * KiB), _blob("c", 10)]
        p.publish_many(batch)
        part = bytearray(300 * KiB)  # the first fits, the second does not: the batch ends there
        assert c.poll_many_into(part) == [KiB] and part[:KiB] == batch[0]
        assert c.poll_many_into(buf) == [600 * KiB, 10]
        assert buf[:600 * KiB + 10] == batch[1] + batch[2] and c.lost == 0


def test_records_starting_at_every_slot_of_the_ring_and_crossing_its_end_are_read_whole(qname):
    """A 64-slot ring and records of 1 to 21 slots, each read (in place or
    copied) before the next: over 600 records every start slot is taken and
    many records run past the ring's end."""
    source = H.pool(3)
    with shmq.Producer(qname, 256, 64, max_message_size=64 * 256) as p, \
            shmq.Consumer(qname) as c:
        buf = bytearray(64 * 256)
        for seq in range(600):
            size = 16 + (seq * 2617) % (21 * 256)
            record = H.make(seq, size, source)
            p.publish(record)
            if seq % 2:
                with c.view() as msg:
                    assert msg is not None and len(msg) == size and bytes(msg) == record, seq
            else:
                assert c.poll_into(buf) == size and buf[:size] == record, seq
        assert c.lost == 0 and c.position == 600


@pytest.mark.parametrize("lossless", [False, True])
def test_a_message_as_large_as_the_whole_ring_goes_through_from_any_start(qname, lossless):
    ring = 256 * 64
    with shmq.Producer(qname, 256, 64, max_message_size=ring, lossless=lossless) as p, \
            shmq.Consumer(qname) as c:
        for k in range(5):
            small = _blob(f"small {k}", 1 + k * 97)  # moves the next start by one slot or more
            p.publish(small, timeout=0)
            assert c.poll() == small
            whole = _blob(f"whole {k}", ring)
            with p.loan(ring, timeout=0) as buf:
                buf[:] = whole
            with c.view() as msg:
                assert msg is not None and len(msg) == ring and bytes(msg) == whole, k
        assert c.lost == 0 and c.position == 10


def test_an_abandoned_large_loan_publishes_nothing_and_its_sequence_goes_to_the_next_message(qname):
    with shmq.Producer(qname, 256, 1 << 14, max_message_size=2 * MiB) as p, \
            shmq.Consumer(qname) as c:
        p.publish(b"first")
        with pytest.raises(KeyError):
            with p.loan(MiB + 1) as buf:
                buf[:] = b"\xee" * (MiB + 1)
                raise KeyError
        assert p.next_sequence == 1 and c.poll() == b"first" and c.poll() is None
        record = _blob("after the abandoned loan", 2 * MiB)
        assert p.publish(record) == 1
        assert c.poll() == record and c.lost == 0


def test_a_lossless_producer_waits_for_room_for_the_whole_large_record_and_overwrites_nothing(qname):
    source = H.pool(4)
    with shmq.Producer(qname, 256, 64, max_message_size=16 * KiB, lossless=True) as p, \
            shmq.Consumer(qname, start="earliest") as c:
        records = [H.make(seq, 4 * KiB, source) for seq in range(3)]
        for record in records:
            p.publish(record, timeout=0)
        big = H.make(3, 8 * KiB, source)  # needs room that only reading frees
        with pytest.raises(shmq.Full):
            p.publish(big, timeout=0.1)
        with pytest.raises(shmq.Full):
            p.loan(len(big), timeout=0)
        assert p.next_sequence == 3
        assert c.poll() == records[0] and c.poll() == records[1]
        with p.loan(len(big), timeout=1) as buf:
            buf[:] = big
        assert c.poll() == records[2] and c.poll() == big and c.lost == 0


def test_a_lossy_publish_many_batch_larger_than_the_ring_leaves_whole_records_and_counts_the_rest(qname):
    source = H.pool(7)
    with shmq.Producer(qname, 256, 64, max_message_size=8 * KiB) as p, \
            shmq.Consumer(qname) as c:
        assert p.publish_many([H.make(seq, 4 * KiB + seq, source) for seq in range(10)]) == 9
        got = []
        while (msg := c.poll()) is not None:
            got.append(H.check(msg))
            assert len(msg) == 4 * KiB + got[-1]
        assert got and got == list(range(got[0], 10)), got
        assert len(got) < 10 and len(got) + c.lost == 10


@pytest.mark.timeout(60)
def test_a_publish_many_batch_four_times_the_lossless_ring_reaches_a_consumer_process_whole(
        qname, children):
    source = H.pool(5)
    count = 16
    with shmq.Producer(qname, 256, 4096, max_message_size=512 * KiB, lossless=True) as p:  # 1 MiB
        reader = _role(children, "lossless_reader", qname, "poll_many", count, 512 * KiB)
        assert reader.expect("ready") == f"ready True {512 * KiB}"
        batch = [H.make(seq, 256 * KiB + seq, source) for seq in range(count)]
        assert p.publish_many(batch, timeout=30) == count - 1
        report = json.loads(reader.line(timeout=30))
    assert report == dict(received=count, lost=0, bad=0, first_bad=None, largest=256 * KiB + count - 1)


def test_earliest_on_a_ring_lapped_by_large_records_starts_at_a_whole_record(qname):
    source = H.pool(6)
    with shmq.Producer(qname, 256, 64, max_message_size=8 * KiB) as p:  # a 16 KiB ring
        for seq in range(40):
            p.publish(H.make(seq, 16 + (seq * 1543) % (3 * KiB), source))
        for start in ("earliest", 0, 20, 39):
            with shmq.Consumer(qname, start=start) as c:
                first = c.position
                got = []
                while (msg := c.poll()) is not None:
                    got.append(H.check(msg))
                assert got and -1 not in got, (start, got)
                assert got == list(range(got[0], 40)), (start, got)
                # An overwritten start counts as lost from the sequence asked for.
                asked = first if start == "earliest" else start
                assert c.position == 40 and len(got) + c.lost == 40 - asked, (start, first, c.lost)
                if start == "earliest":
                    assert got[0] == first and c.lost == 0
                    assert len(got) >= 3, f"a 16 KiB ring holds more than {got} of records <= 3 KiB"
                if start == 39:
                    assert got == [39]


# ------------------------------------------------------- creation bounds


def test_max_message_size_bounds_at_creation(names):
    slot, cap = 256, 1024
    ring = slot * cap
    for accepted in (ring // 4, ring):
        queue_name = names()
        with shmq.Producer(queue_name, slot, cap, max_message_size=accepted) as p:
            assert p.max_message_size == accepted and p.slot_size == slot and p.capacity == cap
            with shmq.Consumer(queue_name) as c:
                assert c.max_message_size == accepted
            p.publish(_blob("whole ring", accepted))
    for refused, error in ((ring + 1, ValueError), (0, ValueError), (-1, ValueError),
                           (-ring, ValueError), (2**32, ValueError), (2**64, ValueError),
                           (2**100, ValueError), (1.5, TypeError), ("4096", TypeError),
                           (float(ring), TypeError)):
        queue_name = names()
        with pytest.raises(error):
            shmq.Producer(queue_name, slot, cap, max_message_size=refused)
        assert not shmq.exists(queue_name), f"max_message_size={refused!r} left a queue behind"


def test_max_message_size_none_is_the_slot_size(qname):
    with shmq.Producer(qname, 512, 64) as p:
        assert p.max_message_size == 512
        p.publish(bytes(512))
        with pytest.raises(shmq.MessageTooLarge):
            p.publish(bytes(513))
        with pytest.raises(shmq.MessageTooLarge):
            p.loan(513)
    with shmq.Consumer(qname) as c:
        assert c.max_message_size == 512
    with shmq.Producer(qname, max_message_size=512) as p:  # the same value: accepted
        assert p.max_message_size == 512
    with pytest.raises(shmq.IncompatibleQueue):
        shmq.Producer(qname, max_message_size=513)


def test_the_queue_keeps_max_message_size_for_life_and_a_different_one_is_incompatible(
        qname, children):
    made = 100_000
    shmq.Producer(qname, 256, 1024, max_message_size=made).close()
    for other in (made - 1, made + 1, 256, 256 * 1024):
        with pytest.raises(shmq.IncompatibleQueue):
            shmq.Producer(qname, max_message_size=other)
    with shmq.Producer(qname) as p:  # not given: the queue's own
        assert p.max_message_size == made
    assert shmq.inspect(qname)["max_message_size"] == made
    with shmq.Producer(qname, 256, 1024, max_message_size=made) as p:
        assert p.max_message_size == made
        p.publish(_blob("kept", made))
    probe = run_python(f"import shmq\nc = shmq.Consumer({qname!r}, start='earliest')\n"
                       "m = c.poll(timeout=5)\nprint(c.max_message_size, len(m))\nc.close()",
                       env=CHILD_ENV)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [str(made), str(made)]


# --------------------------------- mixed sizes, lossless, consumer processes

MIXED_COUNT = 20_000


def _mixed_sizes(rng, count, large_max):
    """95% of 16 B..2 KiB, 5% of 64 KiB..large_max."""
    return [rng.randint(64 * KiB, large_max) if rng.random() < 0.05 else rng.randint(16, 2 * KiB)
            for _ in range(count)]


def _publish_records(p, rng, sizes, source):
    """Publishes records 0..len(sizes)-1 by publish, publish_many (batches
    that may hold large records) and loan, chosen at random."""
    seq, count = 0, len(sizes)
    while seq < count:
        how = rng.random()
        if how < 0.4:
            end = min(count, seq + rng.randint(1, 24))
            batch = [H.make(s, sizes[s], source) for s in range(seq, end)]
            assert p.publish_many(batch, timeout=30) == seq + len(batch) - 1
            seq += len(batch)
        elif how < 0.7:
            assert p.publish(H.make(seq, sizes[seq], source), timeout=30) == seq
            seq += 1
        else:
            with p.loan(sizes[seq], timeout=30) as buf:
                H.fill(buf, seq, source)
            assert p.last_sequence == seq
            seq += 1


@pytest.mark.timeout(180)
def test_mixed_sizes_wrap_a_small_lossless_ring_and_two_consumer_processes_get_every_record_in_order(
        qname, children, tmp_path, seed):
    rng, source = random.Random(seed), H.pool(seed)
    sizes = _mixed_sizes(rng, MIXED_COUNT, MiB)
    ring = 256 * 16384
    assert sum(sizes) > 20 * ring  # the large records wrap the ring many times
    with shmq.Producer(qname, 256, 16384, max_message_size=MiB, lossless=True) as p:
        readers = [_role(children, "lossless_reader", qname, mode, MIXED_COUNT, MiB)
                   for mode in ("poll_many", "view")]
        # An unregistered observer is lapped and never holds the producer back.
        observer = _role(children, "kill_reader", qname, "view", tmp_path / "observer", 0)
        for reader in readers:
            assert reader.expect("ready", 60) == f"ready True {MiB}"
        assert observer.expect("ready", 60) == "ready 0"
        t0 = time.monotonic()
        _publish_records(p, rng, sizes, source)
        assert p.next_sequence == MIXED_COUNT
        p.publish(H.make_end(MIXED_COUNT))
        reports = [json.loads(reader.line(timeout=120)) for reader in readers]
        seen = json.loads(observer.line(timeout=120))
    print(f"{MIXED_COUNT} records, {sum(sizes) / MiB:.0f} MiB, in {time.monotonic() - t0:.1f} s; "
          f"observer {seen}")
    for reader, report in zip(readers, reports):
        assert report == dict(received=MIXED_COUNT, lost=0, bad=0, first_bad=None,
                              largest=max(sizes)), f"seed {seed}: {report}"
        assert reader.wait() == 0, reader.errors()
    assert seen["bad"] == 0 and seen["misplaced"] == 0 and seen["last"] == MIXED_COUNT, seen
    assert seen["received"] + seen["lost"] == seen["position"] == MIXED_COUNT + 1, seen


# ------------------------------------------ lossy, lapped inside large records


def _lossy_read(c, how, buf):
    """What one poll, poll_many, poll_into or poll_many_into (by how, 0..3) returned, as a list."""
    if how == 0:
        msg = c.poll(timeout=0.2)
        return [] if msg is None else [msg]
    if how == 1:
        return c.poll_many(3, timeout=0.2)
    if how == 2:
        n = c.poll_into(buf, timeout=0.2)
        return [] if n is None else [bytes(buf[:n])]
    lengths = c.poll_many_into(buf, 3, timeout=0.2)
    offsets = list(itertools.accumulate(lengths, initial=0))
    return [bytes(buf[a:b]) for a, b in zip(offsets, offsets[1:])]


@pytest.mark.timeout(120)
def test_slow_lossy_reader_of_large_records_never_gets_a_torn_one_and_counts_every_loss(
        qname, children, seed):
    count = 1500
    producer = _role(children, "fast_producer", qname, f"256,8192,{MiB},0",  # a 2 MiB ring
                     count, seed, 256 * KiB, MiB, 1, 0)
    assert producer.expect("open") == "open 0"
    c = shmq.Consumer(qname)
    buf = bytearray(3 * MiB)
    producer.tell("go")
    received = torn = disorder = 0
    last, published = -1, None
    deadline = time.monotonic() + 90
    for k in itertools.count():
        assert time.monotonic() < deadline, f"seed {seed}: the producer never finished"
        batch = _lossy_read(c, k % 4, buf)
        if not batch:
            if published is None:
                try:
                    word, n = producer.lines.get_nowait().split()
                    assert word == "done"
                    published = int(n)
                except queue.Empty:
                    pass
                continue
            break
        for msg in batch:
            seq = H.check(msg)
            received += 1
            torn += seq < 0
            disorder += seq >= 0 and seq <= last
            last = max(last, seq)
        time.sleep(0.003)  # a slow reader
    lost = c.lost
    print(f"seed {seed}: published={published} received={received} lost={lost}")
    assert published == count
    assert torn == 0 and disorder == 0
    assert received + lost == published and c.position == published
    assert lost > 0 and received > 0
    c.close()


# ------------------------------------------------- views of lapped records


def test_a_view_of_a_large_record_lapped_by_the_producer_raises_overwritten_and_counts_one_loss(qname):
    source = H.pool(1)
    with shmq.Producer(qname, 256, 64, max_message_size=8 * KiB) as p:  # a 16 KiB ring
        c = shmq.Consumer(qname)
        record = H.make(0, 4 * KiB, source)
        p.publish(record)
        with pytest.raises(shmq.Overwritten):
            with c.view() as msg:
                assert bytes(msg) == record
                for seq in range(1, 9):  # twice round the ring
                    p.publish(H.make(seq, 4 * KiB, source))
        assert c.lost == 1 and c.position == 1
        received = 0
        while (msg := c.poll()) is not None:
            assert H.check(msg) == c.position - 1
            received += 1
        assert received > 0 and received + c.lost == p.next_sequence
        c.close()


def test_a_view_whose_bytes_changed_when_only_the_first_slot_was_rewritten_raises_overwritten(qname):
    source = H.pool(2)
    with shmq.Producer(qname, 256, 64, max_message_size=8 * KiB) as p:
        c = shmq.Consumer(qname)
        p.publish(H.make(0, 100, source))
        record = H.make(1, 4 * KiB, source)
        p.publish(record)
        assert c.poll() is not None
        with c.view() as msg:  # one small message after it: nothing touched
            assert bytes(msg) == record
            p.publish(H.make(2, 100, source))
            assert bytes(msg) == record
        assert c.lost == 0 and H.check(c.poll()) == 2
        record = H.make(3, 4 * KiB, source)
        p.publish(record)
        with pytest.raises(shmq.Overwritten):
            with c.view() as msg:
                for seq in itertools.count(4):  # small ones, until the record's bytes change
                    p.publish(H.make(seq, 100, source))
                    if bytes(msg) != record:
                        break
                    assert seq < 200, "64 more messages never reached the record"
        assert c.lost == 1
        c.close()


@pytest.mark.timeout(120)
def test_every_view_of_a_large_record_that_exits_cleanly_had_the_published_bytes(
        qname, children, seed):
    views = 3000
    producer = _role(children, "fast_producer", qname, f"256,1024,{128 * KiB},0",  # 256 KiB
                     0, seed, 16 * KiB, 128 * KiB, 8, 0.001)
    producer.expect("open")
    c = shmq.Consumer(qname)
    start = c.position
    producer.tell("go")
    clean = raised = bad = 0
    for n in range(views):
        try:
            with c.view(timeout=10) as msg:
                assert msg is not None
                seq, length, crc = H.HEAD.unpack_from(msg)
                size = len(msg)
                first = zlib.crc32(msg[H.HEAD.size:])
                if n % 10 == 0:
                    time.sleep(0.002)  # held while the producer laps the ring
                again = zlib.crc32(msg[H.HEAD.size:])
        except shmq.Overwritten:
            raised += 1
            continue
        clean += 1
        bad += not (first == again == crc and length == size - H.HEAD.size
                    and seq == c.position - 1)
    print(f"seed {seed}: views={views} clean={clean} raised={raised} lost={c.lost}")
    assert bad == 0
    assert clean + c.lost == c.position - start
    assert clean > 0 and raised > 0
    c.close()


# ------------------------------------------- producers killed inside a record


@pytest.mark.timeout(180)
def test_producers_killed_inside_large_records_leave_nothing_torn_and_successors_continue(
        qname, children, tmp_path, seed):
    rng = random.Random(seed)
    modes = ("poll", "view")
    # Held open until the readers are in, so no `shmq rm --stale` finds the queue unused.
    with shmq.Producer(qname, 256, 16384, max_message_size=2 * MiB):  # a 4 MiB ring
        readers = [_role(children, "kill_reader", qname, mode, tmp_path / mode) for mode in modes]
        for reader in readers:
            assert reader.expect("ready", 60) == "ready 0"
    rounds = ["random", "midloan", "random", "random", "midloan"]
    expected_next = None
    for k, how in enumerate(rounds):
        producer = _role(children, "killed_producer", qname, seed + k, how)
        _, next_seq = producer.expect("open").split()
        if expected_next is not None:  # the abandoned loan's sequence goes to the successor
            assert int(next_seq) == expected_next, f"seed {seed}, round {k}"
        if how == "midloan":
            _, writing = producer.expect("writing", timeout=60).split()
            expected_next = int(writing)
        else:
            time.sleep(rng.uniform(0.05, 0.4))
            expected_next = None
        os.kill(producer.pid, signal.SIGKILL)
        assert producer.proc.wait(timeout=10) == -signal.SIGKILL
    source = H.pool(seed)
    with shmq.Producer(qname) as p:
        assert p.next_sequence == expected_next
        first = p.next_sequence
        for _ in range(4):
            p.publish(H.make(p.next_sequence, 512 * KiB, source))
            time.sleep(0.05)
        end = p.publish(H.make_end(p.next_sequence))
    crcs = {}
    for mode, reader in zip(modes, readers):
        report = json.loads(reader.line(timeout=100))
        print(f"seed {seed}: {mode} reader {report}")
        assert reader.wait() == 0, reader.errors()
        assert report["bad"] == 0 and report["misplaced"] == 0, (seed, mode, report)
        assert report["last"] == end
        assert report["received"] + report["lost"] == report["position"] == end + 1
        seen = [tuple(map(int, line.split())) for line in (tmp_path / mode).read_text().split("\n")]
        assert [s for s, _ in seen if s >= first] == list(range(first, end + 1)), \
            f"{mode}: did not continue with the successor's records"
        for seq, crc in seen:
            assert crcs.setdefault(seq, crc) == crc, f"sequence {seq} came with two payloads"


# ------------------------------------------------------ the C programs


@pytest.mark.timeout(120)
def test_c_producer_of_mixed_sizes_feeds_a_python_consumer_every_byte_right(qname, c_programs):
    producer_prog, _ = c_programs
    count, largest = 1500, 300_001
    with shmq.Producer(qname, 256, 16384, max_message_size=largest, lossless=True):
        c = shmq.Consumer(qname, start="earliest")  # registered before the C producer starts
    proc = subprocess.Popen([str(producer_prog), qname, "--count", str(count), "--size", "8",
                             "--max-message", str(largest), "--slot-size", "256",
                             "--capacity", "16384", "--lossless"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sizes = []
        for i in range(count):
            msg = c.poll(timeout=20)
            if msg is None:
                proc.kill()
                pytest.fail(f"nothing after {i} messages; the producer said {proc.communicate()[1]!r}")
            assert _pattern.check(msg) == i, f"message {i} ({len(msg)} bytes) is wrong"
            sizes.append(len(msg))
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert c.lost == 0
    assert 8 <= min(sizes) and max(sizes) <= largest
    assert sum(s > 256 for s in sizes) > count // 2 and len(set(sizes)) > 100
    c.close()


@pytest.mark.timeout(120)
def test_python_producer_of_large_pattern_messages_feeds_the_c_consumer(qname, c_programs, seed):
    _, consumer_prog = c_programs
    rng = random.Random(seed)
    count, largest = 400, MiB
    with shmq.Producer(qname, 256, 8192, max_message_size=largest, lossless=True) as p:
        proc = subprocess.Popen([str(consumer_prog), qname, "--count", str(count), "--from",
                                 "earliest", "--timeout", "30"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert p.wait_consumers(1, timeout=20) >= 1
            for i in range(count):
                size = largest if i == count - 1 else rng.choice([8, 255, 257, rng.randint(8, largest)])
                with p.loan(size, timeout=30) as buf:
                    buf[:] = _pattern.make(i, size)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.strip() == f"received={count} lost=0 corrupt=0"


# ------------------------------------------- joining a running lossless stream


@pytest.mark.timeout(120)
def test_consumers_joining_a_running_lossless_stream_of_large_records_mid_flight_read_it_whole(
        qname, children, seed):
    """The producer never waits for nobody: it laps its ring until a consumer
    registers. Each joiner starts at the earliest record while the producer
    is writing; what was rewritten while it registered counts as lost, and
    from there on it reads every record whole and in order."""
    producer = _role(children, "fast_producer", qname, f"256,4096,{512 * KiB},1",  # 1 MiB
                     0, seed, 16, 512 * KiB, 1, 0)
    producer.expect("open")
    producer.tell("go")
    time.sleep(0.05)
    for k in range(20):
        with shmq.Consumer(qname, start="earliest") as c:
            assert c.registered
            opened = c.position
            in_ring = opened + c.backlog  # at least every record published before it registered
            got = []
            for _ in range(40):
                if k % 2:
                    msg = c.poll(timeout=10)
                    assert msg is not None, f"seed {seed}, joiner {k}: the producer stalled"
                    got.append(H.check(msg))
                    continue
                try:
                    with c.view(timeout=10) as msg:  # in place: a registered view holds the producer
                        assert msg is not None, f"seed {seed}, joiner {k}: the producer stalled"
                        seq = H.check(msg)
                except shmq.Overwritten:
                    continue  # only in the registration window (checked below)
                got.append(seq)
            assert got and -1 not in got, f"seed {seed}, joiner {k}: a torn record: {got}"
            assert got == sorted(set(got)) and c.position == got[-1] + 1, (k, got)
            assert len(got) + c.lost == c.position - opened, (k, opened, c.lost, got)
            missed = sorted(set(range(opened, c.position)) - set(got))
            assert all(s < in_ring for s in missed), \
                f"seed {seed}, joiner {k}: registered from {in_ring} on, yet lost {missed}"
        time.sleep(0.01)


# ------------------------------------------------------------- groups


@pytest.mark.timeout(120)
def test_group_members_receive_whole_large_records_and_together_every_record_once(
        qname, children, tmp_path, seed):
    count, largest = 3000, 512 * KiB
    rng, source = random.Random(seed), H.pool(seed)
    sizes = _mixed_sizes(rng, count, largest)
    sizes[-1] = largest
    modes = ("poll_many", "view", "into")
    with shmq.Producer(qname, 256, 8192, max_message_size=largest, lossless=True) as p:
        members = [_role(children, "group_member", qname, "g", mode, tmp_path / mode, largest)
                   for mode in modes]
        for member in members:
            assert member.expect("ready", 60) == f"ready g {largest}"
        _publish_records(p, rng, sizes, source)
    for member in members:  # the producer closed: the stream ended
        member.expect("drained", 90)
    got = []
    for mode, member in zip(modes, members):
        member.tell("report")
        report = json.loads(member.line())
        assert member.wait() == 0, member.errors()
        assert report["bad"] == 0 and report["lost"] == 0, (seed, mode, report)
        seqs = array.array("Q")
        seqs.frombytes((tmp_path / mode).read_bytes())
        assert list(seqs) == sorted(seqs), f"{mode}: out of order"
        got.append(seqs)
    union = sorted(itertools.chain.from_iterable(got))
    assert union == list(range(count)), f"seed {seed}: not every record exactly once"
    assert all(len(g) > 0 for g in got), "a member received nothing"


@pytest.mark.timeout(120)
def test_slow_members_of_a_lossy_group_get_whole_large_records_and_share_one_lost_count(
        qname, children, tmp_path, seed):
    count = 600
    producer = _role(children, "fast_producer", qname, f"256,8192,{MiB},0",  # a 2 MiB ring
                     count, seed, 64 * KiB, 512 * KiB, 1, 0)
    producer.expect("open")
    modes = ("poll_many", "view", "into")
    members = [_role(children, "group_member", qname, "lossy", mode, tmp_path / mode, MiB, 0.002)
               for mode in modes]
    for member in members:
        assert member.expect("ready", 60) == f"ready lossy {MiB}"
    producer.tell("go")
    assert producer.expect("done", 60) == f"done {count}"
    producer.tell("close")  # the stream ends
    assert producer.wait() == 0, producer.errors()
    for member in members:
        member.expect("drained", 90)
    got, losts = [], set()
    for mode, member in zip(modes, members):
        member.tell("report")
        report = json.loads(member.line())
        assert member.wait() == 0, member.errors()
        assert report["bad"] == 0, (seed, mode, report)
        losts.add(report["lost"])
        seqs = array.array("Q")
        seqs.frombytes((tmp_path / mode).read_bytes())
        assert list(seqs) == sorted(set(seqs)), f"{mode}: out of order or repeated"
        got += seqs
    print(f"seed {seed}: received {len(got)} of {count}, lost {losts}")
    assert len(set(got)) == len(got), "a record went to two members"
    assert len(losts) == 1, f"the members disagree on the group's lost count: {losts}"
    assert len(got) + losts.pop() == count
    assert len(got) < count


# ---------------------------------------------------- a consumer killed in a view


def test_a_lossless_producer_held_by_a_killed_consumers_view_of_a_large_record_goes_on(
        qname, children):
    source = H.pool(8)
    with shmq.Producer(qname, 256, 4096, max_message_size=MiB, lossless=True) as p:  # 1 MiB
        for seq in range(3):
            p.publish(H.make(seq, 300 * KiB, source), timeout=0)
        holder = _role(children, "view_holder", qname)
        assert holder.expect("holding") == f"holding 0 {300 * KiB}"
        with pytest.raises(shmq.Full):
            p.publish(H.make(3, 600 * KiB, source), timeout=0.2)  # would overwrite record 0
        os.kill(holder.pid, signal.SIGKILL)
        assert holder.proc.wait(timeout=10) == -signal.SIGKILL
        assert p.publish(H.make(3, 600 * KiB, source), timeout=10) == 3


# ------------------------------------------------------------- asyncio


def test_poll_async_and_async_for_return_whole_large_records(qname, children):
    sizes = [MiB + 7, 3 * 256 + 1, 2 * MiB]
    publisher = _role(children, "late_publisher", qname, f"256,16384,{2 * MiB},0", 0.2, *sizes)
    publisher.expect("open")
    c = shmq.Consumer(qname, start="earliest")
    publisher.tell("go")

    async def main():
        first = await asyncio.wait_for(c.poll_async(timeout=20), 30)
        rest = []
        async for msg in c:
            rest.append(msg)
            if len(rest) == len(sizes) - 1:
                break
        return [first, *rest]

    got = asyncio.run(main())
    source = H.pool(9)
    assert [len(m) for m in got] == sizes
    assert got == [H.make(seq, size, source) for seq, size in enumerate(sizes)]
    assert c.lost == 0
    publisher.expect("done")
    publisher.tell("bye")
    assert publisher.wait() == 0, publisher.errors()
    c.close()

"""Consumer groups, from the Python API: consumers of one queue opened with the
same `group` split the stream (each message to exactly one live member),
while plain consumers and other groups still see every message.

The invariants each scenario proves:
- exactly once: the indices the members of a group received, put together,
  are every published index, each once (lossless), or, lossy, received +
  the group's lost == published, with every member reporting that same lost;
- at-least-once only where the spec allows it: a message appears twice only
  if a member that was killed had claimed it and not returned it, and it is
  redelivered (lossless) or counted lost (lossy, overwritten first);
- a group counts as one reader for a lossless producer;
- the first member creates the group at its start, later ones continue from
  the group's position, and a group with no member left starts afresh.

Members that must be elsewhere run in Child processes (tests/conftest.py),
which say "ready" once their consumer is open, so that every member has
joined before the first publish. Messages carry their index (8 bytes), a
64-bit tag of it (the kill scenario, to tell a torn record from a written
one), or shmq._pattern's self-checking bytes (the lossy scenario). Every
queue comes from the `queue` fixture, which unlinks it and checks that
nothing of it is left in /dev/shm.
"""
import array
import ast
import asyncio
import collections
import contextlib
import inspect
import json
import os
import random
import select
import struct
import time

import pytest

import shmq
from conftest import ROOT
from shmq import _pattern

INDEX = struct.Struct("<Q")
RECORD = struct.Struct("<QQ")  # index, _tag(index)


def _tag(i: int) -> int:
    """The second half of a kill-scenario record: a record that a SIGKILL tore
    (some bytes still zero) fails this check. Same formula as in PACED_PRODUCER."""
    return (i * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF


@pytest.fixture
def queue(clean_queue):
    """conftest's clean_queue: nothing named after it may be left."""
    return clean_queue


def _exactly_once(arrays, count):
    """(missing, repeated, out of range) over indices that should be 0..count-1 once each."""
    seen = bytearray(count)
    repeated, bogus = [], []
    for got in arrays:
        for i in got:
            if i >= count:
                bogus.append(i)
            elif seen[i]:
                repeated.append(i)
            else:
                seen[i] = 1
    missing = [i for i in range(count) if not seen[i]]
    return missing, repeated, bogus


def _assert_exactly_once(arrays, count, who):
    missing, repeated, bogus = _exactly_once(arrays, count)
    assert not (missing or repeated or bogus), (
        f"{who}: {len(missing)} missing (first {missing[:10]}), {len(repeated)} repeated "
        f"(first {repeated[:10]}), {len(bogus)} never published (first {bogus[:10]})")


# A consumer in its own process (a member of `group`, or plain if group is
# "-"): says "ready GROUP" once open, reads batches of up to `batch` until
# the stream ended and nothing came for 0.4 s, pausing `pause` s after each
# batch, and checks each message (check "index": 8 bytes, its index;
# "pattern": shmq._pattern). Then it writes the indices it received to
# `out` (u64, in order), says "drained N", and once told "report" prints
# {received, lost, bad}: every member reports lost only after all drained,
# so none reads the group's count while another still claims.
READER = """
    import array, json, sys, time
    import shmq
    from shmq import _pattern
    name, group, out, batch, pause, check = sys.argv[1:7]
    batch, pause = int(batch), float(pause)
    c = shmq.Consumer(name, start="earliest", group=None if group == "-" else group)
    print("ready", c.group, flush=True)
    got, bad, quiet_since = array.array("Q"), 0, None
    while True:
        messages = c.poll_many(batch, timeout=0.05)
        if messages:
            quiet_since = None
            if check == "index":
                data = b"".join(messages)
                if len(data) == 8 * len(messages):
                    got.frombytes(data)
                else:
                    bad += len(messages)
            else:
                for m in messages:
                    i = _pattern.check(m)
                    if i < 0 or len(m) != 8 + i % 49:
                        bad += 1
                    else:
                        got.append(i)
            if pause:
                time.sleep(pause)
        elif c.ended:
            now = time.monotonic()
            quiet_since = quiet_since or now
            if now - quiet_since > 0.4:
                break
            time.sleep(0.01)
    with open(out, "wb") as f:
        got.tofile(f)
    print("drained", len(got), flush=True)
    sys.stdin.readline()
    print(json.dumps(dict(received=len(got), lost=c.lost, bad=bad)), flush=True)
    c.close()
"""


def _start_readers(children, queue, tmp_path, groups, batch=512, pause=0.0, check="index"):
    """One READER per entry of groups ("-": plain); returns them once all are ready."""
    readers = []
    for k, group in enumerate(groups):
        reader = children(READER, queue, group, tmp_path / f"reader{k}", batch, pause, check)
        reader.group, reader.out = group, tmp_path / f"reader{k}"
        readers.append(reader)
    for reader in readers:
        said = reader.expect("ready", timeout=60)
        assert said == f"ready {None if reader.group == '-' else reader.group}", said
    return readers


def _finish_readers(readers, timeout=90):
    """Waits until every reader drained, then has each report; returns
    (indices received, report) per reader."""
    for reader in readers:
        reader.expect("drained", timeout)
    results = []
    for reader in readers:
        reader.tell("report")
        report = json.loads(reader.line())
        assert reader.wait() == 0, reader.errors()
        got = array.array("Q")
        got.frombytes(reader.out.read_bytes())
        assert len(got) == report["received"]
        results.append((got, report))
    return results


# ------------------------------------------------- splitting a lossless stream

@pytest.mark.timeout(150)
def test_four_member_processes_split_a_lossless_stream_while_a_plain_consumer_and_another_group_see_all(
        queue, children, tmp_path):
    count = 200_000
    roles = ["workers"] * 4 + ["-"] + ["pair"] * 2
    with shmq.Producer(queue, 16, 4096, lossless=True) as p:
        readers = _start_readers(children, queue, tmp_path, roles)
        payloads = [INDEX.pack(i) for i in range(count)]
        t0 = time.monotonic()
        for first in range(0, count, 4096):
            p.publish_many(payloads[first:first + 4096], timeout=30)
    results = _finish_readers(readers)  # the producer closed: the stream ended
    seconds = time.monotonic() - t0
    for (got, report), role in zip(results, roles):
        assert report["lost"] == 0 and report["bad"] == 0, (role, report)
    workers = [got for (got, _), role in zip(results, roles) if role == "workers"]
    _assert_exactly_once(workers, count, "group 'workers'")
    shares = [len(got) / count for got in workers]
    assert min(shares) > 0.05, f"a member was starved: shares {shares}"
    plain = results[roles.index("-")][0]
    assert plain == array.array("Q", range(count)), "the plain consumer missed or reordered messages"
    _assert_exactly_once([got for (got, _), role in zip(results, roles) if role == "pair"], count,
                         "group 'pair'")
    print(f"{count} messages in {seconds:.1f} s; 'workers' shares "
          f"{', '.join(f'{s:.1%}' for s in shares)}")


def test_a_group_counts_as_one_reader_for_a_lossless_producer(queue):
    with shmq.Producer(queue, 16, 8, lossless=True) as p, \
            shmq.Consumer(queue, group="g") as a, shmq.Consumer(queue, group="g") as b:
        for i in range(8):
            p.publish(INDEX.pack(i), timeout=0)
        with pytest.raises(shmq.Full):
            p.publish(INDEX.pack(8), timeout=0)
        assert a.poll() == INDEX.pack(0)  # taken by one member: the group took it
        p.publish(INDEX.pack(8), timeout=0)
        with pytest.raises(shmq.Full):
            p.publish(INDEX.pack(9), timeout=0)
        assert b.poll() == INDEX.pack(1)
        p.publish(INDEX.pack(9), timeout=0)
        got = a.poll_many(100) + b.poll_many(100)
        assert got == [INDEX.pack(i) for i in range(2, 10)]
        assert a.lost == b.lost == 0


# ------------------------------------------------------------- killed members

# The producer of the kill scenario: creates the lossless queue, says
# "ready", publishes RECORD(i, tag(i)) for i = 0, 1, ... in chunks of 16 a
# millisecond apart once told "go", until told "stop" (or `limit`), then
# closes (ending the stream) and says "published N".
PACED_PRODUCER = """
    import select, struct, sys, time
    import shmq
    name, limit = sys.argv[1], int(sys.argv[2])
    pack = struct.Struct("<QQ").pack
    def tag(i):
        return (i * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    p = shmq.Producer(name, 16, 1024, lossless=True, max_consumers=64)
    print("ready", flush=True)
    sys.stdin.readline()
    i = 0
    while i < limit and not select.select([sys.stdin], [], [], 0)[0]:
        p.publish_many([pack(j, tag(j)) for j in range(i, i + 16)], timeout=10)
        i += 16
        time.sleep(0.001)
    p.close()
    print("published", i, flush=True)
"""

# A member of group "workers" that records what it receives so that the
# record survives SIGKILL: the messages are copied straight into a file
# mapped MAP_SHARED (the file is the buffer of poll_many_into, or the copy
# is made inside the view block), so whatever a poll returned is already in
# the file when the poll returns. kind "batch": poll_many_into up to `batch`
# messages, then a 2 ms pause; kind "view": one message per view, held for
# 1 ms inside the block (so a kill often lands while it is claimed). Exits
# once the stream ended and nothing came for 0.5 s, printing {lost, records}.
RECORDER = """
    import json, mmap, os, sys, time
    import shmq
    name, out, kind, batch, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, size)
    records = memoryview(mmap.mmap(fd, size))
    c = shmq.Consumer(name, start="earliest", group="workers")
    print("ready", flush=True)
    end, quiet_since = 0, None
    while True:
        if kind == "batch":
            lengths = c.poll_many_into(records[end:], batch, timeout=0.05)
            end += sum(lengths)
            took = bool(lengths)
            if took:
                time.sleep(0.002)
        else:
            with c.view(timeout=0.05) as msg:
                took = msg is not None
                if took:
                    records[end:end + len(msg)] = msg
                    time.sleep(0.001)
            if took:
                end += 16
        if took:
            quiet_since = None
        elif c.ended:
            now = time.monotonic()
            quiet_since = quiet_since or now
            if now - quiet_since > 0.5:
                break
            time.sleep(0.01)
    print(json.dumps(dict(lost=c.lost, records=end // 16)), flush=True)
    c.close()
"""


def _recorded(path):
    """The records a RECORDER left in its file: (how many slots it wrote,
    [(slot, index)] of the whole records, [slots] of torn ones)."""
    data = path.read_bytes().rstrip(b"\0")  # past the last write the sparse file is zeros
    data += bytes(-len(data) % RECORD.size)
    whole, torn = [], []
    for slot, (i, tag) in enumerate(RECORD.iter_unpack(data)):
        if tag == _tag(i):
            whole.append((slot, i))
        elif i or tag:  # an all-zero slot was never written
            torn.append(slot)
    return len(data) // RECORD.size, whole, torn


@pytest.mark.timeout(150)
def test_twenty_members_killed_and_replaced_mid_stream_lose_nothing_and_repeat_only_their_claims(
        queue, children, tmp_path):
    kills, batch, limit = 20, 32, 250_000
    rng = random.Random()
    size = (limit + batch) * RECORD.size
    producer = children(PACED_PRODUCER, queue, limit)
    producer.expect("ready")
    started = []

    def start(kind):
        member = children(RECORDER, queue, tmp_path / f"member{len(started)}", kind, batch, size)
        member.kind, member.out, member.killed = kind, tmp_path / f"member{len(started)}", False
        started.append(member)
        return member

    live = [start(kind) for kind in ("batch", "view", "batch", "view")]
    for member in live:
        member.expect("ready", timeout=60)
    producer.tell("go")
    for _ in range(kills):
        time.sleep(rng.uniform(0.03, 0.1))
        victim = live.pop(rng.randrange(len(live)))
        victim.kill()  # SIGKILL, at whatever point it is
        victim.killed = True
        live.append(start(victim.kind))
        live[-1].expect("ready", timeout=60)
    time.sleep(0.2)
    producer.tell("stop")
    published = int(producer.expect("published", timeout=60).split()[1])
    assert producer.wait() == 0, producer.errors()
    assert 0 < published < limit  # every kill happened while the stream flowed
    reports = [json.loads(member.line(timeout=60)) for member in live]
    for member in live:
        assert member.wait() == 0, member.errors()

    # Whatever a poll returned is in its member's file; only the last claim
    # of a killed member (up to `batch` records, or 1 for a view) may also
    # have been redelivered to another member, or be torn.
    everywhere, delivered = collections.Counter(), collections.Counter()
    for member in started:
        slots, whole, torn = _recorded(member.out)
        tail = slots - (batch if member.kind == "batch" else 1) if member.killed else slots
        assert all(slot >= tail for slot in torn), (member.kind, member.killed, torn[:10], slots)
        for slot, i in whole:
            everywhere[i] += 1
            if slot < tail:
                delivered[i] += 1
        if not member.killed:
            report = reports[live.index(member)]
            assert report == dict(lost=0, records=slots), report
    assert max(everywhere) < published, "a record of a message that was never published"
    missing = [i for i in range(published) if not everywhere[i]]
    assert not missing, f"{len(missing)} of {published} messages reached no member: {missing[:10]}"
    twice = [i for i, n in delivered.items() if n > 1]
    assert not twice, f"{len(twice)} messages returned to two members, not a dead one's claim: {twice[:10]}"
    repeats = sum(everywhere.values()) - len(everywhere)
    assert repeats <= kills * batch
    print(f"{published} messages, {kills} kills, {repeats} redelivered after a kill")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("lossless", [True, False], ids=["lossless", "lossy"])
def test_a_message_a_killed_member_held_in_a_view_goes_to_the_next_member_or_to_lost(
        queue, children, lossless):
    holder = """
        import sys, time, shmq
        c = shmq.Consumer(sys.argv[1], start="earliest", group="g")
        with c.view(timeout=10) as msg:
            print("holding", bytes(msg).hex(), flush=True)
            time.sleep(600)
    """
    with shmq.Producer(queue, 16, 8, lossless=lossless) as p:
        child = children(holder, queue)
        with shmq.Consumer(queue, group="g") as b:  # joins the group the child made, at 0
            p.publish(INDEX.pack(0))
            assert child.expect("holding") == f"holding {INDEX.pack(0).hex()}"
            for i in range(1, 8):
                p.publish(INDEX.pack(i), timeout=0)
            assert b.poll_many(100) == [INDEX.pack(i) for i in range(1, 8)]
            if lossless:
                with pytest.raises(shmq.Full):  # the group has not taken message 0
                    p.publish(INDEX.pack(8), timeout=0)
                child.kill()
            else:
                child.kill()
                p.publish(INDEX.pack(8))  # overwrites message 0 before anyone takes it over
            # Lossless: message 0 comes again; lossy: message 8, and 0 is lost.
            received, deadline = [], time.monotonic() + 2
            while time.monotonic() < deadline and len(received) + b.lost < (1 if lossless else 2):
                received += b.poll_many(100, timeout=0.05)
            if lossless:
                assert received == [INDEX.pack(0)] and b.lost == 0
                p.publish(INDEX.pack(8), timeout=5)
                assert b.poll(timeout=1) == INDEX.pack(8)
            else:
                assert received == [INDEX.pack(8)] and b.lost == 1
            assert b.poll(timeout=0.2) is None


# --------------------------------------------------------------------- lossy

@pytest.mark.timeout(120)
def test_two_slow_members_of_a_lossy_group_receive_intact_messages_and_share_one_lost_count(
        queue, children, tmp_path):
    count = 20_000
    with shmq.Producer(queue, 64, 64) as p:
        readers = _start_readers(children, queue, tmp_path, ["slow", "slow"], batch=16, pause=0.002,
                                 check="pattern")
        for first in range(0, count, 32):
            p.publish_many([_pattern.make(i, 8 + i % 49) for i in range(first, first + 32)])
            time.sleep(0.001)
    results = _finish_readers(readers)
    (a, ra), (b, rb) = results
    assert ra["bad"] == rb["bad"] == 0
    assert ra["lost"] == rb["lost"], "the members of one group report different lost counts"
    lost = ra["lost"]
    assert lost > 0, "the members kept up: the scenario proves nothing"
    assert len(a) > 0 and len(b) > 0
    assert len(a) + len(b) + lost == count
    assert len(set(a) | set(b)) == len(a) + len(b), "a message reached both members"


@pytest.mark.parametrize("lossless", [False, True], ids=["lossy", "lossless"])
def test_a_producer_restart_keeps_the_group_and_its_split(queue, lossless):
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(shmq.Producer(queue, 16, 64, lossless=lossless))
        a = stack.enter_context(shmq.Consumer(queue, group="g"))
        b = stack.enter_context(shmq.Consumer(queue, group="g"))
        plain = stack.enter_context(shmq.Consumer(queue))
        first.publish_many([INDEX.pack(i) for i in range(10)])
        got = a.poll_many(3) + b.poll_many(3)
        first.close()
        assert a.ended and b.ended
        second = stack.enter_context(shmq.Producer(queue, 16, 64, lossless=lossless))
        assert second.next_sequence == 10
        second.publish_many([INDEX.pack(i) for i in range(10, 20)])
        assert not a.ended and not b.ended
        while True:
            more = a.poll_many(3) + b.poll_many(3)
            if not more:
                break
            got += more
        assert got == [INDEX.pack(i) for i in range(20)]
        assert plain.poll_many(100) == [INDEX.pack(i) for i in range(20)]
        assert a.lost == b.lost == plain.lost == 0


def test_an_overrun_lossy_group_counts_what_it_missed_once_for_all_members(queue):
    with shmq.Producer(queue, 16, 8) as p, \
            shmq.Consumer(queue, group="g") as a, shmq.Consumer(queue, group="g") as b:
        p.publish_many([INDEX.pack(i) for i in range(40)])
        got = []
        while True:
            more = a.poll_many(2) + b.poll_many(3)
            if not more:
                break
            got += more
        indices = [INDEX.unpack(m)[0] for m in got]
        assert a.lost == b.lost > 0
        assert len(indices) + a.lost == 40
        assert len(set(indices)) == len(indices) and indices[-1] == 39


# ------------------------------------------------------------- member calls

@pytest.fixture(params=[False, True], ids=["lossy", "lossless"])
def pair(request, queue):
    """A producer (capacity 64) and two members a, b of group "g"."""
    with shmq.Producer(queue, 64, 64, lossless=request.param) as p, \
            shmq.Consumer(queue, group="g") as a, shmq.Consumer(queue, group="g") as b:
        yield p, a, b


def _messages(first, count):
    return [b"message %d" % i for i in range(first, first + count)]


def test_poll_by_either_member_takes_the_next_message_of_the_group(pair):
    p, a, b = pair
    p.publish_many(_messages(0, 6))
    assert [m.poll() for m in (a, b, b, a, b, a)] == _messages(0, 6)
    assert a.poll() is None and b.poll() is None
    p.publish(b"late")
    assert b.poll(timeout=1) == b"late" and a.poll() is None


def test_poll_many_and_poll_many_into_claim_disjoint_batches(pair):
    p, a, b = pair
    p.publish_many(_messages(0, 10))
    assert a.poll_many(2) == _messages(0, 2)
    assert b.poll_many(3) == _messages(2, 3)
    buf = bytearray(1024)
    lengths = a.poll_many_into(buf, 2)
    assert bytes(buf[:sum(lengths)]) == b"".join(_messages(5, 2))
    assert b.poll_many(100) == _messages(7, 3)
    assert a.poll_many(100) == [] and a.poll_many_into(buf) == []


def test_poll_into_fills_each_members_buffer_with_a_different_message(pair):
    p, a, b = pair
    p.publish_many(_messages(0, 4))
    got = []
    for member in (b, a, a, b):
        buf = bytearray(64)
        n = member.poll_into(buf)
        got.append(bytes(buf[:n]))
    assert got == _messages(0, 4)
    assert a.poll_into(bytearray(64)) is None and b.poll_into(bytearray(64)) is None


def test_views_open_in_two_members_at_once_hold_different_messages(pair):
    p, a, b = pair
    p.publish_many(_messages(0, 3))
    with a.view() as va, b.view() as vb:
        assert isinstance(va, memoryview) and isinstance(vb, memoryview)
        assert (bytes(va), bytes(vb)) == tuple(_messages(0, 2))
    with b.view() as vb:
        assert bytes(vb) == b"message 2"
    with a.view() as va, b.view(timeout=0.05) as vb:
        assert va is None and vb is None


def test_iterating_two_members_in_turn_splits_the_stream_and_both_stop_at_its_end(pair):
    p, a, b = pair
    p.publish_many(_messages(0, 7))
    p.close()
    its, got = [iter(a), iter(b)], []
    for k in range(7):
        got.append(next(its[k % 2]))
    assert got == _messages(0, 7)
    for it in its:
        with pytest.raises(StopIteration):
            next(it)


def test_poll_async_and_async_for_split_a_stream_between_members_in_one_loop(pair):
    p, a, b = pair

    async def main():
        p.publish_many(_messages(0, 2))
        first = [await a.poll_async(timeout=1), await b.poll_async(timeout=1)]
        assert first == _messages(0, 2)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, p.publish, b"message 2")
        assert await b.poll_async(timeout=5) == b"message 2"  # it waited, and woke
        assert await a.poll_async(timeout=0.05) is None

        async def publish():
            for m in _messages(3, 200):
                p.publish(m, timeout=5)
                await asyncio.sleep(0.0005)
            p.close()

        async def drain(member):
            return [m async for m in member]

        got = await asyncio.gather(drain(a), drain(b), publish())
        return got[0], got[1]

    got_a, got_b = asyncio.run(asyncio.wait_for(main(), 30))
    assert sorted(got_a + got_b, key=lambda m: int(m.split()[1])) == _messages(3, 200)
    assert len(set(got_a) | set(got_b)) == 200


def test_fileno_readiness_is_a_hint_for_members_and_select_drives_them(pair):
    p, a, b = pair
    by_fd = {a.fileno(): a, b.fileno(): b}
    assert a.poll() is None and b.poll() is None
    assert select.select(list(by_fd), [], [], 0.05)[0] == []
    p.publish(b"only")
    ready = select.select(list(by_fd), [], [], 2)[0]
    assert ready, "no member's descriptor became readable"
    got = [by_fd[fd].poll() for fd in ready] + [a.poll(), b.poll()]
    assert sorted(m for m in got if m is not None) == [b"only"]  # one member took it; the other found None

    p.publish_many(_messages(0, 50))
    received, deadline = [], time.monotonic() + 10
    while len(received) < 50 and time.monotonic() < deadline:
        for fd in select.select(list(by_fd), [], [], 1)[0]:
            received += by_fd[fd].poll_many(7)
    assert sorted(received, key=lambda m: int(m.split()[1])) == _messages(0, 50)


def test_wait_any_over_members_and_a_plain_consumer(pair, queue):
    p, a, b = pair
    with shmq.Consumer(queue) as plain:
        assert a.poll() is None and b.poll() is None and plain.poll() is None
        assert shmq.wait_any([a, b, plain], timeout=0.05) == []
        p.publish_many(_messages(0, 30))
        by_group, by_plain, deadline = [], [], time.monotonic() + 10
        while (len(by_group) < 30 or len(by_plain) < 30) and time.monotonic() < deadline:
            for c in shmq.wait_any([a, b, plain], timeout=1):
                (by_plain if c is plain else by_group).extend(c.poll_many(4))
        assert by_plain == _messages(0, 30)
        assert sorted(by_group, key=lambda m: int(m.split()[1])) == _messages(0, 30)


# ------------------------------------------------------------ joining a group

def test_later_members_continue_from_the_group_position_whatever_their_start(queue):
    with shmq.Producer(queue, 64, 64) as p:
        p.publish_many(_messages(0, 10))
        with shmq.Consumer(queue, start="earliest", group="g") as a:
            assert a.poll_many(3) == _messages(0, 3)
            with shmq.Consumer(queue, start="latest", group="g") as b, \
                    shmq.Consumer(queue, start=0, group="g") as c:
                assert b.poll() == b"message 3"
                assert c.poll() == b"message 4"
                got = a.poll_many(2) + b.poll_many(2) + c.poll_many(10)
                assert got == _messages(5, 5)
                assert a.poll() is None and b.poll() is None and c.poll() is None


def test_a_group_whose_members_all_closed_starts_afresh_at_the_next_members_start(queue):
    with shmq.Producer(queue, 64, 64) as p:
        p.publish_many(_messages(0, 10))
        with shmq.Consumer(queue, start="earliest", group="g") as a, \
                shmq.Consumer(queue, group="g") as b:
            assert a.poll() == b"message 0" and b.poll() == b"message 1"
        with shmq.Consumer(queue, start="latest", group="g") as fresh:
            assert fresh.poll() is None  # not message 2: the old group is gone
            p.publish(b"message 10")
            assert fresh.poll() == b"message 10"
        with shmq.Consumer(queue, start=4, group="g") as again:
            assert again.poll_many(3) == _messages(4, 3)


@pytest.mark.timeout(60)
def test_a_group_whose_only_member_was_killed_starts_afresh(queue, children):
    member = """
        import sys, time, shmq
        c = shmq.Consumer(sys.argv[1], start="earliest", group="g")
        print("ready", c.poll(), flush=True)
        time.sleep(600)
    """
    with shmq.Producer(queue, 64, 64) as p:
        p.publish_many(_messages(0, 5))
        child = children(member, queue)
        assert child.expect("ready") == "ready b'message 0'"
        child.kill()
        with shmq.Consumer(queue, start="latest", group="g") as fresh:
            assert fresh.poll() is None
            p.publish(b"message 5")
            assert fresh.poll() == b"message 5"
            assert fresh.lost == 0


# --------------------------------------------------------- names and limits

@pytest.mark.parametrize("group", ["", "a/b", "../x", "a b", "x" * 33, ".hidden", "-x", "_x", "caf\u00e9",
                                   "nul\0byte", "tab\t", "a:b"])
def test_an_invalid_group_name_is_a_value_error(queue, group):
    with shmq.Producer(queue, 16, 8):
        with pytest.raises(ValueError):
            shmq.Consumer(queue, group=group)


@pytest.mark.parametrize("group", [b"g", 1, ["g"], 1.5])
def test_a_group_name_that_is_not_a_str_is_a_type_error(queue, group):
    with shmq.Producer(queue, 16, 8):
        with pytest.raises(TypeError):
            shmq.Consumer(queue, group=group)


def test_register_false_with_a_group_is_a_value_error(queue):
    with shmq.Producer(queue, 16, 8):
        with pytest.raises(ValueError):
            shmq.Consumer(queue, group="g", register=False)


def test_group_names_of_one_to_32_allowed_characters_work_and_consumer_group_tells_them(queue):
    with shmq.Producer(queue, 16, 8) as p:
        names = ["x" * 32, "A", "9", "a.b-c_D"]
        with contextlib.ExitStack() as stack:
            members = [stack.enter_context(shmq.Consumer(queue, group=g)) for g in names]
            plain = stack.enter_context(shmq.Consumer(queue))
            assert [m.group for m in members] == names and plain.group is None
            p.publish(b"m")
            assert [m.poll() for m in members + [plain]] == [b"m"] * 5


def test_eight_groups_on_one_queue_each_see_every_message(queue):
    with shmq.Producer(queue, 64, 64) as p, contextlib.ExitStack() as stack:
        groups = [[stack.enter_context(shmq.Consumer(queue, group=f"g{k}")) for _ in range(2)]
                  for k in range(8)]
        p.publish_many(_messages(0, 40))
        for first, second in groups:
            got = []
            while True:
                more = first.poll_many(3) + second.poll_many(5)
                if not more:
                    break
                got += more
            assert got == _messages(0, 40)


def test_a_queue_holds_at_most_16_groups_and_a_closed_one_frees_its_place(queue):
    with shmq.Producer(queue, 16, 8) as p, contextlib.ExitStack() as stack:
        members = []
        with pytest.raises(shmq.TooManyConsumers):
            for k in range(17):
                members.append(stack.enter_context(shmq.Consumer(queue, group=f"g{k}")))
        assert 8 <= len(members) <= 16, len(members)
        members.pop().close()
        members.append(stack.enter_context(shmq.Consumer(queue, group="another")))
        p.publish(b"m")
        assert [m.poll() for m in members] == [b"m"] * len(members)


def test_a_group_holds_at_most_128_members(queue):
    with shmq.Producer(queue, 16, 8, max_consumers=160) as p, contextlib.ExitStack() as stack:
        members = [stack.enter_context(shmq.Consumer(queue, group="big")) for _ in range(128)]
        with pytest.raises(shmq.TooManyConsumers):
            shmq.Consumer(queue, group="big")
        members.pop().close()
        members.append(stack.enter_context(shmq.Consumer(queue, group="big")))
        p.publish_many(_messages(0, 3))
        got = [m for member in members for m in member.poll_many(10)]
        assert got == _messages(0, 3)


def test_the_signature_and_the_stub_name_the_group_keyword_and_property():
    group = inspect.signature(shmq.Consumer).parameters.get("group")
    assert group is not None, f"inspect.signature(shmq.Consumer) = {inspect.signature(shmq.Consumer)}"
    assert group.kind is inspect.Parameter.KEYWORD_ONLY and group.default is None
    tree = ast.parse((ROOT / "shmq" / "__init__.pyi").read_text())
    consumer = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Consumer")
    methods = {node.name: node for node in consumer.body if isinstance(node, ast.FunctionDef)}
    assert "group" in [arg.arg for arg in methods["__new__"].args.kwonlyargs], "the stub's Consumer() has no group"
    assert "group" in methods, "the stub has no Consumer.group"

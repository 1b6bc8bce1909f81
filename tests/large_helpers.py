"""Records and child-process roles for tests/test_large_messages.py.

A record is a 16-byte header (sequence number, body length, CRC32 of the
body) and a body cut from a pool of seeded random bytes at an offset that
depends on the sequence number, so no two records share their bytes at the
same places and a misplaced, stale or torn byte fails the CRC.

Run as a script (`python large_helpers.py ROLE ARGS...`) it plays one role
of a scenario, in its own process, with the working tree's shmq; each role
says "ready" (or "open") once its queue handle is open and reports on stdout.
"""
import array
import json
import random
import struct
import sys
import time
import zlib

HEAD = struct.Struct("<QII")  # sequence, body length, crc32(body)
POOL_BYTES = 5 << 20
END = b"end of stream"  # the body of the record that ends a kill scenario
KiB, MiB = 1 << 10, 1 << 20


def pool(seed: int = 0) -> memoryview:
    """POOL_BYTES of random bytes, the same for the same seed in every process."""
    return memoryview(random.Random(seed).randbytes(POOL_BYTES))


def body(source: memoryview, seq: int, n: int) -> memoryview:
    """The body of record `seq`, n bytes long (at most POOL_BYTES)."""
    start = (seq * 0x9E3779B1) % (len(source) - n + 1)
    return source[start:start + n]


def fill(buf, seq: int, source: memoryview) -> None:
    """Writes record `seq` into the whole of a writable buffer (at least 16 bytes)."""
    out = memoryview(buf)
    part = body(source, seq, len(out) - HEAD.size)
    out[HEAD.size:] = part
    HEAD.pack_into(out, 0, seq, len(part), zlib.crc32(part))


def make(seq: int, size: int, source: memoryview) -> bytes:
    """Record `seq`, size bytes long (size >= 16)."""
    out = bytearray(size)
    fill(out, seq, source)
    return bytes(out)


def make_end(seq: int) -> bytes:
    return HEAD.pack(seq, len(END), zlib.crc32(END)) + END


def check(msg) -> int:
    """The record's sequence number, or -1 if its length or any body byte is wrong."""
    if len(msg) < HEAD.size:
        return -1
    seq, length, crc = HEAD.unpack_from(msg)
    if length != len(msg) - HEAD.size or zlib.crc32(memoryview(msg)[HEAD.size:]) != crc:
        return -1
    return seq


def is_end(msg) -> bool:
    return bytes(memoryview(msg)[HEAD.size:]) == END


# ------------------------------------------------------------------ roles


def _say(*words):
    print(*words, flush=True)


def lossless_reader(name, mode, count, max_size):
    """Reads `count` records in order from 0 (mode poll_many, view or into)
    and reports {received, lost, bad, first_bad, largest}."""
    import shmq
    count, max_size = int(count), int(max_size)
    c = shmq.Consumer(name, start="earliest")
    _say("ready", c.registered, c.max_message_size)
    expect = bad = largest = 0
    first_bad = None
    buf = bytearray(max_size)

    def take(msg):
        nonlocal expect, bad, largest, first_bad
        if check(msg) != expect:
            bad += 1
            first_bad = expect if first_bad is None else first_bad
        largest = max(largest, len(msg))
        expect += 1

    while expect < count:
        if mode == "poll_many":
            got = c.poll_many(16, timeout=20)
            if not got:
                break
            for msg in got[:count - expect]:  # what comes after `count` is not ours
                take(msg)
        elif mode == "view":
            with c.view(timeout=20) as msg:
                if msg is None:
                    break
                take(msg)
        else:
            n = c.poll_into(buf, timeout=20)
            if n is None:
                break
            take(memoryview(buf)[:n])
    _say(json.dumps(dict(received=expect, lost=c.lost, bad=bad, first_bad=first_bad,
                         largest=largest)))
    c.close()


def _open_producer(name, geometry):
    """Creates queue `name` from "SLOT,CAPACITY,MAX_MESSAGE_SIZE,LOSSLESS" (or attaches to it)."""
    import shmq
    slot, capacity, largest, lossless = map(int, geometry.split(","))
    return shmq.Producer(name, slot, capacity, max_message_size=largest, lossless=bool(lossless))


def fast_producer(name, geometry, count, seed, low, high, burst, pause):
    """Creates the queue (_open_producer), says "open", waits for a line,
    then publishes `count` records (0: until killed) of low..high bytes,
    sleeping `pause` s after every `burst` of them; says "done N" and waits
    for a line."""
    count, low, high, burst, pause = int(count), int(low), int(high), int(burst), float(pause)
    rng, source = random.Random(int(seed)), pool(int(seed))
    p = _open_producer(name, geometry)
    _say("open", p.next_sequence)
    sys.stdin.readline()
    seq = p.next_sequence
    while count == 0 or seq < count:
        with p.loan(rng.randint(low, high)) as buf:
            fill(buf, seq, source)
        seq += 1
        if seq % burst == 0 and pause:
            time.sleep(pause)
    _say("done", seq)
    sys.stdin.readline()
    p.close()


def killed_producer(name, seed, how):
    """Continues queue `name` with large records until killed. how=random:
    loans written in 64 KiB steps with short sleeps (so a kill at a random
    time most likely lands inside a record), and publish() now and then;
    how=midloan: three whole records, then a loan left half-written, saying
    "writing SEQ" in the middle of it."""
    import shmq
    rng, source = random.Random(int(seed)), pool(int(seed) % 4)
    p = shmq.Producer(name)
    _say("open", p.next_sequence)
    step = 64 * KiB
    whole = 0
    while True:
        seq = p.next_sequence
        size = rng.randint(256 * KiB, 2 * MiB)
        if how == "random" and rng.random() < 0.3:
            p.publish(make(seq, size, source))
            continue
        record = make(seq, size, source)
        with p.loan(size) as buf:
            for off in range(0, size, step):
                buf[off:off + step] = record[off:off + step]
                if how == "midloan" and whole == 3 and off >= size // 2:
                    _say("writing", seq)
                    time.sleep(60)
                time.sleep(0.0003)
        whole += 1


def kill_reader(name, mode, out, register="1"):
    """Reads a lossy queue, or a lossless one unregistered (register=0), in
    mode poll or view from sequence 0 until the END record; writes "seq crc"
    per record it accepted to `out` and reports {received, lost, position,
    bad, misplaced, last}."""
    import shmq
    c = shmq.Consumer(name, start="earliest", register=register == "1")
    _say("ready", c.position)
    lines, bad, misplaced, last = [], 0, 0, -1
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with c.view(timeout=0.1) if mode == "view" else _polled(c) as msg:
                if msg is None:
                    continue
                seq = check(msg)
                crc = HEAD.unpack_from(msg)[2] if seq >= 0 else None
                end = seq >= 0 and is_end(msg)
        except shmq.Overwritten:
            continue
        if seq < 0:
            bad += 1
            continue
        misplaced += seq != c.position - 1 or seq <= last
        last = seq
        lines.append(f"{seq} {crc}")
        if end:
            break
    with open(out, "w") as f:
        f.write("\n".join(lines))
    _say(json.dumps(dict(received=len(lines), lost=c.lost, position=c.position, bad=bad,
                         misplaced=misplaced, last=last)))
    c.close()


class _polled:
    """poll() dressed as a view, so kill_reader has one loop for both modes."""

    def __init__(self, consumer):
        self.msg = consumer.poll(timeout=0.1)

    def __enter__(self):
        return self.msg

    def __exit__(self, *exc):
        return False


def group_member(name, group, mode, out, max_size, pause="0"):
    """A member of `group`: reads until the stream ended and nothing came for
    0.4 s (mode poll_many, view or into; sleeping `pause` s after each read),
    checks every record, writes the sequences it received to `out` (u64) and
    reports {received, lost, bad, largest}."""
    import shmq
    pause = float(pause)
    c = shmq.Consumer(name, start="earliest", group=group)
    _say("ready", c.group, c.max_message_size)
    got, bad, largest, quiet_since = array.array("Q"), 0, 0, None
    buf = bytearray(int(max_size))

    def tally(seq, size):
        nonlocal bad, largest
        if seq < 0:
            bad += 1
        else:
            got.append(seq)
        largest = max(largest, size)

    def take(msg):
        tally(check(msg), len(msg))

    while True:
        n = 0
        if mode == "poll_many":
            for msg in c.poll_many(4, timeout=0.05):
                take(msg)
                n += 1
        elif mode == "view":
            try:
                with c.view(timeout=0.05) as msg:
                    if msg is not None:
                        seq, size = check(msg), len(msg)
                        n += 1
            except shmq.Overwritten:  # lossy: counted in lost, its bytes discarded
                continue
            if n:  # accepted only once the view ended cleanly
                tally(seq, size)
        else:
            length = c.poll_into(buf, timeout=0.05)
            if length is not None:
                take(memoryview(buf)[:length])
                n += 1
        if n:
            quiet_since = None
            if pause:
                time.sleep(pause)
        elif c.ended:
            now = time.monotonic()
            quiet_since = quiet_since or now
            if now - quiet_since > 0.4:
                break
    with open(out, "wb") as f:
        got.tofile(f)
    _say("drained", len(got))
    sys.stdin.readline()
    _say(json.dumps(dict(received=len(got), lost=c.lost, bad=bad, largest=largest)))
    c.close()


def late_publisher(name, geometry, delay, *sizes):
    """Creates the queue (_open_producer), says "open", waits for a line,
    sleeps `delay` s, then publishes records 0.. of the given sizes and says "done"."""
    source = pool(9)
    p = _open_producer(name, geometry)
    _say("open")
    sys.stdin.readline()
    time.sleep(float(delay))
    for seq, size in enumerate(map(int, sizes)):
        p.publish(make(seq, size, source))
    _say("done")
    sys.stdin.readline()
    p.close()


def view_holder(name):
    """Opens a consumer from the earliest message, enters a view of it, says
    "holding SEQ LENGTH" and sleeps inside the view until killed."""
    import shmq
    c = shmq.Consumer(name, start="earliest")
    with c.view(timeout=20) as msg:
        _say("holding", check(msg), len(msg))
        time.sleep(600)


ROLES = {f.__name__: f for f in (lossless_reader, fast_producer, killed_producer, kill_reader,
                                 group_member, late_publisher, view_holder)}

if __name__ == "__main__":
    ROLES[sys.argv[1]](*sys.argv[2:])

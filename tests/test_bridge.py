"""shmq bridge: a queue carried over Zenoh, with sequence and loss counted end to end.

Every scenario runs real `python -m shmq.bridge` processes over TCP on
loopback (or across two network namespaces), with multicast scouting off, so
nothing leaves the machine. Every process is killed, every queue and status
file removed, every namespace deleted, whatever happens.
"""
import itertools
import logging
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import shmq

zenoh = pytest.importorskip("zenoh", reason="the bridge needs eclipse-zenoh (pip install 'shmq[bridge]')")

from shmq import bridge  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
_counter = itertools.count()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _payload(i):
    """Message i: its number, then bytes that depend on it (checked on arrival)."""
    word = (i * 2654435761) & 0xFFFFFFFF
    return i.to_bytes(8, "little") + word.to_bytes(4, "little") * 6


def _check(msg):
    i = int.from_bytes(msg[:8], "little")
    assert msg == _payload(i), f"message {i} corrupt"
    return i


class Rig:
    """Queue names, bridge processes and namespaces of one test, all cleaned up."""

    def __init__(self):
        self.queues, self.procs, self.namespaces, self.links = [], [], [], []
        self.logs = tempfile.TemporaryDirectory(prefix="shmq-bridge-test-")

    def queue(self):
        name = f"pytest-bridge-{os.getpid()}-{next(_counter)}"
        self.queues.append(name)
        return name

    def bridge(self, *args, netns=None):
        log = open(os.path.join(self.logs.name, f"{len(self.procs)}.err"), "w+")
        cmd = [sys.executable, "-m", "shmq.bridge", *args]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=log)
        proc.log = log
        self.procs.append(proc)
        return proc

    @staticmethod
    def stderr(proc):
        proc.log.seek(0)
        return proc.log.read()

    def stop(self, proc, sig=signal.SIGTERM, timeout=10):
        proc.send_signal(sig)
        return proc.wait(timeout)

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            proc.log.close()
        for name in self.queues:
            try:
                shmq.unlink(name, force=True)
            except shmq.QueueNotFound:
                pass
            bridge.remove_status(name)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        self.logs.cleanup()


@pytest.fixture
def rig():
    r = Rig()
    try:
        yield r
    finally:
        r.close()


def _attach(name, timeout=20, probe=None):
    """A consumer of name from its beginning, once its producer has made it.

    With probe (a Producer at the source), publish a probe now and then, for a
    far queue made only when the first sample arrives.
    """
    deadline = time.monotonic() + timeout
    while True:
        if probe is not None:
            probe.publish(b"warm")
        try:
            return shmq.Consumer(name, start="earliest")
        except (shmq.QueueNotFound, shmq.IncompatibleQueue):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _warm_up(producer, far, timeout=30):
    """Publish a probe until one arrives on the far side; return its source sequence.

    The far side counts loss from the first message it sees, so the checks
    below count published messages from there on.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seq = producer.publish(b"warm")
        msg = far.poll(0.1)
        if msg is not None:
            while far.poll(0.3) is not None:
                pass
            return seq
    raise AssertionError("nothing came across the bridge")


def _drain(far, until_idle=3.0, deadline=60):
    """Every message that arrives until the far queue is quiet for until_idle seconds."""
    got = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        msg = far.poll(until_idle)
        if msg is None:
            break
        if msg != b"warm":
            got.append(_check(msg))
    return got


def _status(name, want, timeout=5):
    """The far status once it shows `want` messages received (it is rewritten every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        s = bridge.status(name)
        if (s and s["received"] >= want) or time.monotonic() > deadline:
            return s
        time.sleep(0.1)


def _pair(rig, src, dst, *, out_host="127.0.0.1", in_ns=None, in_args=()):
    port = _free_port()
    out = rig.bridge("out", src, "--key", f"test/bridge/{src}", "--listen", f"tcp/{out_host}:{port}",
                     "--start", "earliest")
    in_cmd = ("in", f"test/bridge/{src}", "--to", dst, "--connect", f"tcp/{out_host}:{port}", *in_args)
    inp = rig.bridge(*in_cmd, netns=in_ns)
    return out, inp, in_cmd


# ---------------------------------------------------------------- loopback

@pytest.mark.timeout(120)
def test_100k_messages_cross_loopback_in_order_with_content_verified_and_nothing_lost(rig):
    src, dst = rig.queue(), rig.queue()
    n = 100_000
    with shmq.Producer(src, slot_size=64, capacity=1 << 17) as p:
        out, inp, _ = _pair(rig, src, dst, in_args=("--slot-size", "64", "--capacity", str(1 << 17)))
        with _attach(dst) as far:
            _warm_up(p, far)
            for start in range(0, n, 1000):
                p.publish_many([_payload(i) for i in range(start, start + 1000)])
            got = _drain(far)
            assert got == list(range(n))
            assert far.lost == 0
            s = _status(dst, n)
            assert (s["source_lost"], s["transit_lost"], s["too_large"]) == (0, 0, 0)
            assert rig.stop(out) == 0 and rig.stop(inp) == 0
            assert "forwarded" in rig.stderr(out) and "Traceback" not in rig.stderr(out)


@pytest.mark.timeout(120)
def test_a_lapped_source_bridge_is_counted_exactly_on_the_far_side(rig):
    src, dst = rig.queue(), rig.queue()
    n = 100_000
    with shmq.Producer(src, slot_size=64, capacity=16) as p:
        out, inp, _ = _pair(rig, src, dst, in_args=("--slot-size", "64", "--capacity", str(1 << 17)))
        with _attach(dst, probe=p) as far:   # made with the slot size bridge in was given
            assert far.slot_size == 64
            first = _warm_up(p, far)
            for start in range(0, n, 1000):
                p.publish_many([_payload(i) for i in range(start, start + 1000)])
            published = p.next_sequence - first - 1   # after the probe that arrived
            got = _drain(far)
            assert got == sorted(set(got)), "out of order or repeated"
            assert far.lost == 0
            assert rig.stop(out) == 0
            # The out side says how much its consumer lost: the far side must agree.
            line = [l for l in rig.stderr(out).splitlines() if "source_lost" in l][-1]
            out_lost = int(line.rsplit(" ", 1)[1])
            s = _status(dst, len(got) + 1)
            assert out_lost > 0
            assert s["source_lost"] == out_lost
            assert s["transit_lost"] == 0
            assert len(got) + s["source_lost"] + s["transit_lost"] == published


@pytest.mark.timeout(60)
def test_forwarder_and_receiver_embed_in_threads_with_counters_as_attributes(rig):
    src, dst = rig.queue(), rig.queue()
    port = _free_port()
    with shmq.Producer(src, slot_size=128, capacity=4096) as p:
        fwd = bridge.forward(src, "test/bridge/embed", listen=f"tcp/127.0.0.1:{port}", start="earliest",
                             batch=64, linger_us=200)
        rcv = bridge.receive("test/bridge/embed", dst, connect=f"tcp/127.0.0.1:{port}",
                             slot_size=128, capacity=4096, status_file=False)
        threads = [threading.Thread(target=b.run) for b in (fwd, rcv)]
        for t in threads:
            t.start()
        try:
            with shmq.Consumer(dst, start="earliest") as far:
                _warm_up(p, far)
                # Probes sent before the receiver subscribed are forwarded
                # and never received (loss counts from the first sample it
                # sees): count from here on.
                forwarded, received = fwd.forwarded, rcv.received
                for i in range(1000):
                    p.publish(_payload(i))
                assert _drain(far, until_idle=1.0) == list(range(1000))
        finally:
            fwd.close()
            rcv.close()
            for t in threads:
                t.join(10)
        assert not any(t.is_alive() for t in threads)
        assert fwd.forwarded - forwarded == rcv.received - received == 1000
        assert rcv.received >= 1001
        assert (rcv.source_lost, rcv.transit_lost, fwd.source_lost) == (0, 0, 0)
        assert fwd.samples < fwd.forwarded, "small messages were not batched"
        assert bridge.status(dst) is None


def _paced(producer, stop, rate=20_000, burst=100):
    """Publish numbered messages at about rate per second until stop is set."""
    i = 0
    t0 = time.monotonic()
    while not stop.is_set():
        producer.publish_many([_payload(j) for j in range(i, i + burst)])
        i += burst
        ahead = i / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    return i


def _restart_in_midstream(rig, src, dst, out_host="127.0.0.1", in_ns=None):
    with shmq.Producer(src, slot_size=64, capacity=1 << 16) as p:
        out, inp, in_cmd = _pair(rig, src, dst, out_host=out_host, in_ns=in_ns,
                                 in_args=("--slot-size", "64", "--capacity", str(1 << 17)))
        with _attach(dst, probe=p) as far:
            first = _warm_up(p, far)
            stop = threading.Event()
            result = []
            pacer = threading.Thread(target=lambda: result.append(_paced(p, stop)))
            pacer.start()
            try:
                time.sleep(1.0)
                inp.kill()                    # no goodbye: the far producer dies holding the queue
                inp.wait(10)
                time.sleep(0.5)
                inp = rig.bridge(*in_cmd, netns=in_ns)
                time.sleep(2.5)
            finally:
                stop.set()
                pacer.join(30)
            published = p.next_sequence - first - 1
            got = _drain(far)
            assert got == sorted(set(got)), "out of order or repeated"
            assert far.lost == 0
            s = _status(dst, len(got) + 1)
            assert s["transit_lost"] > 0, "the restart's gap was not counted"
            assert len(got) + s["source_lost"] + s["transit_lost"] == published
            assert got[-1] == result[0] - 1, "the stream did not resume"
            assert rig.stop(inp) == 0 and rig.stop(out) == 0
        with shmq.Consumer(dst, register=False) as look:
            assert look.ended and not look.producer_alive, "bridge in left its producer open"


@pytest.mark.timeout(120)
def test_bridge_in_killed_and_restarted_counts_the_gap_and_the_stream_resumes(rig):
    _restart_in_midstream(rig, rig.queue(), rig.queue())


# ---------------------------------------------------------------- two namespaces

def _veth_namespace(rig):
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = f"{os.getpid() % 100000}{next(_counter)}"
    ns, host_if, ns_if = f"shmqbr{tag}", f"sqh{tag}", f"sqn{tag}"
    net = 10 + os.getpid() % 200
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
        ["ip", "link", "set", ns_if, "netns", ns],
        ["ip", "addr", "add", f"10.{net}.77.1/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "netns", "exec", ns, "ip", "addr", "add", f"10.{net}.77.2/30", "dev", ns_if],
        ["ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up"],
        ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
    ]
    for i, cmd in enumerate(steps):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            pytest.skip("no `ip` command (apt-get install iproute2)")
        if i == 0 and done.returncode == 0:
            rig.namespaces.append(ns)
        if i == 1 and done.returncode == 0:
            rig.links.append(host_if)
        if done.returncode != 0:
            pytest.skip(f"cannot set up a network namespace here: {done.stderr.strip()}")
    return ns, f"10.{net}.77.1"


@pytest.mark.timeout(180)
def test_across_two_network_namespaces_over_veth_with_a_restart_of_bridge_in(rig):
    ns, host_addr = _veth_namespace(rig)
    _restart_in_midstream(rig, rig.queue(), rig.queue(), out_host=host_addr, in_ns=ns)


# ---------------------------------------------------------------- failures

def _fails(rig, *args, code):
    proc = rig.bridge(*args, "-q")
    assert proc.wait(30) == code
    err = rig.stderr(proc)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.timeout(60)
def test_a_bad_endpoint_is_one_line_and_exit_2(rig):
    err = _fails(rig, "in", "test/bridge/x", "--to", rig.queue(), "--connect", "foo/1.2.3.4:7447", code=2)
    assert "bad endpoint 'foo/1.2.3.4:7447'" in err
    err = _fails(rig, "out", rig.queue(), "--key", "a/b", "--connect", "tcp/127.0.0.1:99999", code=2)
    assert "bad endpoint" in err


@pytest.mark.timeout(60)
def test_a_bad_key_expression_is_one_line_and_exit_2(rig):
    err = _fails(rig, "out", rig.queue(), "--key", "a//b", code=2)
    assert "bad key expression 'a//b'" in err


@pytest.mark.timeout(60)
def test_a_missing_queue_after_the_wait_is_one_line_and_exit_1(rig):
    name = rig.queue()
    t0 = time.monotonic()
    err = _fails(rig, "out", name, "--key", "test/bridge/missing", "--wait", "0.5", code=1)
    assert f"no queue {name!r}" in err
    assert time.monotonic() - t0 < 20


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_bridge_in_cleanly_and_closes_its_producer(rig, sig):
    dst = rig.queue()
    port = _free_port()
    inp = rig.bridge("in", "test/bridge/sig", "--to", dst, "--listen", f"tcp/127.0.0.1:{port}",
                     "--slot-size", "64", "--capacity", "64")
    with _attach(dst) as far:
        deadline = time.monotonic() + 20
        while not far.producer_alive and time.monotonic() < deadline:
            time.sleep(0.05)
        assert far.producer_alive
        time.sleep(0.3)   # past set-up: the signal handler is in place
        assert rig.stop(inp, sig) == 0
        assert far.ended and not far.producer_alive
    assert "Traceback" not in rig.stderr(inp)
    assert bridge.status(dst)["pid"] == inp.pid


# ---------------------------------------------------------------- forged samples

def _sample(stream, first, messages, *, lost=0, slot=64, capacity=1024, magic=bridge.MAGIC,
            version=bridge.VERSION, count=None, lengths=None):
    """A sample in the wire format, every field of which a test may set."""
    lengths = [len(m) for m in messages] if lengths is None else lengths
    head = bridge.HEADER.pack(magic, version, 0, len(lengths) if count is None else count,
                              stream, first, lost, slot, capacity)
    return head + struct.pack(f"<{len(lengths)}I", *lengths) + b"".join(messages)


class Forger:
    """Anyone on the Zenoh network: publishes whatever bytes a test builds on a key."""

    def __init__(self, key, port):
        self.session = bridge.open_session(connect=f"tcp/127.0.0.1:{port}")
        self.pub = self.session.declare_publisher(
            key, congestion_control=zenoh.CongestionControl.BLOCK)
        deadline = time.monotonic() + 20
        while not self.pub.matching_status.matching:
            assert time.monotonic() < deadline, "the receiver's subscription never arrived"
            time.sleep(0.02)

    def send(self, *samples):
        for s in samples:
            self.pub.put(s)

    def close(self):
        self.pub.undeclare()
        self.session.close()


@pytest.fixture
def forged(rig):
    """(Receiver in this process, Forger on its key, far queue name); all closed afterwards."""
    made = []

    def make(premade=None, **kwargs):
        dst, port = rig.queue(), _free_port()
        key = f"test/bridge/{dst}"
        if premade is not None:   # a far queue made beforehand, with these Producer arguments
            shmq.Producer(dst, **premade).close()
        kwargs.setdefault("status_file", False)
        rcv = bridge.receive(key, dst, listen=f"tcp/127.0.0.1:{port}", **kwargs)
        made.append(rcv)
        forger = Forger(key, port)
        made.append(forger)
        return rcv, forger, dst

    yield make
    for thing in reversed(made):
        thing.close()


def _settle(rcv, samples, timeout=20):
    """Wait until rcv has handled (taken or refused) `samples` samples in all."""
    deadline = time.monotonic() + timeout
    while rcv.samples + rcv.malformed < samples:
        assert time.monotonic() < deadline, f"{rcv.samples} + {rcv.malformed} of {samples} samples handled"
        time.sleep(0.01)


def _messages(n, tag=b"m"):
    return [tag + b"%06d" % i for i in range(n)]


@pytest.mark.timeout(60)
def test_a_forged_sample_cannot_choose_the_far_ring_geometry(forged):
    rcv, forger, dst = forged()   # no slot size or capacity: shmq's defaults, never the sample's
    with shmq.Consumer(dst, start="earliest") as far:
        assert (far.slot_size, far.capacity) == (1024, 8192), "the far queue waits for no sample"
        forger.send(_sample(7, 0, [b"x"], slot=1, capacity=1 << 16))
        forger.send(_sample(7, 1, [b"y" * 1000], slot=1000, capacity=1 << 16))
        _settle(rcv, 2)
        assert (far.slot_size, far.capacity) == (1024, 8192)
        assert far.poll(5) == b"x"
        assert rcv.malformed == 1, "a stream's second sample claimed another slot size"
    rcv2, forger2, dst2 = forged(slot_size=64, capacity=16, lossless=False)
    forger2.send(_sample(9, 0, [b"z"], slot=1 << 20, capacity=1 << 30))
    _settle(rcv2, 1)
    with shmq.Consumer(dst2, start="earliest") as far:
        assert (far.slot_size, far.capacity, far.lossless) == (64, 16, False)
        assert far.poll(5) == b"z"


@pytest.mark.timeout(60)
def test_malformed_and_implausible_samples_are_counted_and_change_nothing(forged):
    rcv, forger, dst = forged(slot_size=64, capacity=1024)
    real, at = 0x5EED, 1 << 41    # a stream far enough along to be forged behind as well as ahead
    forger.send(_sample(real, at - 3, _messages(3)))
    _settle(rcv, 1)
    bad = [
        b"SQ",                                                        # shorter than a header
        _sample(real, at, [b"a"], magic=0x1234),
        _sample(real, at, [b"a"], version=2),
        _sample(real, at, [], count=0),
        _sample(real, at, [b"a"], count=1000),                        # table past the end
        _sample(real, at, [b"a"], lengths=[5]),                       # lengths do not add up
        _sample(real, at, [b"a" * 65]),                               # longer than its slot_size
        _sample(real, at, [b"a"], slot=0),
        _sample(real, at, [b"a"], slot=shmq.SLOT_SIZE_MAX + 1),
        _sample(real, at, [b"a"], capacity=1000),                     # not a power of two
        _sample(real, at, [b"a"], capacity=shmq.CAPACITY_MAX * 2),
        _sample(real, at, [b"a"], slot=128),                          # the stream's geometry changed
        _sample(real, (1 << 64) - 1, [b"a", b"b"]),                   # past the end of sequences
        _sample(real, at, [b"a"], lost=at + 1),                       # lost more than came before
        _sample(real, at + (1 << 40), [b"a"]),                        # a jump beyond reach
        _sample(real, at - (1 << 40), [b"a"]),                        # and back
        _sample(0xF00, (1 << 64) - 10, [b"a"]),                       # a new stream beyond reach
        _sample(0xF01, at + (1 << 40), [b"a"], lost=1 << 39),
    ]
    forger.send(*bad)
    _settle(rcv, 1 + len(bad))
    forger.send(_sample(real, at, _messages(2, b"n")))
    _settle(rcv, 2 + len(bad))
    c = rcv.counters()
    assert c["malformed"] == len(bad)
    assert (c["samples"], c["received"], c["expected"]) == (2, 5, at + 2)
    assert (c["source_lost"], c["transit_lost"], c["resets"], c["duplicates"]) == (0, 0, 0, 0)
    with shmq.Consumer(dst, start="earliest") as far:
        assert [far.poll(5) for _ in range(5)] == _messages(3) + _messages(2, b"n")
        assert far.poll(0.2) is None


@pytest.mark.timeout(60)
def test_a_forged_stream_never_makes_the_real_one_count_loss(forged):
    rcv, forger, dst = forged(slot_size=64, capacity=1024)
    real = 0x5EED
    forger.send(_sample(real, 1_000_000, _messages(2)))
    forger.send(_sample(0xBAD, 5, [b"forged"]))           # behind: looks like the queue made anew
    forger.send(_sample(real, 1_000_002, _messages(2, b"n")))
    forger.send(_sample(0xBAD, 6, [b"forged again"]))
    forger.send(_sample(real, 1_000_004, _messages(1, b"o")))
    _settle(rcv, 5)
    c = rcv.counters()
    assert (c["source_lost"], c["transit_lost"], c["malformed"]) == (0, 0, 0)
    assert c["resets"] == 1, "only the first sample of the strange stream is a discontinuity"
    assert c["expected"] == 1_000_005
    # A real gap on either stream is still counted, on its own stream.
    forger.send(_sample(real, 1_000_010, [b"after a gap"], lost=4))
    _settle(rcv, 6)
    c = rcv.counters()
    assert (c["source_lost"], c["transit_lost"]) == (4, 1)


@pytest.mark.timeout(60)
def test_a_resent_stretch_of_a_stream_is_skipped_and_counted_as_duplicates(forged):
    rcv, forger, dst = forged(slot_size=64, capacity=1024)
    forger.send(_sample(1, 0, _messages(10)))
    forger.send(_sample(1, 6, _messages(10)[6:] + _messages(3, b"n")))   # 6..9 again, then 10..12
    _settle(rcv, 2)
    c = rcv.counters()
    assert (c["received"], c["duplicates"], c["transit_lost"], c["expected"]) == (13, 4, 0, 13)
    with shmq.Consumer(dst, start="earliest") as far:
        assert [far.poll(5) for _ in range(13)] == _messages(10) + _messages(3, b"n")


# ---------------------------------------------------------------- a far consumer that stops reading

def _stuck_far_queue(forger, far, n=40):
    """Send n messages to a lossless far queue of 16 slots whose consumer does not read."""
    forger.send(_sample(3, 0, _messages(n)))
    deadline = time.monotonic() + 20
    while far.backlog < 16:
        assert time.monotonic() < deadline, "the far queue never filled"
        time.sleep(0.01)
    time.sleep(0.3)   # bridge in now waits for room


@pytest.mark.timeout(60)
def test_close_stops_bridge_in_within_a_second_while_a_lossless_far_queue_is_full(forged):
    rcv, forger, dst = forged(premade=dict(slot_size=64, capacity=16, lossless=True))
    runner = threading.Thread(target=rcv.run)
    runner.start()
    with shmq.Consumer(dst, start="earliest") as far:   # registered: it holds bridge in back
        assert far.registered and far.lossless, "bridge in continues the lossless queue it found"
        _stuck_far_queue(forger, far)
        t0 = time.monotonic()
        closer = threading.Thread(target=rcv.close)
        closer.start()
        closer.join(5)
        took = time.monotonic() - t0
        assert not closer.is_alive(), "close() hung on a full far queue"
        runner.join(5)
        assert not runner.is_alive()
        print(f"close() took {took * 1000:.0f} ms")
        assert took < 1.0
        assert (rcv.received, rcv.dropped) == (16, 24), "what was given up is counted"
        assert far.backlog == 16


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_bridge_in_promptly_while_a_lossless_far_queue_is_full(rig, sig):
    dst, port = rig.queue(), _free_port()
    key = f"test/bridge/{dst}"
    inp = rig.bridge("in", key, "--to", dst, "--listen", f"tcp/127.0.0.1:{port}",
                     "--slot-size", "64", "--capacity", "16", "--lossless")
    with _attach(dst) as far:
        assert far.lossless and far.registered
        forger = Forger(key, port)
        try:
            _stuck_far_queue(forger, far)
            t0 = time.monotonic()
            assert rig.stop(inp, sig, timeout=10) == 0
            took = time.monotonic() - t0
        finally:
            forger.close()
        print(f"bridge in stopped {took * 1000:.0f} ms after the signal")
        # bridge in stops within a slice of 0.1 s (the test above); the rest is
        # the interpreter exiting on a busy machine.
        assert took < 3.0, "bridge in did not heed the signal"
        assert far.ended and not far.producer_alive
    s = bridge.status(dst)
    assert (s["received"], s["dropped"]) == (16, 24)
    assert "Traceback" not in rig.stderr(inp)


# ---------------------------------------------------------------- status files in sticky /dev/shm

def _status_file(name):
    return Path(bridge.SHM_DIR) / f"{shmq.NAME_PREFIX}{name}{bridge.STATUS_SUFFIX}"


@pytest.fixture
def planted():
    """Paths a test plants in /dev/shm, removed afterwards (a FIFO's reader is released first)."""
    paths = []
    yield paths
    for path in paths:
        if path.is_fifo():
            try:   # a reader blocked on it (the bug) gets a writer and goes on
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        try:
            path.unlink()
        except FileNotFoundError:
            pass


@pytest.mark.timeout(60)
def test_the_status_file_is_written_without_following_anything_planted(rig, planted, tmp_path):
    dst = rig.queue()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    # The names an attacker can predict: the status file itself, and the old
    # temporary name derived from it and the pid.
    for path in (_status_file(dst),
                 Path(bridge.SHM_DIR) / f".{shmq.NAME_PREFIX}{dst}{bridge.STATUS_SUFFIX}.{os.getpid()}"):
        path.symlink_to(victim)
        planted.append(path)
    rcv = bridge.receive(f"test/bridge/{dst}", dst, listen=f"tcp/127.0.0.1:{_free_port()}",
                         slot_size=64, capacity=16)
    rcv.close()   # writes the status file
    assert victim.read_text() == "precious"
    st = os.lstat(_status_file(dst))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert bridge.status(dst)["queue"] == dst
    assert not [f for f in os.listdir(bridge.SHM_DIR) if f.endswith(".tmp") and "bridge" in f]


_STATUS_PROBE = """
import sys, time
from shmq import bridge
t0 = time.monotonic()
got = bridge.status(sys.argv[1])
print(repr(got), round(time.monotonic() - t0, 3))
"""


def _status_in_child(name):
    """bridge.status(name) in a child process, which must answer within 20 s."""
    done = subprocess.run([sys.executable, "-c", _STATUS_PROBE, name], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(120)
def test_a_planted_link_fifo_foreign_or_huge_status_file_reads_as_none(rig, planted, tmp_path):
    real = tmp_path / "record.json"
    real.write_text('{"version": 1, "key": "k", "queue": "q", "received": 12345}')
    cases = {"link": lambda p: p.symlink_to(real),
             "fifo": lambda p: os.mkfifo(p, 0o600),
             "huge": lambda p: p.write_text('{"version": 1, "received": 12345}' + " " * 100_000),
             "dir": lambda p: p.mkdir()}
    if os.geteuid() == 0:
        def foreign(p):
            p.write_text('{"version": 1, "received": 12345}')
            os.chown(p, 65534, 65534)
        cases["foreign"] = foreign
    for what, plant in cases.items():
        name = rig.queue()
        path = _status_file(name)
        plant(path)
        planted.append(path)
        assert _status_in_child(name).startswith("None "), what
        if what == "dir":
            path.rmdir()
    # shmq stat reads it too: a FIFO there must not hang it.
    name = rig.queue()
    os.mkfifo(_status_file(name), 0o600)
    planted.append(_status_file(name))
    with shmq.Producer(name, slot_size=64, capacity=16):
        done = subprocess.run([sys.executable, "-m", "shmq", "stat", name], env=ENV, cwd=ROOT,
                              capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stdout.splitlines() if line.startswith("bridge")], done.stdout


@pytest.mark.timeout(60)
def test_bridge_in_restores_nothing_from_a_status_file_it_does_not_own(rig, planted, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    dst = rig.queue()
    key = f"test/bridge/{dst}"
    path = _status_file(dst)
    path.write_text(f'{{"version": 1, "key": "{key}", "queue": "{dst}", "received": 12345, '
                    f'"transit_lost": 999}}')
    os.chown(path, 65534, 65534)
    planted.append(path)
    rcv = bridge.receive(key, dst, listen=f"tcp/127.0.0.1:{_free_port()}", slot_size=64, capacity=16)
    try:
        assert (rcv.received, rcv.transit_lost) == (0, 0)
    finally:
        rcv.close()
    assert bridge.status(dst)["received"] == 0, "its own record replaced the planted one"


# ---------------------------------------------------------------- restarts of bridge out

@pytest.mark.timeout(180)
def test_bridge_out_killed_twice_continues_its_stream_and_nothing_arrives_twice(rig):
    src, dst = rig.queue(), rig.queue()
    port = _free_port()
    key = f"test/bridge/{src}"
    # bridge in listens, so that each new bridge out simply connects again.
    out_cmd = ("out", src, "--key", key, "--connect", f"tcp/127.0.0.1:{port}", "--start", "earliest")
    with shmq.Producer(src, slot_size=64, capacity=1 << 16) as p:
        inp = rig.bridge("in", key, "--to", dst, "--listen", f"tcp/127.0.0.1:{port}",
                         "--slot-size", "64", "--capacity", str(1 << 17))
        out = rig.bridge(*out_cmd)
        with _attach(dst) as far:
            first = _warm_up(p, far)
            stop = threading.Event()
            result = []
            pacer = threading.Thread(target=lambda: result.append(_paced(p, stop)))
            pacer.start()
            try:
                for _ in range(2):
                    time.sleep(1.0)
                    out.kill()                # no goodbye: its last position is up to 0.5 s old
                    out.wait(10)
                    time.sleep(0.3)
                    out = rig.bridge(*out_cmd)
                time.sleep(2.5)
            finally:
                stop.set()
                pacer.join(30)
            published = p.next_sequence - first - 1
            got = _drain(far)
            assert got == sorted(set(got)), "out of order or repeated"
            assert far.lost == 0
            s = _status(dst, len(got) + 1)
            print(f"received {len(got)} of {published}, duplicates skipped {s['duplicates']}, "
                  f"transit_lost {s['transit_lost']}")
            assert s["resets"] == 0, "a restarted bridge out started a new stream"
            assert len(got) + s["source_lost"] + s["transit_lost"] == published
            assert got[-1] == result[0] - 1, "the stream did not resume"
            assert rig.stop(out) == 0 and rig.stop(inp) == 0
    assert "continuing stream" in rig.stderr(out)
    assert f"forwarding queue {src} to key {key}" in rig.stderr(out)
    assert f"republishing key {key} into queue {dst}" in rig.stderr(inp)


# ---------------------------------------------------------------- logging

@pytest.mark.timeout(60)
def test_bridge_in_reports_loss_resets_and_malformed_samples_through_logging(forged, caplog):
    caplog.set_level(logging.INFO, logger="shmq.bridge")
    rcv, forger, dst = forged(slot_size=64, capacity=1024)
    runner = threading.Thread(target=rcv.run)
    runner.start()
    try:
        forger.send(_sample(1, 100, _messages(2)),
                    _sample(1, 110, [b"after a gap"], lost=3),      # 8 missing, 3 at the source
                    _sample(2, 5, [b"the queue made anew"]),
                    b"junk")
        _settle(rcv, 4)
    finally:
        rcv.close()
        runner.join(10)
    warnings = " | ".join(r.getMessage() for r in caplog.records
                          if r.name == "shmq.bridge" and r.levelno == logging.WARNING)
    assert "lost 8 messages (3 at the source, 5 in transit)" in warnings
    assert "1 resets" in warnings
    assert "1 malformed" in warnings

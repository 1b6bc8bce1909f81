"""shmq bridge: a queue carried over Zenoh, with sequence and loss counted end to end.

Every scenario runs real `python -m shmq.bridge` processes over TCP on
loopback (or across two network namespaces), with multicast scouting off, so
nothing leaves the machine. Every process is killed, every queue and status
file removed, every namespace deleted, whatever happens.
"""
import itertools
import os
import signal
import socket
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
        out, inp, _ = _pair(rig, src, dst, in_args=("--capacity", str(1 << 17)))
        with _attach(dst, probe=p) as far:   # made with the source's slot size
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
                for i in range(1000):
                    p.publish(_payload(i))
                assert _drain(far, until_idle=1.0) == list(range(1000))
        finally:
            fwd.close()
            rcv.close()
            for t in threads:
                t.join(10)
        assert not any(t.is_alive() for t in threads)
        assert fwd.forwarded == rcv.received and rcv.received >= 1001
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
                                 in_args=("--capacity", str(1 << 17)))
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

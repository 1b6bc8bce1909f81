"""Promises the binding keeps at its edges (issue 15), one scenario each.

Leases whose exit never runs, or that run exit without enter; loan buffers
that escape their with-block; a loan carried through fork(); poll_many meeting
an error after it consumed messages; owner ids past uid_t; pickled options;
publish_many stopped by a signal handler; the error for a queue opened in the
wrong mode; waiting for a queue to appear; `ended` for a consumer that came
after the end; shmq.inspect; and from issue 18: Full is a queue.Full, blocking
calls time out as documented, OSErrors carry errno and filename, and Ctrl-C
ends every blocking call within half a second.

Everything that could hang runs under a timeout, in a subprocess where a
signal or a FIFO is involved; every queue comes from a fixture that unlinks it.
"""
import errno
import gc
import mmap
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import shmq

# Children import the shmq this test runs against (the source tree, or the
# sanitizer build of scripts/test-all.sh pytest_asan).
PACKAGE_ROOT = str(Path(shmq.__file__).resolve().parent.parent)
ENV = {**os.environ,
       "PYTHONPATH": os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}


def ring_path(name):
    return f"/dev/shm/{shmq.NAME_PREFIX}{name}"


def spawn(code, *args):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def read_line(proc, timeout=30):
    """The child's next stdout line, or a failure (never a hang)."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        return proc.stdout.readline()
    finally:
        timer.cancel()


def corrupt_length(name, sequence):
    """Gives the index record of `sequence` an impossible length, as a
    vandal with write access to the ring could (offsets from
    csrc/shmq_layout.h: records from index_offset, the page size, 16 bytes
    apart if the flags say SHMQ_FLAG_SPANNING, else slot_stride)."""
    with open(ring_path(name), "r+b") as f, mmap.mmap(f.fileno(), 0) as ring:
        flags = struct.unpack_from("=I", ring, 12)[0]
        _, stride, capacity, page = struct.unpack_from("=IIII", ring, 16)
        step = 16 if flags & 2 else stride
        struct.pack_into("=I", ring, page + (sequence % capacity) * step + 8, 10**6)


def full_lossless(name, capacity=4):
    """A lossless producer whose ring a registered consumer, which never
    reads, has filled: the next message must wait."""
    p = shmq.Producer(name, slot_size=16, capacity=capacity, lossless=True)
    hog = shmq.Consumer(name)
    p.publish_many([b"%d" % i for i in range(capacity)])
    return p, hog


# ------------------------------------------------------------------ leases

def test_an_entered_loan_whose_exit_never_runs_is_collected_and_frees_the_producer(queue_name):
    with shmq.Producer(queue_name, slot_size=64, capacity=8) as p, \
            shmq.Consumer(queue_name, start="earliest") as c:
        lease = p.loan(8)
        buf = lease.__enter__()
        buf[:] = b"abandon!"
        del lease, buf  # the lease and its memoryview refer to each other
        gc.collect()
        assert p.publish(b"next") == 0  # the loan was abandoned: its sequence is reused
        assert c.poll() == b"next" and c.poll() is None
    assert p.closed  # no buffer counted as exported any more


def test_an_entered_view_whose_exit_never_runs_is_collected_and_frees_the_consumer(queue_name):
    with shmq.Producer(queue_name, slot_size=64, capacity=8) as p, \
            shmq.Consumer(queue_name, start="earliest") as c:
        p.publish_many([b"viewed", b"after"])
        lease = c.view()
        assert bytes(lease.__enter__()) == b"viewed"
        del lease
        gc.collect()
        assert c.poll() == b"after"  # moved past the viewed message
        c.close()
        assert c.closed


def test_exit_without_enter_raises_and_publishes_nothing(queue_name):
    with shmq.Producer(queue_name, slot_size=64, capacity=8) as p, \
            shmq.Consumer(queue_name, start="earliest") as c:
        lease = p.loan(16)
        with pytest.raises(RuntimeError, match="without __enter__"):
            lease.__exit__(None, None, None)
        assert p.next_sequence == 0 and c.poll() is None
        assert p.publish(b"real") == 0 and c.poll() == b"real"


def test_a_loan_buffer_kept_past_its_block_never_rewrites_a_published_message(queue_name):
    """A slice of the loan's memoryview outlives the block: while it can
    still write into the slot, no message may use that slot."""
    with shmq.Producer(queue_name, slot_size=16, capacity=4) as p, \
            shmq.Consumer(queue_name, start="earliest") as c:
        with pytest.raises(BufferError, match="nothing was published"):
            with p.loan(16) as buf:
                buf[:] = b"0123456789abcdef"
                kept = buf[4:8]
        for refused in (lambda: p.publish(b"0123456789abcdef"), lambda: p.publish_many([b"x"]),
                        lambda: p.loan(16)):
            with pytest.raises(RuntimeError, match="still exported"):
                refused()
        kept[:] = b"EVIL"  # lands in the claimed slot, which nobody will read
        del kept           # the last export: the loan is abandoned
        assert p.publish(b"0123456789abcdef") == 0
        assert c.poll() == b"0123456789abcdef" and c.poll() is None


def test_a_loan_buffer_kept_past_a_failed_block_is_held_too(queue_name):
    with shmq.Producer(queue_name, slot_size=16, capacity=4) as p:
        with pytest.raises(KeyError):
            with p.loan(4) as buf:
                kept = memoryview(buf)
                raise KeyError("the block failed")
        with pytest.raises(RuntimeError, match="still exported"):
            p.publish(b"x")
        kept.release()
        assert p.publish(b"x") == 0


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # 3.12+: fork with threads
def test_a_loan_opened_before_fork_cannot_be_published_in_the_child(queue_name):
    with shmq.Producer(queue_name, slot_size=64, capacity=8) as p, \
            shmq.Consumer(queue_name, start="earliest") as c:
        lease = p.loan(8)
        lease.__enter__()[:] = b"parental"
        pid = os.fork()
        if pid == 0:  # the child: commit must refuse
            code = 3
            try:
                lease.__exit__(None, None, None)
                code = 1
            except shmq.ProducerBusy:
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child's commit did not raise ProducerBusy"
        assert c.poll() is None
        lease.__exit__(None, None, None)  # the parent's loan is intact
        assert c.poll() == b"parental"


# --------------------------------------------------------------- consumers

def test_poll_many_returns_what_it_consumed_and_raises_the_error_on_the_next_call(queue_name):
    with shmq.Producer(queue_name, slot_size=64, capacity=16) as p, \
            shmq.Consumer(queue_name, start="earliest") as c:
        p.publish_many([b"a", b"b", b"c", b"d"])
        corrupt_length(queue_name, 2)
        got = c.poll_many(10)
        assert got == [b"a", b"b"]
        with pytest.raises(shmq.CorruptSlot):
            c.poll()
        got += c.poll_many(10)
        assert got == [b"a", b"b", b"d"]
        assert len(got) + c.lost == 4  # received + lost == published


@pytest.mark.parametrize("uid", [2**32, 2**32 - 1, 2**64, 2**32 + os.getuid(), -1])
def test_an_owner_that_is_no_uid_is_refused(queue_name, uid):
    with shmq.Producer(queue_name, slot_size=8, capacity=8):
        with pytest.raises(ValueError, match="owner"):
            shmq.Consumer(queue_name, owner=uid)
        shmq.Consumer(queue_name, owner=os.getuid()).close()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickled_consumer_keeps_register_owner_and_spin(queue_name, protocol):
    with shmq.Producer(queue_name, slot_size=16, capacity=4, lossless=True) as p:
        observer = shmq.Consumer(queue_name, register=False, owner=os.getuid(), spin=100)
        clone = pickle.loads(pickle.dumps(observer, protocol))
        try:
            assert type(clone) is shmq.Consumer and clone.position == observer.position
            assert not clone.registered and p.consumers == []
            for i in range(8):  # an observer never holds the lossless producer back
                p.publish(b"%d" % i, timeout=0)
            again = clone.__reduce__()
            assert again[0].keywords == {"register": False, "owner": os.getuid(), "spin": 100}
        finally:
            clone.close()
            observer.close()
        plain = shmq.Consumer(queue_name)
        clone = pickle.loads(pickle.dumps(plain, protocol))
        assert clone.registered and clone.__reduce__()[0] is shmq.Consumer
        clone.close()
        plain.close()


class Stop(Exception):
    pass


def _signal_main_thread_in(seconds):
    main = threading.get_ident()
    timer = threading.Timer(seconds, signal.pthread_kill, (main, signal.SIGUSR1))
    timer.start()
    return timer


@pytest.mark.timeout(60)
def test_publish_many_stopped_by_a_signal_handler_says_how_many_went_out(queue_name):
    p, hog = full_lossless(queue_name, capacity=4)
    hog.poll_many(4)  # room for four of the six

    def stop(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGUSR1, stop)
    try:
        timer = _signal_main_thread_in(0.2)
        with pytest.raises(Stop) as raised:
            p.publish_many([b"m%d" % i for i in range(6)])
        timer.join()
        assert raised.value.published == 4 and p.next_sequence == 8
    finally:
        signal.signal(signal.SIGUSR1, previous)
        hog.close()
        p.close()


@pytest.mark.timeout(60)
def test_consumer_waits_for_its_queue_to_appear(queue_name):
    t0 = time.monotonic()
    with pytest.raises(shmq.QueueNotFound) as raised:
        shmq.Consumer(queue_name, wait=0.2)
    assert 0.15 <= time.monotonic() - t0 < 2
    assert raised.value.errno == errno.ENOENT and raised.value.filename == queue_name
    for bad, exc in ((-1, ValueError), ("1", TypeError), (True, TypeError)):
        with pytest.raises(exc, match="wait"):
            shmq.Consumer(queue_name, wait=bad)
    for wait in (10, None):
        producers = []
        maker = threading.Timer(0.2, lambda: producers.append(shmq.Producer(queue_name, 16, 4)))
        t0 = time.monotonic()
        maker.start()
        with shmq.Consumer(queue_name, wait=wait) as c:
            assert time.monotonic() - t0 < 5
            maker.join()
            producers[0].publish(b"hello")
            assert c.poll(timeout=5) == b"hello"
        producers[0].close()
        shmq.unlink(queue_name)


@pytest.mark.timeout(60)
def test_a_consumer_that_came_after_the_end_sees_ended_until_the_next_run(queue_name):
    p = shmq.Producer(queue_name, slot_size=16, capacity=4)
    p.publish(b"last words")
    p.close()
    late = shmq.Consumer(queue_name, start="earliest")
    try:
        assert late.ended
        t0 = time.monotonic()
        assert list(late) == [b"last words"]  # reads what is there, then stops at once
        assert list(late) == [] and time.monotonic() - t0 < 1
        t0 = time.monotonic()
        assert late.poll(timeout=0.1) is None  # a timed poll waits for a next run
        assert time.monotonic() - t0 >= 0.09
        reopen = threading.Timer(0.2, lambda: shmq.Producer(queue_name).publish(b"next run"))
        reopen.start()
        assert late.poll(timeout=10) == b"next run"
        reopen.join()
    finally:
        late.close()


# ---------------------------------------------------------------- producers

def test_opening_in_the_wrong_mode_or_geometry_says_which_differs(queue_name):
    shmq.Producer(queue_name, slot_size=64, capacity=8, lossless=True).close()
    with pytest.raises(shmq.IncompatibleQueue, match=r"lossless=True \(not False\)") as raised:
        shmq.Producer(queue_name, lossless=False)
    assert "slot_size" not in str(raised.value) and "capacity" not in str(raised.value)
    with pytest.raises(shmq.IncompatibleQueue, match=r"slot_size 64 \(not 128\)"):
        shmq.Producer(queue_name, slot_size=128)
    with pytest.raises(shmq.IncompatibleQueue) as raised:
        shmq.Producer(queue_name, slot_size=64, capacity=16, lossless=False)
    assert "capacity 8 (not 16)" in str(raised.value) and "lossless=True" in str(raised.value)
    shmq.Producer(queue_name, slot_size=64, capacity=8, lossless=True).close()


def test_full_is_also_a_queue_full(queue_name):
    assert issubclass(shmq.Full, queue.Full) and issubclass(shmq.Full, shmq.ShmqError)
    p, hog = full_lossless(queue_name)
    try:
        with pytest.raises(queue.Full) as raised:
            p.publish(b"x", timeout=0)
        assert isinstance(raised.value, shmq.Full) and raised.value.published == 0
    finally:
        hog.close()
        p.close()


@pytest.mark.timeout(60)
def test_blocking_calls_that_time_out_do_what_the_docs_say(queue_name, names):
    def timed(call):
        t0 = time.monotonic()
        try:
            return call(), time.monotonic() - t0
        except shmq.Full as e:
            return e, time.monotonic() - t0

    p, hog = full_lossless(queue_name)
    quiet_name = names()
    try:
        for call in (lambda: p.publish(b"x", timeout=0.05),
                     lambda: p.publish_many([b"x", b"y"], timeout=0.05),
                     lambda: p.loan(4, timeout=0.05)):
            result, took = timed(call)
            assert isinstance(result, shmq.Full) and result.published == 0
            assert 0.04 <= took < 1, took
        with shmq.Producer(quiet_name, 16, 4), shmq.Consumer(quiet_name) as c:
            buf = bytearray(16)
            for call, expected in ((lambda: c.poll(timeout=0.05), None),
                                   (lambda: c.poll_many(4, timeout=0.05), []),
                                   (lambda: c.poll_into(buf, timeout=0.05), None),
                                   (lambda: c.poll_many_into(buf, timeout=0.05), []),
                                   (lambda: c.wait(timeout=0.05), False),
                                   (lambda: c.view(timeout=0.05).__enter__(), None)):
                result, took = timed(call)
                assert result == expected and 0.04 <= took < 1, (result, took)
    finally:
        hog.close()
        p.close()


def test_os_errors_carry_errno_and_filename(queue_name):
    for call in (lambda: shmq.Consumer(queue_name), lambda: shmq.unlink(queue_name)):
        with pytest.raises(shmq.QueueNotFound) as raised:
            call()
        assert raised.value.errno == errno.ENOENT and raised.value.filename == queue_name
        assert isinstance(raised.value, FileNotFoundError)
    with shmq.Producer(queue_name, slot_size=8, capacity=8):
        with pytest.raises(PermissionError) as raised:
            shmq.Consumer(queue_name, owner=os.getuid() + 1)
        assert raised.value.errno == errno.EPERM and raised.value.filename == queue_name


# ----------------------------------------------------------------- Ctrl-C

CTRL_C = """
    import sys, time, shmq
    full, quiet, missing = sys.argv[1:4]
    p = shmq.Producer(full, slot_size=16, capacity=2, lossless=True)
    hog = shmq.Consumer(full)
    p.publish_many([b"1", b"2"])
    q = shmq.Producer(quiet, slot_size=16, capacity=4)
    c = shmq.Consumer(quiet)
    calls = {
        "publish": lambda: p.publish(b"x"),
        "publish_many": lambda: p.publish_many([b"x"]),
        "loan": lambda: p.loan(4),
        "poll": lambda: c.poll(timeout=None),
        "view": lambda: c.view(timeout=None),
        "wait": lambda: c.wait(),
        "iterate": lambda: next(iter(c)),
        "open": lambda: shmq.Consumer(missing, wait=None),
    }
    for name in sys.argv[4:]:
        print("blocking", name, flush=True)
        try:
            calls[name]()
            print("returned", name, flush=True)
        except KeyboardInterrupt as e:
            print("interrupted", name, time.monotonic(), getattr(e, "published", "-"), flush=True)
"""


@pytest.mark.timeout(120)
def test_ctrl_c_interrupts_every_blocking_call_within_half_a_second(names):
    calls = ["publish", "publish_many", "loan", "poll", "view", "wait", "iterate", "open"]
    full, quiet, missing = names(), names(), names()
    proc = spawn(CTRL_C, full, quiet, missing, *calls)
    try:
        for call in calls:
            line = read_line(proc)
            assert line == f"blocking {call}\n", line + proc.stderr.read()
            time.sleep(0.2)  # well inside the wait
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
            word, name, when, published = read_line(proc).split()
            assert (word, name) == ("interrupted", call)
            assert float(when) - sent < 0.5, f"{call}: {float(when) - sent:.3f} s"
            assert published == ("0" if call == "publish_many" else "-")
    finally:
        proc.kill()
        proc.communicate(timeout=30)


# ---------------------------------------------------------------- inspect

def test_inspect_lists_registered_consumers_but_not_observers(queue_name):
    with shmq.Producer(queue_name, slot_size=64, capacity=8, lossless=True, max_consumers=4) as p, \
            shmq.Consumer(queue_name) as first, shmq.Consumer(queue_name) as second, \
            shmq.Consumer(queue_name, register=False):
        p.publish_many([b"%d" % i for i in range(5)])
        assert first.poll_many(2) == [b"0", b"1"]
        info = shmq.inspect(queue_name)
        consumers = info.pop("consumers")
        assert info == {
            "name": queue_name, "slot_size": 64, "max_message_size": 64, "capacity": 8,
            "max_consumers": 4,
            "lossless": True, "first_sequence": 0, "head": 5, "producer_alive": True,
            "ended": False, "owner_uid": os.getuid(), "mode": 0o600,
            "ring_bytes": os.stat(ring_path(queue_name)).st_size,
            "state_bytes": info["state_bytes"], "groups": [],
        }
        assert info["state_bytes"] > 0
        assert sorted((c["position"], c["lag"]) for c in consumers) == [(0, 5), (2, 3)]
        for c in consumers:
            assert set(c) == {"index", "pid", "uid", "registered", "position", "lag", "lost", "unclear"}
            assert c["unclear"] is False
            assert c["registered"] is True and c["uid"] == os.getuid() and c["pid"] == os.getpid()
            assert c["lost"] == 0
    after = shmq.inspect(queue_name)
    assert after["consumers"] == [] and after["ended"] and not after["producer_alive"]


@pytest.mark.timeout(60)
def test_inspect_sees_a_killed_producer_as_dead(queue_name):
    proc = spawn("""
        import sys, time, shmq
        p = shmq.Producer(sys.argv[1], slot_size=16, capacity=4)
        p.publish(b"x")
        print("ready", flush=True)
        time.sleep(60)
    """, queue_name)
    try:
        assert read_line(proc) == "ready\n", proc.stderr.read()
        assert shmq.inspect(queue_name)["producer_alive"] is True
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    info = shmq.inspect(queue_name)
    assert info["producer_alive"] is False and not info["ended"] and info["head"] == 1


def test_inspect_of_a_fifo_is_incompatible_at_once(queue_name):
    path = ring_path(queue_name)
    os.mkfifo(path, 0o600)
    try:
        result = subprocess.run([sys.executable, "-c", textwrap.dedent("""
            import sys, shmq
            try:
                shmq.inspect(sys.argv[1])
            except shmq.IncompatibleQueue as e:
                print("IncompatibleQueue", e)
        """), queue_name], capture_output=True, text=True, timeout=20, env=ENV)
        assert result.stdout.startswith("IncompatibleQueue"), result.stdout + result.stderr
    finally:
        os.unlink(path)


def test_inspect_errors(queue_name):
    with pytest.raises(shmq.QueueNotFound) as raised:
        shmq.inspect(queue_name)
    assert raised.value.errno == errno.ENOENT and raised.value.filename == queue_name
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError):
            shmq.inspect(bad)
    with pytest.raises(TypeError):
        shmq.inspect(3)
    with open(ring_path(queue_name), "wb") as f:
        f.write(b"not a queue" * 1000)
    try:
        with pytest.raises(shmq.IncompatibleQueue):
            shmq.inspect(queue_name)
    finally:
        os.unlink(ring_path(queue_name))


def test_a_loan_inherited_by_a_forked_child_never_writes_the_parents_ring(queue_name):
    """A child forked while a loan is open keeps a memoryview into the slot;
    whatever it writes there, before or after the parent publishes, stays in
    the child: every consumer reads what the parent wrote."""
    with shmq.Producer(queue_name, slot_size=64, capacity=16) as p, \
            shmq.Consumer(queue_name) as first, shmq.Consumer(queue_name) as second:
        lease = p.loan(5)
        buf = lease.__enter__()
        buf[:] = b"PARNT"
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                buf[:] = b"EARLY"          # before the parent publishes
                os.read(r, 1)
                buf[:] = b"LATER"          # after
            finally:
                os._exit(0)
        lease.__exit__(None, None, None)
        assert first.poll() == b"PARNT"
        os.write(w, b"1")
        assert os.waitpid(pid, 0)[1] == 0
        assert second.poll() == b"PARNT"
        os.close(r), os.close(w)


@pytest.mark.parametrize("suffix", [".consumers", ".producer", ".bridge"])
def test_a_queue_name_may_not_end_like_a_queues_own_files(suffix):
    with pytest.raises(ValueError, match=suffix.replace(".", r"\.")):
        shmq.Producer("x" + suffix)

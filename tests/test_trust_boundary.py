"""The trust boundary and liveness, with real processes on real shared memory.

What a consumer may not do (the kernel says no, not the library), what a
dead peer costs the living, who may take over a name, and what fork() and the
end of a stream do to open handles. docs/consumer-state.md is the design these
scenarios check; every one of them would have failed before it.
"""
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

import shmq
from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def ring_path(name):
    return f"/dev/shm/shmq-{name}"


def state_path(name):
    return f"/dev/shm/shmq-{name}.consumers"






def within(seconds, fn, *args):
    """fn(*args) in a daemon thread; fails the test if it takes longer."""
    result = {}

    def run():
        try:
            result["value"] = fn(*args)
        except BaseException as e:  # handed to the test's thread below
            result["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} still running after {seconds} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


def wait_for_child(pid, timeout=30):
    """waitpid with a deadline; returns the exit code (-signal if killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"forked child {pid} did not exit within {timeout} s")


# A producer in its own process, so that it can die without us: it publishes
# argv[2] numbered messages, says "ready", then waits for a line or death.
PRODUCER = """
    import sys, shmq
    name, count = sys.argv[1], int(sys.argv[2])
    p = shmq.Producer(name, slot_size=64, capacity=64)
    for i in range(count):
        p.publish(b"m%d" % i)
    print("ready", p.next_sequence, flush=True)
    sys.stdin.readline()
    p.close()
    print("closed", flush=True)
"""


# ------------------------------------------------------------ a consumer cannot hurt

ATTACK = r"""
    import ctypes, errno, json, mmap, os, sys, shmq
    name = sys.argv[1]
    ring = f"/dev/shm/shmq-{name}"
    c = shmq.Consumer(name, start="earliest")
    first = c.poll()

    def link(fd):
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None

    def flags(fd):
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)

    def outcome(fn):
        try:
            fn()
            return "succeeded"
        except OSError as e:
            return f"{type(e).__name__}:{errno.errorcode.get(e.errno, e.errno)}"

    fds = [int(fd) for fd in os.listdir("/proc/self/fd") if link(fd) == ring]
    fd = fds[0]
    size = os.fstat(fd).st_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def mprotect_writable():
        for line in open("/proc/self/maps"):
            if line.rstrip().endswith(ring):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if libc.mprotect(lo, hi - lo, mmap.PROT_READ | mmap.PROT_WRITE) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e))
                return
        raise AssertionError("ring mapping not found")

    report = {
        "first": first.decode(),
        "ring_fds": len(fds),
        "access_modes": [flags(f) & os.O_ACCMODE for f in fds],
        "ftruncate_0": outcome(lambda: os.ftruncate(fd, 0)),
        "ftruncate_grow": outcome(lambda: os.ftruncate(fd, size * 2)),
        "pwrite": outcome(lambda: os.pwrite(fd, b"\xff" * 64, 0)),
        "write": outcome(lambda: os.write(fd, b"\xff")),
        "mmap_writable": outcome(lambda: mmap.mmap(fd, size, mmap.MAP_SHARED,
                                                   mmap.PROT_READ | mmap.PROT_WRITE)),
        "mprotect_writable": outcome(mprotect_writable),
        "size_after": os.fstat(fd).st_size,
    }
    print(json.dumps(report), flush=True)
    # Last, a stray store into the read-only mapping: it must kill us alone.
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith(ring):
            address = int(line.split("-")[0], 16) + 4096 + 16
            ctypes.memset(address, 0x5A, 64)
    print("survived a store into the ring", flush=True)
"""


def test_a_consumer_process_cannot_truncate_write_or_map_the_ring_writable(queue_name, children):
    name = queue_name
    with shmq.Producer(name, slot_size=64, capacity=256) as p, shmq.Consumer(name) as bystander:
        assert os.path.exists(state_path(name))
        assert os.stat(ring_path(name)).st_mode & 0o777 == 0o600
        size = os.stat(ring_path(name)).st_size
        p.publish_many([b"before-%d" % i for i in range(10)])

        attacker = children(ATTACK, name)
        report = json.loads(attacker.line())
        assert report["first"] == "before-0"  # it really is a working consumer
        assert report["ring_fds"] == 1 and report["access_modes"] == [os.O_RDONLY]
        assert report["ftruncate_0"] in ("OSError:EINVAL", "OSError:EBADF"), report
        assert report["ftruncate_grow"] in ("OSError:EINVAL", "OSError:EBADF"), report
        assert report["pwrite"] == "OSError:EBADF", report
        assert report["write"] == "OSError:EBADF", report
        assert report["mmap_writable"] == "PermissionError:EACCES", report
        assert report["mprotect_writable"] == "PermissionError:EACCES", report
        assert report["size_after"] == size
        # The stray store kills the attacker: SIGSEGV, or, under the ASan run
        # (LD_PRELOAD reaches children), ASan's report of that same fault.
        rc = attacker.wait()
        assert rc == -signal.SIGSEGV or (
            "SEGV" in attacker.errors() and "WRITE memory access" in attacker.errors()), attacker.errors()

        assert os.stat(ring_path(name)).st_size == size
        p.publish_many([b"after-%d" % i for i in range(100)])
        expected = [b"before-%d" % i for i in range(10)] + [b"after-%d" % i for i in range(100)]
        assert bystander.poll_many(1000) == expected
        assert bystander.lost == 0
        with shmq.Consumer(name, start="earliest") as late:
            assert late.poll_many(1000) == expected


def test_a_consumer_holds_the_ring_only_through_a_read_only_descriptor(queue_name, children):
    name = queue_name
    shmq.Producer(name, slot_size=8, capacity=8).close()
    child = children("""
        import os, sys, shmq
        ring = f"/dev/shm/shmq-{sys.argv[1]}"
        c = shmq.Consumer(sys.argv[1])
        modes = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") != ring:
                    continue
                flags = open(f"/proc/self/fdinfo/{fd}").read().split("flags:")[1].split()[0]
            except OSError:
                continue
            modes.append(int(flags, 8) & os.O_ACCMODE)
        print("modes", *modes, flush=True)
    """, name)
    modes = child.expect("modes").split()[1:]
    assert modes and all(int(m) == os.O_RDONLY for m in modes), modes
    assert child.wait() == 0, child.errors()
    assert os.path.exists(state_path(name))


# ------------------------------------------------------------ dead peers

def _asleep(pid):
    """Whether process `pid` sleeps in the kernel (its state in /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "S"


def test_a_consumer_killed_asleep_costs_the_producer_at_most_one_wakeup(queue_name, children):
    name = queue_name
    with shmq.Producer(name, slot_size=16, capacity=1024) as p:
        sleeper = children("""
            import sys, shmq
            c = shmq.Consumer(sys.argv[1])
            print("sleeping", flush=True)
            c.poll(timeout=None)
            print("woke", flush=True)
        """, name)
        sleeper.expect("sleeping")
        deadline = time.monotonic() + 10
        # It raises the wake flag just before it sleeps on the futex.
        while not _asleep(sleeper.pid):
            assert time.monotonic() < deadline, "the consumer never went to sleep"
            time.sleep(0.005)
        time.sleep(0.2)
        sleeper.kill()

        before = p.wakeups
        for i in range(100_000):
            p.publish(b"%d" % i)
        assert p.wakeups - before <= 1, f"{p.wakeups - before} wake-ups for a dead sleeper"


def test_a_sigkilled_producer_leaves_the_stream_open_but_not_alive(queue_name, children):
    name = queue_name
    producer = children(PRODUCER, name, 5)
    producer.expect("ready")
    with shmq.Consumer(name, start="earliest") as c:
        assert c.producer_alive and not c.ended
        producer.kill()
        assert not c.producer_alive
        assert not c.ended
        assert c.poll_many(10) == [b"m%d" % i for i in range(5)]


def _entries(p):
    """{index: pid} of the live consumer entries, as the producer sees them."""
    return {c["index"]: c["pid"] for c in p.consumers}


def _entry_pid(p, index):
    return _entries(p).get(index)


def _entry_live(p, index):
    return index in _entries(p)


CONSUMER = """
    import sys, shmq
    c = shmq.Consumer(sys.argv[1], start="earliest")
    print("open", flush=True)
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        print("got", *[m.decode() for m in c.poll_many(100, timeout=5)], flush=True)
"""


def test_a_killed_consumers_entry_is_reused_and_consumers_beyond_the_limit_still_read(
        queue_name, children):
    name = queue_name
    with shmq.Producer(name, slot_size=16, capacity=64, max_consumers=2) as p:
        first, second = children(CONSUMER, name), children(CONSUMER, name)
        first.expect("open")
        second.expect("open")
        assert {_entry_pid(p, 0), _entry_pid(p, 1)} == {first.pid, second.pid}
        assert _entry_live(p, 0) and _entry_live(p, 1)

        with shmq.Consumer(name, start="earliest") as unlisted:  # a third, with no entry
            assert os.getpid() not in (_entry_pid(p, 0), _entry_pid(p, 1))
            p.publish_many([b"a", b"b"])
            assert unlisted.poll_many(10) == [b"a", b"b"]

        killed = 0 if _entry_pid(p, 0) == first.pid else 1
        first.kill()
        assert not _entry_live(p, killed)  # the kernel dropped the dead one's lock
        third = children(CONSUMER, name)
        third.expect("open")
        assert _entry_pid(p, killed) == third.pid
        assert _entry_live(p, killed)
        assert _entry_pid(p, 1 - killed) == second.pid
        p.publish(b"c")
        for reader in (second, third):
            reader.tell("poll")
            assert reader.expect("got").split()[1:] == ["a", "b", "c"]


# ------------------------------------------------------------ who may own a name

@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_queue_planted_by_another_user_is_refused_to_our_producer(queue_name, children):
    name = queue_name
    squatter = children("""
        import os, sys, shmq
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        shmq.Producer(sys.argv[1], slot_size=8, capacity=8, mode=0o666).close()
        print("planted", flush=True)
    """, name)
    squatter.expect("planted")
    assert squatter.wait() == 0, squatter.errors()
    assert os.stat(ring_path(name)).st_uid == 65534
    with pytest.raises(PermissionError):
        shmq.Producer(name)
    with pytest.raises(PermissionError):
        shmq.Producer(name, mode=0o666)  # wide enough, but still not ours
    with shmq.Consumer(name) as c:
        assert c.owner_uid == 65534
    with pytest.raises(PermissionError):
        shmq.Consumer(name, owner=0)
    shmq.Consumer(name, owner=65534).close()


def test_our_own_queue_open_wider_than_asked_is_refused(queue_name):
    name = queue_name
    shmq.Producer(name, slot_size=8, capacity=8, mode=0o644).close()
    assert os.stat(ring_path(name)).st_mode & 0o777 == 0o644
    with pytest.raises(PermissionError):
        shmq.Producer(name)
    with shmq.Producer(name, mode=0o644) as p:
        assert p.publish(b"x") == 0
    with shmq.Consumer(name, owner=os.geteuid()) as c:
        assert c.owner_uid == os.geteuid()


def test_unlink_refuses_while_a_producer_lives_and_force_starts_a_new_queue(queue_name, children):
    name = queue_name
    producer = children(PRODUCER, name, 3)
    producer.expect("ready")
    with shmq.Consumer(name, start="earliest") as old:
        with pytest.raises(shmq.ProducerBusy):
            shmq.unlink(name)
        assert shmq.exists(name) and not old.unlinked
        shmq.unlink(name, force=True)
        assert not shmq.exists(name)
        assert not os.path.exists(ring_path(name)) and not os.path.exists(state_path(name))
        assert old.unlinked
        assert old.producer_alive  # the old producer still runs, on the unlinked queue
        with shmq.Producer(name, slot_size=8, capacity=8) as fresh:
            assert fresh.next_sequence == 0
            fresh.publish(b"new")
            with shmq.Consumer(name, start="earliest") as new:
                assert new.poll_many(10) == [b"new"]
                assert not new.unlinked
        assert old.poll_many(10) == [b"m0", b"m1", b"m2"]
        assert old.unlinked
    producer.tell("close")
    producer.expect("closed")
    assert producer.wait() == 0, producer.errors()


# ------------------------------------------------------------ fork()

@pytest.mark.parametrize("how", ["close", "collect"])
def test_a_forked_child_dropping_an_inherited_producer_neither_unlinks_nor_ends_the_stream(
        queue_name, how):
    name = queue_name
    p = shmq.Producer(name, slot_size=16, capacity=64, unlink_on_close=True)
    try:
        with shmq.Consumer(name) as c:
            p.publish(b"before")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
                pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    if how == "close":
                        p.close()
                    else:
                        p = None  # the only reference: deallocated here
                        gc.collect()
                    code = 0
                finally:
                    os._exit(code)
            assert wait_for_child(pid) == 0
            assert shmq.exists(name)
            assert os.path.exists(ring_path(name)) and os.path.exists(state_path(name))
            assert not c.ended and c.producer_alive
            p.publish(b"after")
            assert c.poll_many(10) == [b"before", b"after"]
            assert not c.ended
    finally:
        p.close()
    assert not shmq.exists(name)  # the parent's close does unlink


def test_a_consumer_waiting_in_a_thread_is_usable_in_a_child_forked_by_another_thread(queue_name):
    name = queue_name
    code = textwrap.dedent("""
        import os, sys, threading, time, warnings, shmq
        name = sys.argv[1]
        p = shmq.Producer(name, slot_size=16, capacity=64)
        c = shmq.Consumer(name)
        got = []
        waiter = threading.Thread(target=lambda: got.append(c.poll(timeout=10)))
        waiter.start()
        time.sleep(0.2)  # the waiter is inside poll, the consumer marked in use
        r, w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
            pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(w)
                os.read(r, 1)  # the parent has published
                msg = c.poll(timeout=5)
                code = 0 if msg == b"hello" else 2
            except RuntimeError as e:
                print("child:", e, flush=True)
                code = 3
            finally:
                os._exit(code)
        os.close(r)
        p.publish(b"hello")
        os.write(w, b"x")
        _, status = os.waitpid(pid, 0)
        waiter.join(10)
        print("child", os.waitstatus_to_exitcode(status), "parent", got, flush=True)
        c.close()
        p.close()
    """)
    run = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True,
                         timeout=60, env=ENV)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "child 0 parent [b'hello']", run.stdout


# ------------------------------------------------------------ end of stream

def test_iteration_stops_at_the_end_of_a_stream_and_resumes_when_a_producer_reopens(queue_name):
    name = queue_name
    count = 1000
    p = shmq.Producer(name, slot_size=16, capacity=4096)
    with shmq.Consumer(name) as c:
        assert c.producer_alive and not c.ended
        p.publish_many([b"%d" % i for i in range(count)])
        p.close()
        got = within(10, list, c)
        assert got == [b"%d" % i for i in range(count)]
        assert c.ended and not c.producer_alive
        assert within(10, list, c) == []  # still ended: stops at once
        with shmq.Producer(name) as again:
            assert not c.ended and c.producer_alive
            again.publish_many([b"x", b"y"])
            assert within(10, lambda: [next(c), next(c)]) == [b"x", b"y"]
        assert c.ended
        assert within(10, list, c) == []
        assert c.position == count + 2 and c.lost == 0

"""close() racing a blocked call never frees a handle under its waiter.

A publish, publish_many or loan blocked on a full lossless queue, and a poll,
view or for-loop blocked on a quiet one, are closed a thousand times each at
a random moment: from another thread, and from a signal handler that runs on
the waiting thread itself (while the call waits in the core, the wait check
runs it). The close only interrupts the wait; the waiter closes the handle
once it has left the core, and raises ValueError (a for-loop just stops).
Before the fix the handle was freed under the waiter: SIGSEGV, or an ASan
report under scripts/test-all.sh pytest_asan.

Each round takes about a millisecond, so these run under ASan too.
"""
import random
import signal
import threading
import queue

import pytest

import shmq

ROUNDS = 1000


class Closer:
    """A thread that, for each handle it is given, waits a random moment and
    then closes it, or has a signal delivered to the main thread whose
    handler closes it."""

    def __init__(self, by_signal):
        self.by_signal = by_signal
        self.handles = queue.SimpleQueue()
        self.target = None
        self.main = threading.get_ident()
        self.rng = random.Random(15)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _handler(self, signum, frame):
        self.target.close()

    def _run(self):
        while True:
            handle = self.handles.get()
            if handle is None:
                return
            # Up to 400 us: some closes land before the call waits, most
            # while it waits in the core. One in thirty goes at once, and so
            # lands as the waiter lets go of the GIL to go to sleep; a signal
            # there is seen only at the end of the core's first slice (10 ms
            # for a producer, 100 ms for a consumer).
            delay = self.rng.random() * 0.0004
            if delay > 0.0004 / 30:
                threading.Event().wait(delay)
            if self.by_signal:
                self.target = handle
                signal.pthread_kill(self.main, signal.SIGUSR1)
            else:
                handle.close()

    def __enter__(self):
        if self.by_signal:
            self.previous = signal.signal(signal.SIGUSR1, self._handler)
        self.thread.start()
        return self

    def close_soon(self, handle):
        if self.by_signal:
            self.target = handle
        self.handles.put(handle)

    def __exit__(self, *exc):
        self.handles.put(None)
        self.thread.join(30)
        if self.by_signal:
            signal.signal(signal.SIGUSR1, self.previous)


def _race(open_handle, block, by_signal):
    """ROUNDS rounds of close() against block(handle); returns how many of
    them the close caught while the call waited."""
    while_waiting = 0
    with Closer(by_signal) as closer:
        for _ in range(ROUNDS):
            handle = open_handle()
            closer.close_soon(handle)
            try:
                block(handle)
            except ValueError as e:
                assert "closed" in str(e), e
                while_waiting += "while" in str(e)
            assert handle.closed
            assert "closed" in repr(handle)
    return while_waiting


def _iterate(c):
    for msg in c:
        raise AssertionError(f"a quiet queue gave {msg!r}")
    raise ValueError("closed while waiting (the for-loop stopped)")


PRODUCER_CALLS = {
    "publish": lambda p: p.publish(b"never fits"),
    "publish_many": lambda p: p.publish_many([b"never", b"fits"]),
    "loan": lambda p: p.loan(8),
}
CONSUMER_CALLS = {
    "poll": lambda c: c.poll(timeout=None),
    "view": lambda c: c.view(timeout=None),
    "for-loop": _iterate,
}
HOW = ["thread", "signal"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("call", list(PRODUCER_CALLS))
def test_close_racing_a_blocked_producer_call_never_crashes(queue_name, call, how):
    """A registered consumer that never reads keeps the lossless ring full, so
    every producer opened on it blocks at once."""
    first = shmq.Producer(queue_name, slot_size=16, capacity=2, lossless=True)
    hog = shmq.Consumer(queue_name)
    first.publish_many([b"1", b"2"])
    first.close()
    try:
        waited = _race(lambda: shmq.Producer(queue_name, lossless=True), PRODUCER_CALLS[call],
                       how == "signal")
        assert waited >= ROUNDS // 10, f"only {waited} closes landed during the wait"
        with shmq.Producer(queue_name, lossless=True) as p:
            assert p.next_sequence == 2  # nothing was published by a closed call
        assert hog.poll_many(10) == [b"1", b"2"]
    finally:
        hog.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("call", list(CONSUMER_CALLS))
def test_close_racing_a_blocked_consumer_call_never_crashes(queue_name, call, how):
    with shmq.Producer(queue_name, slot_size=16, capacity=4) as p:
        waited = _race(lambda: shmq.Consumer(queue_name), CONSUMER_CALLS[call], how == "signal")
        assert waited >= ROUNDS // 10, f"only {waited} closes landed during the wait"
        with shmq.Consumer(queue_name) as c:  # the queue is unharmed
            p.publish(b"after")
            assert c.poll(timeout=5) == b"after"


@pytest.mark.timeout(60)
def test_a_producer_busy_in_one_thread_is_refused_in_another(queue_name):
    with shmq.Producer(queue_name, slot_size=16, capacity=2, lossless=True) as p, \
            shmq.Consumer(queue_name):
        p.publish_many([b"1", b"2"])
        errors = []

        def blocked():
            try:
                p.publish(b"3", timeout=30)
            except ValueError as e:
                errors.append(e)

        waiter = threading.Thread(target=blocked)
        waiter.start()
        deadline = threading.Event()
        while "waiting" not in repr(p) and not deadline.wait(0.001):
            pass
        for use in (lambda: p.publish(b"x"), lambda: p.publish_many([b"x"]), lambda: p.loan(1),
                    lambda: p.next_sequence, lambda: p.consumers):
            with pytest.raises(RuntimeError, match="in use by another thread"):
                use()
        assert p.slot_size == 16 and not p.closed
        p.close()
        waiter.join(10)
        assert not waiter.is_alive()
        assert len(errors) == 1 and "closed while waiting" in str(errors[0])
        assert p.closed

"""asyncio without threads (issue 17): loop.add_reader on Consumer.fileno(),
poll_async, async for, publish_async and wait_consumers_async.

None of them may use a thread: each scenario gives its event loop a default
executor that refuses all work (and counts what it was asked), and checks
that threading.active_count() does not grow. Cancellation must be safe: a
wait_for around poll_async (or publish_async) that times out, over and over,
loses, repeats and reorders nothing.

Peers that must be elsewhere run in Child processes (tests/conftest.py),
driven line by line over stdin; every queue comes from the `name` or `names`
fixture, which unlinks it. Every event loop runs under an overall bound.
"""
import asyncio
import concurrent.futures
import contextlib
import threading
import time

import pytest

import shmq


class RefusingExecutor(concurrent.futures.ThreadPoolExecutor):
    """A default executor that starts no thread: every submit raises."""

    def __init__(self):
        super().__init__(max_workers=1)
        self.asked = 0

    def submit(self, *args, **kwargs):
        self.asked += 1
        raise RuntimeError("this event loop runs nothing in threads")


def _run(main, timeout=30):
    """Runs main(executor) in a fresh event loop whose default executor is a
    RefusingExecutor, under an overall bound; fails if it was ever asked."""
    executor = RefusingExecutor()

    async def bounded():
        asyncio.get_running_loop().set_default_executor(executor)
        return await asyncio.wait_for(main(executor), timeout)

    result = asyncio.run(bounded())
    assert executor.asked == 0, f"the default executor was asked {executor.asked} times"
    return result


@contextlib.asynccontextmanager
async def _ticking():
    """A task that ticks every 10 ms: how often it ran says whether the loop was free."""
    ticks = [0]

    async def tick():
        while True:
            await asyncio.sleep(0.01)
            ticks[0] += 1

    task = asyncio.create_task(tick())
    try:
        yield ticks
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def _tasks():
    """A list for the tasks a scenario starts; whatever way it ends, those
    still running are cancelled and every outcome is collected (a task whose
    error nobody retrieved would be reported, late, by the garbage collector)."""
    tasks = []
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)




# A child that owns a lossy queue's producer and obeys stdin: "publish WORD"
# publishes WORD, "close" closes the producer (ending the stream).
PRODUCER = """
    import sys, shmq
    p = shmq.Producer(sys.argv[1], slot_size=64, capacity=64)
    print("ready", flush=True)
    for line in sys.stdin:
        word, *rest = line.split()
        if word == "publish":
            p.publish(rest[0].encode())
        else:
            p.close()
        print("done", word, flush=True)
"""

# A child that owns a lossless queue's producer, waits for "go", publishes
# COUNT numbered messages with random small gaps, and closes the stream.
SENDER = """
    import random, sys, time, shmq
    name, count = sys.argv[1], int(sys.argv[2])
    rng = random.Random(17)
    with shmq.Producer(name, slot_size=16, capacity=256, lossless=True) as p:
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(count):
            p.publish(b"%d" % i, timeout=60)
            if rng.random() < 0.1:
                time.sleep(rng.random() * 0.015)
        print("sent", flush=True)
"""

# A child that attaches a consumer to argv[1] (registered: a lossless
# producer waits for it), says "attached", reads COUNT messages slowly, and
# says "ok LOST" if they were b"0", b"1", ... in order.
SLOW_READER = """
    import sys, time, shmq
    name, count, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    with shmq.Consumer(name) as c:
        print("attached", flush=True)
        got = []
        for _ in range(count):
            got.append(c.poll(timeout=30))
            time.sleep(pause)
        expected = [b"%d" % i for i in range(count)]
        print("ok" if got == expected else "bad " + repr(got), c.lost, flush=True)
"""

# A child that attaches a consumer to argv[1] when told "attach [DELAY]".
ATTACHER = """
    import sys, time, shmq
    delay = sys.stdin.readline().split()[1:]
    time.sleep(float(delay[0]) if delay else 0)
    c = shmq.Consumer(sys.argv[1])
    print("attached", flush=True)
    sys.stdin.readline()
"""


# ------------------------------------------------------------ add_reader

def test_add_reader_wakes_the_loop_for_a_message_from_another_process(name, children):
    child = children(PRODUCER, name)
    child.expect("ready")
    with shmq.Consumer(name) as c:
        c.fileno()
        assert c.poll() is None  # quiets the descriptor

        async def main(executor):
            loop = asyncio.get_running_loop()
            woke = loop.create_future()
            loop.add_reader(c.fileno(), lambda: woke.done() or woke.set_result(None))
            try:
                await asyncio.sleep(0.1)
                assert not woke.done(), "the loop woke with nothing published"
                child.tell("publish hello")
                await asyncio.wait_for(woke, 10)
            finally:
                loop.remove_reader(c.fileno())
            return c.poll()

        assert _run(main) == b"hello"
        assert c.poll() is None


# ------------------------------------------------------------ no threads

def test_poll_async_publish_async_and_wait_consumers_async_start_no_thread(names, children):
    quiet, remote = names(), names()
    child = children(PRODUCER, remote)
    child.expect("ready")
    with shmq.Producer(quiet, slot_size=16, capacity=4, lossless=True) as p, \
            shmq.Consumer(quiet) as c, shmq.Consumer(remote) as far:
        async def main(executor):
            threads = threading.active_count()
            assert await p.wait_consumers_async(1, timeout=5) == 1
            async with _tasks() as tasks:
                waiting = asyncio.create_task(c.poll_async(None))
                tasks.append(waiting)
                await asyncio.sleep(0.05)
                assert not waiting.done(), waiting.result()
                assert threading.active_count() == threads
                await p.publish_async(b"a")
                assert await asyncio.wait_for(waiting, 10) == b"a"
                assert await c.poll_async(timeout=0.05) is None
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(c.poll_async(None), 0.05)
                assert threading.active_count() == threads

                for i in range(4):
                    await p.publish_async(b"%d" % i, timeout=0)
                blocked = asyncio.create_task(p.publish_async(b"room", timeout=10))
                tasks.append(blocked)
                await asyncio.sleep(0.05)
                assert not blocked.done(), blocked.result()
                assert threading.active_count() == threads
                assert await c.poll_async() == b"0"  # frees one slot
                await asyncio.wait_for(blocked, 10)
                assert [await c.poll_async() for _ in range(4)] == [b"1", b"2", b"3", b"room"]

                remote_msg = asyncio.create_task(far.poll_async(None))
                tasks.append(remote_msg)
                await asyncio.sleep(0.05)
                child.tell("publish from-afar")
                assert await asyncio.wait_for(remote_msg, 10) == b"from-afar"
                assert threading.active_count() == threads

        _run(main)


@pytest.mark.timeout(120)
def test_wait_for_around_poll_async_only_times_out_and_loses_nothing_from_another_process(
        name, children):
    count = 2000
    sender = children(SENDER, name, count)
    sender.expect("ready")
    with shmq.Consumer(name) as c:
        sender.tell("go")

        async def main(executor):
            threads = threading.active_count()
            got, timeouts = [], 0
            while len(got) < count:
                try:
                    msg = await asyncio.wait_for(c.poll_async(None), 0.01)
                except TimeoutError:
                    timeouts += 1
                    if timeouts % 3 == 0:  # the consumer is free at once
                        msg = c.poll()
                        if msg is not None:
                            got.append(msg)
                    continue
                assert msg is not None, f"the stream ended after {len(got)} messages"
                got.append(msg)
            end = await c.poll_async(None)  # the stream ends once the sender closes
            assert threading.active_count() == threads
            return got, timeouts, end

        got, timeouts, end = _run(main, timeout=100)
        assert got == [b"%d" % i for i in range(count)]
        assert end is None and c.ended
        assert timeouts > 0, "no wait_for ever timed out: the test proved nothing"
        assert c.lost == 0 and c.poll() is None
        sender.expect("sent")
        assert sender.wait() == 0, sender.errors()


def test_500_consumers_awaiting_in_one_loop_cost_no_thread_and_no_cpu_and_all_wake(
        names, many_files):
    queues = [names() for _ in range(5)]
    with contextlib.ExitStack() as stack:
        producers = [stack.enter_context(shmq.Producer(q, slot_size=16, capacity=8, max_consumers=128))
                     for q in queues]
        consumers = [stack.enter_context(shmq.Consumer(queues[i % 5])) for i in range(500)]

        async def main(executor):
            threads = threading.active_count()
            async with _tasks() as tasks:
                tasks.extend(asyncio.create_task(c.poll_async(None)) for c in consumers)
                await asyncio.sleep(0.3)  # every one is awaiting
                assert not any(t.done() for t in tasks), next(t for t in tasks if t.done()).result()
                cpu, wall = time.process_time(), time.monotonic()
                await asyncio.sleep(1.0)
                cpu, wall = time.process_time() - cpu, time.monotonic() - wall
                assert threading.active_count() == threads
                for i, p in enumerate(producers):
                    p.publish(b"q%d" % i)
                t0 = time.monotonic()
                got = await asyncio.wait_for(asyncio.gather(*tasks), 20)
                return got, cpu, wall, time.monotonic() - t0

        got, cpu, wall, woke = _run(main, timeout=60)
        print(f"500 idle consumers: {cpu * 1000:.1f} ms CPU in {wall:.2f} s; all woke in "
              f"{woke * 1000:.1f} ms")
        assert got == [b"q%d" % (i % 5) for i in range(500)]
        assert cpu < 0.1, f"500 idle consumers took {cpu:.3f} s of CPU in {wall:.2f} s"


# ------------------------------------------------------------ publish_async

def test_a_producer_and_a_consumer_in_one_loop_pass_1000_messages_through_a_ring_of_4(name):
    """Each side waits on the other's wake-up in the same loop: one that is
    lost leaves both waiting for ever."""
    count = 1000
    with shmq.Producer(name, slot_size=16, capacity=4, lossless=True) as p, \
            shmq.Consumer(name) as c:
        async def produce():
            for i in range(count):
                await p.publish_async(b"%d" % i)
            p.close()

        async def consume():
            return [msg async for msg in c]

        async def main(executor):
            async with _tasks() as tasks:
                tasks.append(asyncio.create_task(produce()))
                got = await consume()
                await tasks[0]
                return got

        assert _run(main) == [b"%d" % i for i in range(count)]
        assert c.lost == 0


def test_publish_async_waits_for_a_slow_reader_in_another_process_and_keeps_order(
        name, children):
    count = 200
    with shmq.Producer(name, slot_size=16, capacity=8, lossless=True) as p:
        reader = children(SLOW_READER, name, count, 0.002)
        reader.expect("attached")

        async def main(executor):
            threads = threading.active_count()
            async with _ticking() as ticks:
                t0 = time.monotonic()
                for i in range(count):
                    await p.publish_async(b"%d" % i)
                took = time.monotonic() - t0
            assert threading.active_count() == threads
            return took, ticks[0]

        took, ticks = _run(main)
        assert reader.expect("ok") == "ok 0", reader.errors()
        assert reader.wait() == 0, reader.errors()
        assert p.next_sequence == count
        # The reader needs at least 192 pauses of 2 ms: the loop ran meanwhile.
        assert ticks >= 0.3 * took / 0.01, f"the loop ticked {ticks} times in {took:.2f} s"


def test_publish_async_raises_full_when_no_room_comes_before_its_timeout(name):
    with shmq.Producer(name, slot_size=16, capacity=4, lossless=True) as p, \
            shmq.Consumer(name) as c:
        for i in range(4):
            p.publish(b"%d" % i, timeout=0)

        async def main(executor):
            t0 = time.monotonic()
            with pytest.raises(shmq.Full):
                await p.publish_async(b"late", timeout=0.05)
            took = time.monotonic() - t0
            with pytest.raises(shmq.Full):
                await p.publish_async(b"late", timeout=0)
            assert p.next_sequence == 4
            assert c.poll() == b"0"
            await p.publish_async(b"fits", timeout=1)
            return took

        took = _run(main)
        assert 0.04 <= took < 1, took
        assert c.poll_many(10) == [b"1", b"2", b"3", b"fits"]
        assert p.next_sequence == 5


def test_publish_async_goes_on_when_the_consumer_holding_it_back_is_killed(name, children):
    """A consumer that dies frees no room and sends no wake-up: publish_async
    must still notice, as a blocking publish does."""
    with shmq.Producer(name, slot_size=16, capacity=4, lossless=True) as p:
        hog = children(ATTACHER, name)
        hog.tell("attach")
        hog.expect("attached")
        for i in range(4):
            p.publish(b"%d" % i, timeout=0)

        async def main(executor):
            async with _tasks() as tasks:
                blocked = asyncio.create_task(p.publish_async(b"after", timeout=20))
                tasks.append(blocked)
                await asyncio.sleep(0.1)
                assert not blocked.done(), blocked.result()
                hog.kill()
                t0 = time.monotonic()
                await blocked
                return time.monotonic() - t0

        took = _run(main)
        assert took < 5, f"publish_async saw the dead consumer after {took:.2f} s"
        assert p.next_sequence == 5


@pytest.mark.timeout(120)
def test_wait_for_around_publish_async_publishes_each_message_exactly_once(name, children):
    """The mirror of poll_async's cancellation: a publish_async cut short by
    wait_for either published its message or did not, so publishing the
    same message again after a TimeoutError sends it exactly once."""
    count = 200
    with shmq.Producer(name, slot_size=16, capacity=4, lossless=True) as p:
        reader = children(SLOW_READER, name, count, 0.004)
        reader.expect("attached")

        async def main(executor):
            i, timeouts = 0, 0
            while i < count:
                before = p.next_sequence
                try:
                    await asyncio.wait_for(p.publish_async(b"%d" % i), 0.003)
                except TimeoutError:
                    timeouts += 1
                    if p.next_sequence == before:  # not published: publish it again
                        continue
                assert p.next_sequence == before + 1
                i += 1
            return timeouts

        timeouts = _run(main, timeout=100)
        assert reader.expect("ok") == "ok 0", reader.errors()
        assert timeouts > 0, "no wait_for ever timed out: the test proved nothing"
        assert p.next_sequence == count


def test_closing_a_consumer_ends_its_poll_async_and_frees_the_descriptor_number(name):
    """close() during poll_async ends the wait with ValueError, as it ends a
    blocking poll; the next consumer may get the same descriptor number, and
    the loop must wait on it, not on the closed one's stale registration."""
    with shmq.Producer(name, slot_size=16, capacity=8) as p:
        async def main(executor):
            c = shmq.Consumer(name)
            fd = c.fileno()
            assert c.poll() is None
            async with _tasks() as tasks:
                waiting = asyncio.create_task(c.poll_async(None))
                tasks.append(waiting)
                await asyncio.sleep(0.05)
                c.close()
                with pytest.raises(ValueError, match="closed"):
                    await asyncio.wait_for(waiting, 5)
            with shmq.Consumer(name) as again:
                reused = again.fileno() == fd
                assert again.poll() is None
                async with _tasks() as tasks:
                    waiting = asyncio.create_task(again.poll_async(None))
                    tasks.append(waiting)
                    await asyncio.sleep(0.05)
                    p.publish(b"to the next one")
                    return reused, await asyncio.wait_for(waiting, 5)

        reused, msg = _run(main)
        assert msg == b"to the next one"
        print(f"the descriptor number was {'' if reused else 'not '}reused")


# ------------------------------------------------------------ end of stream

def test_async_for_ends_when_the_producer_in_another_process_closes(name, children):
    child = children(PRODUCER, name)
    child.expect("ready")
    with shmq.Consumer(name) as c:
        async def main(executor):
            threads = threading.active_count()

            async def feed():
                for word in ("a", "b", "c", "close"):
                    await asyncio.sleep(0.05)
                    child.tell(word if word == "close" else f"publish {word}")

            async with _tasks() as tasks:
                feeding = asyncio.create_task(feed())
                tasks.append(feeding)
                got = [msg async for msg in c]
                await feeding
            assert threading.active_count() == threads
            return got

        assert _run(main) == [b"a", b"b", b"c"]
        assert c.ended
        assert _run(lambda executor: c.poll_async(None)) is None  # at once: the stream ended


def test_async_for_over_an_ended_stream_yields_what_is_left_then_stops(name):
    with shmq.Producer(name, slot_size=16, capacity=8) as p, shmq.Consumer(name) as c:
        p.publish_many([b"x", b"y"])
        p.close()

        async def main(executor):
            return [msg async for msg in c]

        assert _run(main, timeout=10) == [b"x", b"y"]


# ------------------------------------------------------------ wait_consumers_async

def test_wait_consumers_async_returns_once_a_consumer_in_another_process_attaches(
        name, children):
    with shmq.Producer(name, slot_size=16, capacity=8, lossless=True) as p:
        attacher = children(ATTACHER, name)

        async def main(executor):
            threads = threading.active_count()
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await p.wait_consumers_async(1, timeout=0.1)
            timed_out = time.monotonic() - t0
            attacher.tell("attach 0.2")
            async with _ticking() as ticks:
                t0 = time.monotonic()
                count = await p.wait_consumers_async(1, timeout=20)
                took = time.monotonic() - t0
            assert threading.active_count() == threads
            return timed_out, count, took, ticks[0]

        timed_out, count, took, ticks = _run(main)
        assert 0.09 <= timed_out < 1, timed_out
        assert count == 1
        assert 0.1 <= took < 10, took
        assert ticks >= 5, f"the loop ticked {ticks} times in {took:.2f} s of waiting"
        attacher.expect("attached")


def test_wait_consumers_async_counts_only_live_consumers(name, children):
    with shmq.Producer(name, slot_size=16, capacity=8, lossless=True) as p:
        attacher = children(ATTACHER, name)
        attacher.tell("attach")
        attacher.expect("attached")

        async def main(executor):
            assert await p.wait_consumers_async(1, timeout=10) == 1
            attacher.kill()
            with pytest.raises(TimeoutError):
                await p.wait_consumers_async(1, timeout=0.3)

        _run(main)

"""shmq behaves like a Python library: asyncio, multiprocessing, iteration
and close, and types (stubs that match the runtime, a strict user script,
inspect.signature everywhere).

Everything that could hang has a timeout; every queue comes from the `name`
or `names` fixture, which unlinks it.
"""
import ast
import asyncio
import inspect
import multiprocessing
import os
import pickle
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import shmq

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "shmq" / "__init__.pyi"
TYPING = ROOT / "tests" / "typing"


def _env():
    """The environment of a child interpreter that imports the working tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run_async(coro, timeout=20):
    """asyncio.run with an overall bound, so no test can hang on the event loop."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


# A producer in another process: creates the queue, says "ready", publishes
# argv[3:] one by one, each after a pause, then closes (which ends the stream).
PRODUCER_SCRIPT = textwrap.dedent("""
    import sys, time, shmq
    name, pause, messages = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    with shmq.Producer(name, slot_size=64, capacity=64) as p:
        print("ready", flush=True)
        for m in messages:
            time.sleep(pause)
            p.publish(m.encode())
""")


def _producer_process(name, pause, *messages):
    """Starts PRODUCER_SCRIPT and returns once the queue exists."""
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER_SCRIPT, name, str(pause), *messages],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(60, proc.kill)  # readline has no timeout of its own
    timer.start()
    try:
        line = proc.stdout.readline()
    finally:
        timer.cancel()
    assert line == "ready\n", proc.communicate(timeout=10)
    return proc


# ---------------------------------------------------------------- asyncio

def test_poll_async_gets_messages_published_by_another_process(name):
    proc = _producer_process(name, 0.2, "first", "second")
    with shmq.Consumer(name, start="earliest") as c:
        try:
            async def read_two():
                return [await c.poll_async(timeout=None), await c.poll_async(timeout=None)]
            assert _run_async(read_two()) == [b"first", b"second"]
        finally:
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err


def test_poll_async_gets_a_message_published_by_another_thread(name):
    with shmq.Producer(name, slot_size=64, capacity=64) as p, shmq.Consumer(name) as c:
        timer = threading.Timer(0.2, p.publish, args=(b"from a thread",))
        timer.start()
        try:
            assert _run_async(c.poll_async()) == b"from a thread"
        finally:
            timer.join(10)


def test_poll_async_returns_none_after_its_timeout_on_a_quiet_queue(name):
    with shmq.Producer(name, slot_size=64, capacity=64), shmq.Consumer(name) as c:
        start = time.monotonic()
        assert _run_async(c.poll_async(timeout=0.1)) is None
        elapsed = time.monotonic() - start
        assert 0.09 <= elapsed < 0.6, elapsed


def test_async_for_ends_when_the_producer_closes_the_stream(name):
    proc = _producer_process(name, 0.05, "a", "b", "c")
    with shmq.Consumer(name, start="earliest") as c:
        try:
            async def read_all():
                return [msg async for msg in c]
            assert _run_async(read_all()) == [b"a", b"b", b"c"]
        finally:
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert c.ended


def test_an_idle_poll_async_costs_no_cpu_and_leaves_the_event_loop_free(name):
    with shmq.Producer(name, slot_size=64, capacity=64), shmq.Consumer(name) as c:
        async def idle():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            t = asyncio.create_task(ticker())
            cpu0, wall0 = time.process_time(), time.monotonic()
            msg = await c.poll_async(timeout=1.0)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            t.cancel()
            return msg, cpu, wall, ticks

        msg, cpu, wall, ticks = _run_async(idle())
        assert msg is None
        assert 0.95 <= wall < 3, wall
        # The ticker itself wakes 100 times a second; the wait must add next to nothing.
        assert cpu < 0.1, f"{cpu:.3f} s of CPU in {wall:.2f} s idle"
        assert ticks >= 30, f"the event loop ran only {ticks} ticks of 10 ms in {wall:.2f} s"


def test_a_cancelled_poll_async_frees_the_consumer_at_once_and_loses_nothing(name):
    """Cancelling poll_async interrupts the executor thread's wait and lets
    it leave the consumer before the cancellation goes on: the next call
    never meets RuntimeError("... in use by another thread"). A message
    published after the cancel stays in the queue for the next poll."""
    with shmq.Producer(name, slot_size=64, capacity=64) as p, shmq.Consumer(name) as c:
        async def cancel_then_poll():
            task = asyncio.create_task(c.poll_async(timeout=None))
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            took = time.monotonic() - t0
            assert c.poll() is None  # free at once; nothing published yet
            p.publish(b"after the cancel")
            return took, await c.poll_async(timeout=5)

        took, msg = _run_async(cancel_then_poll())
        assert msg == b"after the cancel"
        assert took < 0.5, f"the cancel took {took:.2f} s"


def test_a_message_that_arrives_while_a_cancelled_wait_runs_is_read_by_the_next_poll(name):
    with shmq.Producer(name, slot_size=64, capacity=64) as p, shmq.Consumer(name) as c:
        async def cancel_publish_poll():
            task = asyncio.create_task(c.poll_async(timeout=None))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            p.publish(b"during the wait")   # the cancelled wait consumed nothing
            return c.poll()

        assert _run_async(cancel_publish_poll()) == b"during the wait"
        assert c.lost == 0 and c.poll() is None


@pytest.mark.timeout(120)
def test_wait_for_on_poll_async_only_times_out_and_delivers_every_message_once_in_order(name):
    """A 10 ms wait_for around poll_async, over and over, while another thread
    publishes 2,000 messages in bursts: every cancel lands somewhere in the
    executor's wait, and none may lose, repeat or reorder a message or leave
    the consumer busy (RuntimeError)."""
    count = 2000
    with shmq.Producer(name, slot_size=64, capacity=256, lossless=True) as p, \
            shmq.Consumer(name) as c:
        def produce():
            rng = random.Random(2)
            for i in range(count):
                p.publish(b"%d" % i, timeout=60)
                if rng.random() < 0.05:
                    time.sleep(rng.random() * 0.03)

        async def consume():
            got, timeouts = [], 0
            while len(got) < count:
                try:
                    got.append(await asyncio.wait_for(c.poll_async(None), 0.01))
                except asyncio.TimeoutError:
                    timeouts += 1
            return got, timeouts

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            got, timeouts = _run_async(consume(), timeout=100)
        finally:
            producer.join(60)
        assert got == [b"%d" % i for i in range(count)]
        assert timeouts > 0, "no wait_for ever timed out: the test proved nothing"
        assert c.lost == 0 and c.poll() is None


# ------------------------------------------------------ multiprocessing

def _child_reads(consumer, count, results):
    msgs = [consumer.poll(timeout=10) for _ in range(count)]
    results.put((msgs, consumer.poll(timeout=0), consumer.position))


def _child_uses_inherited_producer(producer, results):
    try:
        producer.publish(b"from the child")
        outcome = "published"
    except shmq.ProducerBusy as e:
        outcome = f"ProducerBusy: {e}"
    except Exception as e:  # reported, not swallowed: the parent asserts on it
        outcome = f"{type(e).__name__}: {e}"
    producer.close()  # must neither end the stream nor unlink
    results.put(outcome)


def _join(proc):
    proc.join(60)
    if proc.is_alive():
        proc.kill()
        proc.join(10)
        pytest.fail("child process hung")


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_a_consumer_passed_to_a_child_reads_on_from_the_parents_position(name, method):
    """spawn and forkserver pickle the Consumer (by name and position) and the
    child attaches its own; fork hands the child a copy of the object itself."""
    ctx = multiprocessing.get_context(method)
    with shmq.Producer(name, slot_size=64, capacity=64) as p, \
            shmq.Consumer(name, start="earliest") as c:
        for i in range(10):
            p.publish(b"m%d" % i)
        assert [c.poll() for _ in range(3)] == [b"m0", b"m1", b"m2"]
        assert pickle.loads(pickle.dumps(c)).position == 3  # by name and position
        results = ctx.Queue()
        child = ctx.Process(target=_child_reads, args=(c, 7, results))
        child.start()
        try:
            msgs, extra, position = results.get(timeout=60)
        finally:
            _join(child)
        assert child.exitcode == 0
        assert msgs == [b"m%d" % i for i in range(3, 10)]
        assert extra is None and position == 10
        assert c.position == 3 and c.poll() == b"m3"  # the parent's consumer is its own


def test_a_producer_refuses_to_pickle_and_says_why_and_what_to_do(name):
    with shmq.Producer(name, slot_size=64, capacity=64) as p:
        with pytest.raises(TypeError) as err:
            pickle.dumps(p)
        message = str(err.value)
        assert "one producer" in message            # why
        assert repr(name) in message and "Consumer" in message   # what to do instead
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=_child_uses_inherited_producer, args=(p, ctx.Queue()))
        with pytest.raises(TypeError, match="one producer"):
            child.start()
        assert not p.closed and p.publish(b"still mine") == 0


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # 3.12+: fork with threads
def test_a_producer_inherited_through_fork_cannot_publish(name):
    ctx = multiprocessing.get_context("fork")
    with shmq.Producer(name, slot_size=64, capacity=64) as p, shmq.Consumer(name) as c:
        results = ctx.Queue()
        child = ctx.Process(target=_child_uses_inherited_producer, args=(p, results))
        child.start()
        try:
            outcome = results.get(timeout=60)
        finally:
            _join(child)
        assert outcome.startswith("ProducerBusy"), outcome
        assert c.poll() is None                        # nothing from the child
        assert not c.ended and shmq.exists(name)       # its close ended nothing
        p.publish(b"parent")
        assert c.poll() == b"parent"


# ------------------------------------------------------ iteration and close

def _iterate_in_thread(c):
    got, errors = [], []

    def run():
        try:
            for msg in c:
                got.append(msg)
        except BaseException as e:  # the test asserts there is none
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, got, errors


def test_for_loop_ends_cleanly_when_another_thread_closes_the_consumer(name):
    with shmq.Producer(name, slot_size=64, capacity=64) as p:
        c = shmq.Consumer(name)
        t, got, errors = _iterate_in_thread(c)
        p.publish(b"one")
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        c.close()  # while the thread waits for the next message
        t.join(10)
        assert not t.is_alive(), "iteration did not end after close()"
        assert errors == [] and got == [b"one"]
        assert c.closed


def test_for_loop_ends_at_end_of_stream(name):
    p = shmq.Producer(name, slot_size=64, capacity=64)
    with shmq.Consumer(name) as c:
        t, got, errors = _iterate_in_thread(c)
        for m in (b"x", b"y"):
            p.publish(m)
        time.sleep(0.05)
        p.close()
        t.join(10)
        assert not t.is_alive(), "iteration did not end at end of stream"
        assert errors == [] and got == [b"x", b"y"] and c.ended


# ----------------------------------------------------------------- typing

def _public_callables():
    yield "unlink", shmq.unlink
    yield "exists", shmq.exists
    yield "inspect", shmq.inspect
    yield "Producer", shmq.Producer
    yield "Consumer", shmq.Consumer
    dunders = {"__enter__", "__exit__", "__iter__", "__next__", "__aiter__", "__anext__"}
    for cls in (shmq.Producer, shmq.Consumer, shmq.Lease):
        for attr in sorted(a for a in dir(cls) if not a.startswith("_") or a in dunders):
            value = inspect.getattr_static(cls, attr)
            if isinstance(value, property) or inspect.isgetsetdescriptor(value) \
                    or not callable(getattr(cls, attr)):
                continue
            yield f"{cls.__name__}.{attr}", getattr(cls, attr)


@pytest.mark.parametrize("qualname, obj", list(_public_callables()),
                         ids=[q for q, _ in _public_callables()])
def test_inspect_signature_works_on_every_public_callable(qualname, obj):
    sig = inspect.signature(obj)
    if "." in qualname:  # a method: its first parameter is self, positional-only or not
        assert list(sig.parameters)[:1] == ["self"], f"{qualname}{sig}"


@pytest.mark.parametrize("cls", [shmq.Producer, shmq.Consumer], ids=lambda cls: cls.__name__)
def test_constructor_signature_names_every_keyword_of_the_stub(cls):
    stub = _stub_classes()[cls.__name__]
    init = next(f for f in stub.body if isinstance(f, ast.FunctionDef)
                and f.name in ("__init__", "__new__"))
    stub_names = [a.arg for a in init.args.args[1:] + init.args.kwonlyargs]
    assert list(inspect.signature(cls).parameters) == stub_names


def _stub_classes():
    tree = ast.parse(STUB.read_text())
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _is_final(cls_node):
    return any((isinstance(d, ast.Name) and d.id == "final")
               or (isinstance(d, ast.Attribute) and d.attr == "final")
               for d in cls_node.decorator_list)


@pytest.mark.parametrize("cls", [shmq.Producer, shmq.Consumer, shmq.Lease],
                         ids=lambda cls: cls.__name__)
def test_a_class_is_final_in_the_stub_exactly_when_it_cannot_be_subclassed(cls):
    try:
        type("Sub", (cls,), {})
        subclassable = True
    except TypeError:
        subclassable = False
    assert subclassable == (cls is not shmq.Lease)
    assert _is_final(_stub_classes()[cls.__name__]) == (not subclassable)


def test_every_exit_returns_none_at_runtime_and_in_the_stub(name):
    for cls_node in _stub_classes().values():
        for f in cls_node.body:
            if isinstance(f, ast.FunctionDef) and f.name == "__exit__":
                assert isinstance(f.returns, ast.Constant) and f.returns.value is None, \
                    f"{cls_node.name}.__exit__ should be annotated -> None"
    with shmq.Producer(name, slot_size=64, capacity=64) as p:
        lease = p.loan(8)
        lease.__enter__()
        assert lease.__exit__(None, None, None) is None
        c = shmq.Consumer(name)
        c.__enter__()
        assert c.__exit__(None, None, None) is None
    assert p.__exit__(None, None, None) is None  # already closed: still None


def _mypy():
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.skip("mypy is not installed (pip install mypy, or the [test] extra)")


def _mypy_run(args, tmp_path, timeout=300):
    env = _env()
    env["MYPYPATH"] = str(ROOT)  # the working tree's stubs, ahead of any installed shmq
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"),
                           "--python-version", "3.11", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_stubtest_finds_the_stubs_consistent_with_the_runtime(tmp_path):
    _mypy()
    env = _env()
    env["MYPYPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "shmq",
         "--allowlist", str(TYPING / "stubtest-allowlist.txt")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_user_script_type_checks_under_mypy_strict(tmp_path):
    _mypy()
    pytest.importorskip("numpy")
    result = _mypy_run(["--strict", str(TYPING / "user_script.py")], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_user_script_runs(name):
    pytest.importorskip("numpy")
    result = subprocess.run([sys.executable, str(TYPING / "user_script.py"), name], env=_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stdout + result.stderr


def test_the_stub_makes_a_user_check_for_an_empty_view(tmp_path):
    """Consumer.view() gives None when no message came: mypy must say so."""
    _mypy()
    script = tmp_path / "careless.py"
    script.write_text(textwrap.dedent("""
        import shmq

        def first(c: shmq.Consumer) -> bytes:
            with c.view(timeout=1.0) as msg:
                return msg.tobytes()
    """))
    result = _mypy_run(["--strict", str(script)], tmp_path)
    assert result.returncode == 1 and 'Item "None" of' in result.stdout \
        and "[union-attr]" in result.stdout, \
        result.stdout + result.stderr

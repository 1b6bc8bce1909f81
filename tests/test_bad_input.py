"""Bad input gets a specific exception and never crashes the interpreter.

The segment-damaging cases run in a fresh interpreter, and we check its exit
code too: a crash there would be a signal, not an exception.
"""
import os
import textwrap

import pytest

import shmq
from conftest import run_python


@pytest.mark.parametrize("kwargs, exc", [
    (dict(name=1), TypeError),
    (dict(name=None), TypeError),
    (dict(name=""), ValueError),
    (dict(name=".."), ValueError),
    (dict(name="a/b"), ValueError),
    (dict(name="x" * 201), ValueError),
    (dict(name="nul\0byte"), ValueError),
    (dict(name="ok", slot_size="big"), TypeError),
    (dict(name="ok", slot_size=0), ValueError),
    (dict(name="ok", slot_size=-1), ValueError),
    (dict(name="ok", slot_size=2**40), ValueError),
    (dict(name="ok", slot_size=shmq.SLOT_SIZE_MAX + 1), ValueError),
    (dict(name="ok", capacity=3), ValueError),
    (dict(name="ok", capacity=1), ValueError),
    (dict(name="ok", capacity=1.5), TypeError),
    (dict(name="ok", mode=0), ValueError),
    (dict(name="ok", mode="rw"), TypeError),
])
def test_bad_producer_arguments(kwargs, exc, name):
    if kwargs.get("name") == "ok":
        kwargs["name"] = name
    with pytest.raises(exc):
        shmq.Producer(**kwargs)
    assert not shmq.exists(name)  # a refused geometry creates nothing


@pytest.mark.parametrize("args, kwargs, exc", [
    ((1,), {}, TypeError),
    (("a/b",), {}, ValueError),
    (("missing-queue-xyz",), {}, shmq.QueueNotFound),
    (("{name}", "middle"), {}, ValueError),
    (("{name}", 1.5), {}, TypeError),
    (("{name}", -1), {}, ValueError),
    (("{name}",), {"spin": -1}, ValueError),
    (("{name}",), {"spin": "fast"}, TypeError),
])
def test_bad_consumer_arguments(args, kwargs, exc, name):
    shmq.Producer(name, slot_size=8, capacity=8).close()
    args = tuple(a.format(name=name) if isinstance(a, str) else a for a in args)
    with pytest.raises(exc):
        shmq.Consumer(*args, **kwargs)


def test_bad_method_arguments(name):
    with shmq.Producer(name, slot_size=8, capacity=8) as p, shmq.Consumer(name) as c:
        for bad in (1, "text", None, [b"x"], object()):
            with pytest.raises(TypeError):
                p.publish(bad)
        with pytest.raises(TypeError):
            p.publish_many(5)
        with pytest.raises(TypeError):
            p.publish_many([b"ok", "not bytes"])
        assert p.next_sequence == 0
        with pytest.raises(shmq.MessageTooLarge, match="9 bytes exceeds max_message_size 8"):
            p.publish(b"x" * 9)
        with pytest.raises(TypeError):
            c.poll("1")
        with pytest.raises(ValueError):
            c.poll(-1)
        with pytest.raises(ValueError):
            c.poll(float("nan"))
        with pytest.raises(TypeError):
            c.poll(timeout=1, extra=2)
        with pytest.raises(TypeError):
            c.poll(1, 2)
        with pytest.raises(TypeError):
            c.poll_many()
        with pytest.raises(TypeError):
            c.poll_many("3")
        with pytest.raises(ValueError):
            c.poll_many(-1)
        for read_only in (b"bytes", memoryview(b"ro"), "str", 5):
            with pytest.raises(TypeError):
                c.poll_into(read_only)
            with pytest.raises(TypeError):
                c.poll_many_into(read_only)
        with pytest.raises(ValueError):
            c.poll_many_into(bytearray(8), -1)
        with pytest.raises(TypeError):
            shmq.unlink(3)
        with pytest.raises(ValueError):
            shmq.exists("../etc")


def test_missing_queue_raises_queue_not_found(name):
    with pytest.raises(shmq.QueueNotFound) as info:
        shmq.Consumer(name)
    assert isinstance(info.value, FileNotFoundError)


def _run_isolated(body: str, name: str):
    code = textwrap.dedent(f"""
        import os, shmq
        name = {name!r}
        path = "/dev/shm/shmq-" + name
    """) + textwrap.dedent(body)
    result = run_python(code)
    assert result.returncode == 0, result.stderr  # a crash would be a negative code (signal)
    return result.stdout


def test_segment_of_garbage_is_incompatible_in_a_subprocess(name):
    out = _run_isolated("""
        with open(path, "wb") as f:
            f.write(os.urandom(65536))
        os.chmod(path, 0o600)  # ours, so only its contents are wrong
        for make in (lambda: shmq.Consumer(name), lambda: shmq.Producer(name)):
            try:
                make()
            except shmq.IncompatibleQueue as e:
                print("IncompatibleQueue:", e)
    """, name)
    assert out.count("IncompatibleQueue") == 2


def test_truncated_segment_is_incompatible_in_a_subprocess(name):
    out = _run_isolated("""
        shmq.Producer(name, slot_size=64, capacity=64).close()
        os.truncate(path, os.path.getsize(path) - 100)
        for make in (lambda: shmq.Consumer(name), lambda: shmq.Producer(name)):
            try:
                make()
            except shmq.IncompatibleQueue as e:
                print("IncompatibleQueue:", e)
        os.truncate(path, 0)
        try:
            shmq.Consumer(name)
        except shmq.IncompatibleQueue as e:
            print("IncompatibleQueue:", e)
    """, name)
    assert out.count("IncompatibleQueue") == 3


def test_damaged_header_fields_are_incompatible_in_a_subprocess(name):
    out = _run_isolated("""
        import struct
        # (offset, format, value): magic, version, slot_size, capacity
        for offset, fmt, value in [(0, "<Q", 7), (8, "<I", 99), (16, "<I", 2**31), (24, "<I", 6)]:
            shmq.Producer(name, slot_size=64, capacity=64).close()
            with open(path, "r+b") as f:
                f.seek(offset)
                f.write(struct.pack(fmt, value))
            try:
                shmq.Consumer(name)
            except shmq.IncompatibleQueue as e:
                print("IncompatibleQueue:", e)
            shmq.unlink(name)
    """, name)
    assert out.count("IncompatibleQueue") == 4


def test_queue_without_permission_raises_permission_error(name):
    if os.geteuid() == 0:
        # root bypasses file modes; drop to nobody in a child to test it.
        out = _run_isolated("""
            shmq.Producer(name, slot_size=8, capacity=8).close()
            pid = os.fork()
            if pid == 0:
                os.setgid(65534); os.setuid(65534)
                try:
                    shmq.Consumer(name)
                except PermissionError as e:
                    print("PermissionError", e)
                os._exit(0)
            os.waitpid(pid, 0)
        """, name)
        assert "PermissionError" in out
    else:
        shmq.Producer(name, slot_size=8, capacity=8).close()
        os.chmod(f"/dev/shm/shmq-{name}", 0)
        with pytest.raises(PermissionError):
            shmq.Consumer(name)

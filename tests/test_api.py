"""The public Python API, one behaviour per test, on real shared memory."""
import array
import os
import threading
import time

import pytest

import shmq


def test_publish_then_poll_returns_exact_bytes_and_sequence(name):
    with shmq.Producer(name, slot_size=100, capacity=8) as p, shmq.Consumer(name) as c:
        for length in (0, 1, 7, 8, 9, 99, 100):
            payload = bytes((length + i) % 256 for i in range(length))
            seq = p.publish(payload)
            assert seq == p.next_sequence - 1
            assert c.poll() == payload
        assert c.poll() is None
        assert c.lost == 0
        assert c.position == 7


def test_publish_accepts_any_contiguous_bytes_like(name):
    np = pytest.importorskip("numpy")
    with shmq.Producer(name, slot_size=64, capacity=8) as p, shmq.Consumer(name) as c:
        p.publish(bytearray(b"ba"))
        p.publish(memoryview(b"xxmvxx")[2:4])
        p.publish(array.array("H", [1, 2]))
        p.publish(np.arange(3, dtype=np.uint8))
        p.publish(np.zeros((2, 2), dtype=np.uint8))
        assert c.poll_many(10) == [b"ba", b"mv", array.array("H", [1, 2]).tobytes(),
                                   b"\x00\x01\x02", b"\x00" * 4]


def test_publish_many_returns_last_sequence(name):
    with shmq.Producer(name, slot_size=16, capacity=16) as p, shmq.Consumer(name) as c:
        assert p.publish_many([b"a", b"bb", b"ccc"]) == 2
        assert p.publish_many(iter([b"d"])) == 3
        assert p.publish_many([]) is None
        assert c.poll_many(100) == [b"a", b"bb", b"ccc", b"d"]


def test_publish_many_is_all_or_nothing_on_oversize(name):
    with shmq.Producer(name, slot_size=4, capacity=16) as p:
        with pytest.raises(shmq.MessageTooLarge):
            p.publish_many([b"ok", b"toolong"])
        assert p.next_sequence == 0


def test_poll_many_respects_max_and_waits_only_for_the_first(name):
    with shmq.Producer(name, slot_size=8, capacity=16) as p, shmq.Consumer(name) as c:
        p.publish_many([b"%d" % i for i in range(5)])
        assert c.poll_many(2) == [b"0", b"1"]
        assert c.poll_many(0) == []
        assert c.poll_many(10, timeout=1) == [b"2", b"3", b"4"]
        start = time.monotonic()
        assert c.poll_many(10, timeout=0.05) == []
        assert time.monotonic() - start >= 0.05


def test_poll_into_copies_into_a_caller_buffer(name):
    with shmq.Producer(name, slot_size=32, capacity=8) as p, shmq.Consumer(name) as c:
        buf = bytearray(32)
        assert c.poll_into(buf) is None
        p.publish(b"hello")
        assert c.poll_into(buf) == 5
        assert buf[:5] == b"hello"
        p.publish(b"0123456789")
        small = bytearray(4)
        with pytest.raises(shmq.MessageTooLarge, match="10 bytes"):
            c.poll_into(small)
        assert c.poll_into(memoryview(buf)[8:], timeout=1) == 10  # the message was kept
        assert buf[8:18] == b"0123456789"


def test_poll_many_into_packs_messages_back_to_back(name):
    with shmq.Producer(name, slot_size=8, capacity=16) as p, shmq.Consumer(name) as c:
        p.publish_many([b"a", b"bb", b"ccc", b"dddd"])
        buf = bytearray(6)
        assert c.poll_many_into(buf) == [1, 2, 3]
        assert buf == b"abbccc"
        assert c.poll_many_into(buf, 10, timeout=0) == [4]
        assert c.poll_many_into(buf, max_messages=10) == []


def test_timeout_none_waits_until_a_message_arrives(name):
    with shmq.Producer(name, slot_size=8, capacity=8) as p, shmq.Consumer(name) as c:
        timer = threading.Timer(0.1, p.publish, args=(b"late",))
        timer.start()
        try:
            assert c.poll(timeout=None) == b"late"
        finally:
            timer.join()


def test_poll_timeout_returns_none_after_the_timeout(name):
    with shmq.Producer(name, slot_size=8, capacity=8), shmq.Consumer(name) as c:
        start = time.monotonic()
        assert c.poll(timeout=0.1) is None
        elapsed = time.monotonic() - start
        assert 0.1 <= elapsed < 1.0


def test_iteration_blocks_for_each_message(name):
    with shmq.Producer(name, slot_size=8, capacity=8) as p, shmq.Consumer(name) as c:
        p.publish_many([b"1", b"2", b"3"])
        got = []
        for msg in c:
            got.append(msg)
            if len(got) == 3:
                break
        assert got == [b"1", b"2", b"3"]


def test_start_latest_and_earliest(name):
    with shmq.Producer(name, slot_size=8, capacity=4) as p:
        p.publish_many([b"%d" % i for i in range(6)])
        with shmq.Consumer(name, start="earliest") as early, shmq.Consumer(name) as late:
            # earliest skips the slot the producer rewrites next (sequence 2)
            assert early.position == 3 and late.position == 6
            assert early.poll_many(10) == [b"3", b"4", b"5"]
            assert late.poll() is None


def test_lapped_consumer_counts_lost_messages(name):
    with shmq.Producer(name, slot_size=8, capacity=16) as p, shmq.Consumer(name) as c:
        p.publish_many([i.to_bytes(8, "little") for i in range(100)])
        got = [int.from_bytes(m, "little") for m in c.poll_many(1000)]
        assert got == list(range(got[0], 100))
        assert c.lost == got[0]
        assert len(got) + c.lost == 100


def test_repr_shows_name_geometry_and_position(name):
    with shmq.Producer(name, slot_size=64, capacity=16) as p, shmq.Consumer(name) as c:
        p.publish(b"x")
        assert repr(p) == f"<shmq.Producer name='{name}' slot_size=64 capacity=16 next_sequence=1>"
        assert repr(c) == f"<shmq.Consumer name='{name}' slot_size=64 capacity=16 position=0 lost=0>"
    assert repr(p) == f"<shmq.Producer name='{name}' closed>"
    assert repr(c) == f"<shmq.Consumer name='{name}' closed>"


def test_close_is_idempotent_and_later_use_raises(name):
    p = shmq.Producer(name, slot_size=8, capacity=8)
    c = shmq.Consumer(name)
    for obj in (p, c):
        assert not obj.closed
        obj.close()
        obj.close()
        assert obj.closed
    for call in (lambda: p.publish(b"x"), lambda: p.publish_many([b"x"]), lambda: p.slot_size,
                 lambda: c.poll(), lambda: c.poll_many(1), lambda: c.poll_into(bytearray(8)),
                 lambda: c.poll_many_into(bytearray(8)), lambda: next(iter(c)), lambda: c.lost,
                 lambda: c.position):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_context_managers_close_on_exit(name):
    with shmq.Producer(name, slot_size=8, capacity=8) as p:
        with shmq.Consumer(name) as c:
            pass
        assert c.closed
    assert p.closed


def test_producer_creates_attaches_and_continues_the_sequence(name):
    assert not shmq.exists(name)
    with shmq.Producer(name, slot_size=8, capacity=8) as p:
        p.publish_many([b"a", b"b", b"c"])
    assert shmq.exists(name)
    with shmq.Producer(name) as p:  # attaches, whatever the geometry
        assert (p.slot_size, p.capacity) == (8, 8)
        assert p.publish(b"d") == 3
    with shmq.Producer(name, slot_size=8, capacity=8) as p:
        assert p.next_sequence == 4


def test_producer_with_other_geometry_raises_incompatible(name):
    shmq.Producer(name, slot_size=8, capacity=8).close()
    with pytest.raises(shmq.IncompatibleQueue):
        shmq.Producer(name, slot_size=16)
    with pytest.raises(shmq.IncompatibleQueue):
        shmq.Producer(name, capacity=16)


def test_second_producer_is_busy(name):
    with shmq.Producer(name, slot_size=8, capacity=8):
        with pytest.raises(shmq.ProducerBusy):
            shmq.Producer(name)
    shmq.Producer(name).close()


def test_unlink_and_exists(name):
    shmq.Producer(name, slot_size=8, capacity=8).close()
    assert shmq.exists(name)
    assert os.path.exists(f"/dev/shm/shmq-{name}")  # findable: every segment starts with shmq
    shmq.unlink(name)
    assert not shmq.exists(name)
    with pytest.raises(shmq.QueueNotFound):
        shmq.unlink(name)


def test_unlink_on_close_removes_the_segment_and_consumers_never_do(name):
    p = shmq.Producer(name, slot_size=8, capacity=8, unlink_on_close=True)
    shmq.Consumer(name).close()
    assert shmq.exists(name)
    p.close()
    assert not shmq.exists(name)


def test_segment_is_created_with_mode_0600_whatever_the_umask(name):
    old = os.umask(0)
    try:
        shmq.Producer(name, slot_size=8, capacity=8).close()
    finally:
        os.umask(old)
    assert os.stat(f"/dev/shm/shmq-{name}").st_mode & 0o777 == 0o600


def test_segment_is_exactly_header_index_and_slots(name):
    shmq.Producer(name, slot_size=64, capacity=1024, max_message_size=64 * 1024).close()
    page = os.sysconf("SC_PAGE_SIZE")
    index = -(-1024 * 16 // page) * page  # 16-byte records, to a whole page
    # max_message_size changes nothing: large messages take more slots.
    assert os.stat(f"/dev/shm/shmq-{name}").st_size == page + index + 1024 * 64


def test_exceptions_are_shmq_errors_and_natural_builtins():
    assert issubclass(shmq.QueueNotFound, shmq.ShmqError)
    assert issubclass(shmq.QueueNotFound, FileNotFoundError)
    assert issubclass(shmq.IncompatibleQueue, shmq.ShmqError)
    assert issubclass(shmq.IncompatibleQueue, ValueError)
    assert issubclass(shmq.MessageTooLarge, shmq.ShmqError)
    assert issubclass(shmq.MessageTooLarge, ValueError)
    assert issubclass(shmq.ProducerBusy, shmq.ShmqError)


def test_every_public_object_has_a_docstring():
    for attr in shmq.__all__:
        obj = getattr(shmq, attr)
        if callable(obj):
            assert obj.__doc__, attr
    for cls in (shmq.Producer, shmq.Consumer):
        for member in dir(cls):
            if not member.startswith("_"):
                assert getattr(cls, member).__doc__, f"{cls.__name__}.{member}"


def test_package_ships_stub_and_py_typed():
    folder = os.path.dirname(shmq.__file__)
    assert os.path.exists(os.path.join(folder, "py.typed"))
    assert os.path.exists(os.path.join(folder, "__init__.pyi"))

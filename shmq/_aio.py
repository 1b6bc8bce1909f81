"""The package's Producer and Consumer: the C types plus asyncio.

Nothing here uses a thread. An awaiting consumer registers its descriptor
(``Consumer.fileno()``, a socket the producer writes one datagram to when
the consumer has gone quiet) with the running loop, and polls on the loop
when it turns readable. Every poll runs on the event loop with no await
between the poll and the return, so a cancelled ``poll_async`` has consumed
nothing and loses nothing, and the consumer is usable as soon as the
cancellation is delivered. A lossless producer's ``publish_async`` waits the
same way on its own descriptor, which consumers write to when they free
room (docs/waiting.md).

Several coroutines of one loop may wait on the same descriptor: the loop
holds one reader per descriptor, and it wakes them all.
"""
import asyncio
from typing import Any, Dict, Optional, Set
from weakref import WeakKeyDictionary

from . import _shmq  # type: ignore[attr-defined]

# A lossless producer waiting for room looks again at least this often:
# consumers that die free nothing and send nothing (the core's 10 ms slice).
_ROOM_RECHECK = 0.01
# Every consumer awaited in a loop is armed again this often, by one timer
# per loop, without waking its coroutine: a consumer of the same queue can
# clear the shared wake flag (docs/waiting.md, Trust), and re-arming raises
# it again (and makes the descriptor readable if a message is there).
_SAFETY_RECHECK = 1.0
# A consumer without a descriptor (every consumer entry taken) looks this often.
_NO_DESCRIPTOR_SLICE = 0.01
# wait_consumers_async looks this often.
_ATTACH_LOOK = 0.002

# loop -> descriptor -> the futures waiting for it to turn readable
_waiting: "WeakKeyDictionary[asyncio.AbstractEventLoop, Dict[int, Set[asyncio.Future]]]" = (
    WeakKeyDictionary()
)


# loop -> the consumers awaited in it now, and the timer that re-arms them
_awaited: "WeakKeyDictionary[asyncio.AbstractEventLoop, Dict[Any, int]]" = WeakKeyDictionary()
_rearm_timers: "WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.TimerHandle]" = WeakKeyDictionary()


def _rearm_all(loop: asyncio.AbstractEventLoop) -> None:
    _rearm_timers.pop(loop, None)
    consumers = _awaited.get(loop)
    if not consumers:
        return
    for consumer in list(consumers):
        consumer._rearm()
    _rearm_timers[loop] = loop.call_later(_SAFETY_RECHECK, _rearm_all, loop)


def _awaiting(loop: asyncio.AbstractEventLoop, consumer: Any, add: bool) -> None:
    consumers = _awaited.setdefault(loop, {})
    if add:
        consumers[consumer] = consumers.get(consumer, 0) + 1
        if loop not in _rearm_timers:
            _rearm_timers[loop] = loop.call_later(_SAFETY_RECHECK, _rearm_all, loop)
        return
    left = consumers.get(consumer, 1) - 1
    if left > 0:
        consumers[consumer] = left
    else:
        consumers.pop(consumer, None)
    if not consumers:
        timer = _rearm_timers.pop(loop, None)
        if timer is not None:
            timer.cancel()


def _wake(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    group = _waiting.get(loop, {}).pop(fd, set())
    loop.remove_reader(fd)
    for fut in group:
        if not fut.done():
            fut.set_result(None)


def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> "asyncio.Future[None]":
    fut: "asyncio.Future[None]" = loop.create_future()
    by_fd = _waiting.setdefault(loop, {})
    group = by_fd.get(fd)
    if group is None:
        group = by_fd[fd] = set()
        loop.add_reader(fd, _wake, loop, fd)
    group.add(fut)
    return fut


def _forget(loop: asyncio.AbstractEventLoop, fd: int, fut: "asyncio.Future[None]") -> None:
    by_fd = _waiting.get(loop)
    if by_fd is None:
        return
    group = by_fd.get(fd)
    if group is None:
        return
    group.discard(fut)
    if not group:
        del by_fd[fd]
        loop.remove_reader(fd)


def _release(fd: int) -> None:
    """Before a descriptor is closed: wake whoever waits on it, in any loop,
    and take it out of the loops (a closed number may be reused at once)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for loop, by_fd in list(_waiting.items()):
        group = by_fd.pop(fd, None)
        if group is None or loop.is_closed():
            continue
        if loop is running:
            _drop(loop, fd, group)
        else:
            # Another thread's loop: asyncio is not thread-safe, so the loop
            # does it. Its epoll drops the descriptor when we close it; the
            # selector forgets the number when this runs.
            loop.call_soon_threadsafe(_drop, loop, fd, group)


def _drop(loop: asyncio.AbstractEventLoop, fd: int, group: "Set[asyncio.Future[None]]") -> None:
    loop.remove_reader(fd)
    for fut in group:
        if not fut.done():
            fut.set_result(None)


def _settle(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


async def _until_readable(loop: asyncio.AbstractEventLoop, fd: int, timeout: Optional[float]) -> None:
    """Returns when fd is readable, or after timeout seconds (None: never)."""
    fut = _readable(loop, fd)
    timer = None if timeout is None else loop.call_later(timeout, _settle, fut)
    try:
        await fut
    finally:
        if timer is not None:
            timer.cancel()
        _forget(loop, fd, fut)


class Consumer(_shmq.Consumer):
    __slots__ = ("_async_fd",)
    _async_fd: Optional[int]
    __doc__ = _shmq.Consumer.__doc__
    __module__ = "shmq"

    def _descriptor(self) -> Optional[int]:
        """The descriptor to wait on, or None when the consumer can have
        none (every entry taken; a handle inherited through fork(), whose
        entry is the parent's): then poll_async looks every few ms."""
        try:
            fd: Optional[int] = self.fileno()
        except _shmq.TooManyConsumers:
            fd = None
        except ChildProcessError:
            fd = None
        self._async_fd = fd
        return fd

    async def poll_async(self, timeout: Optional[float] = None) -> Optional[bytes]:
        """Await the next message, up to timeout seconds (None: forever).

        Returns None on timeout, and at once when the producer closed the
        stream and everything was read. Uses no thread: it waits on the
        consumer's descriptor (fileno()) in the running loop. Cancelling it
        (asyncio.wait_for's timeout, task.cancel()) consumes nothing: the
        message stays for the next poll, and the consumer is free again at
        once.
        """
        msg = self.poll()
        if msg is not None:
            return msg
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        fd = self._descriptor()
        while True:
            # After fileno() exists, a poll that finds nothing arms it.
            msg = self.poll()
            if msg is not None:
                return msg
            if self.ended:
                return None
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return None
            if fd is None:
                await asyncio.sleep(_NO_DESCRIPTOR_SLICE if left is None else min(left, _NO_DESCRIPTOR_SLICE))
            else:
                _awaiting(loop, self, True)
                try:
                    await _until_readable(loop, fd, left)
                finally:
                    _awaiting(loop, self, False)
            if self.closed:
                raise ValueError("Consumer was closed while poll_async() waited")

    def __aiter__(self) -> "Consumer":
        return self

    async def __anext__(self) -> bytes:
        msg = await self.poll_async(None)
        if msg is None:
            raise StopAsyncIteration
        return msg

    def close(self) -> None:
        fd = getattr(self, "_async_fd", None)
        try:
            if fd is not None and not self.closed:
                _release(fd)
        finally:
            super().close()

    close.__doc__ = _shmq.Consumer.close.__doc__

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class Producer(_shmq.Producer):
    __slots__ = ()
    __doc__ = _shmq.Producer.__doc__
    __module__ = "shmq"

    async def publish_async(self, data: Any, timeout: Optional[float] = None) -> int:
        """Publish data, awaiting room on a lossless queue for up to timeout
        seconds (None: forever); returns its sequence number, or raises Full
        when the timeout passes first. Uses no thread: it waits on a
        descriptor that consumers write to when they free room, and looks
        again every 10 ms for consumers that died. On a lossy queue it never
        waits."""
        try:
            return self.publish(data, timeout=0)
        except _shmq.Full:
            if timeout == 0:
                raise
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        fd = self._room_fileno()
        length = memoryview(data).nbytes
        while True:
            if self._room_or_arm(length):
                try:
                    return self.publish(data, timeout=0)
                except _shmq.Full:
                    continue
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return self.publish(data, timeout=0)  # raises Full, unless room came just now
            await _until_readable(loop, fd, _ROOM_RECHECK if left is None else min(left, _ROOM_RECHECK))
            if self.closed:
                raise ValueError("Producer was closed while publish_async() waited for room")

    async def wait_consumers_async(self, n: int, timeout: Optional[float] = None) -> int:
        """wait_consumers, awaited: returns the count once at least n
        consumers are attached, or raises TimeoutError. Looks every 2 ms,
        on the loop, without a thread."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            count = self._count_consumers(n)
            if count is not None:
                return count
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError(f"fewer than {n} consumers attached to {self.name!r} in time")
            await asyncio.sleep(_ATTACH_LOOK if left is None else min(left, _ATTACH_LOOK))

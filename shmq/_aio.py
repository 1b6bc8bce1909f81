"""The package's Consumer: the C type plus asyncio.

An awaiting consumer waits in a thread of the event loop's default executor
(``Consumer._wait_for_async``, which is ``wait``: it releases the GIL and
sleeps on the queue's futex), never in a busy loop on the event loop: idle,
it costs no CPU. The thread only waits; it consumes nothing. Every poll runs
on the event loop, after the wait, with no await between the poll and the
return, so a cancelled ``poll_async`` has consumed nothing and loses nothing.

Cancellation interrupts the thread's wait (``_interrupt``) and lets it leave
the consumer before the cancellation goes on, so the consumer is usable as
soon as ``asyncio.wait_for`` raises TimeoutError.
"""
import asyncio
from typing import Optional

from . import _shmq  # type: ignore[attr-defined]

# Longest single wait in the executor. Cancellation does not need it (it
# interrupts the wait); it bounds how long a poll_async that is never
# cancelled (its loop abandoned) keeps a thread, and the interpreter's exit,
# waiting.
_WAIT_SLICE = 1.0


class Consumer(_shmq.Consumer):
    __slots__ = ()
    __doc__ = _shmq.Consumer.__doc__
    __module__ = "shmq"

    async def poll_async(self, timeout: Optional[float] = None) -> Optional[bytes]:
        """Await the next message, up to timeout seconds (None: forever).

        Returns None on timeout, and at once when the producer closed the
        stream and everything was read. Cancelling it (asyncio.wait_for's
        timeout, task.cancel()) consumes nothing: the message stays for the
        next poll, and the consumer is free again at once.
        """
        msg = self.poll()
        if msg is not None:
            return msg
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = _WAIT_SLICE if deadline is None else min(_WAIT_SLICE, deadline - loop.time())
            if left <= 0:
                return None
            ready = await self._wait_in_executor(loop, left)
            msg = self.poll()
            if msg is not None:
                return msg
            if not ready and self.ended:
                return None

    async def _wait_in_executor(self, loop: asyncio.AbstractEventLoop, timeout: float) -> bool:
        waiting = loop.run_in_executor(None, self._wait_for_async, timeout)
        try:
            return await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # The thread may still be in the core's wait: end it, and wait
            # for it to leave the consumer, however often we are cancelled.
            while not waiting.done():
                self._interrupt()
                try:
                    await asyncio.shield(waiting)
                except asyncio.CancelledError:
                    pass
                except Exception:  # its error is not ours to report: we were cancelled
                    break
            if not waiting.cancelled():
                waiting.exception()  # retrieved, so asyncio does not log it
            raise

    def __aiter__(self) -> "Consumer":
        return self

    async def __anext__(self) -> bytes:
        msg = await self.poll_async(None)
        if msg is None:
            raise StopAsyncIteration
        return msg

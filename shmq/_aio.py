"""The package's Consumer: the C type plus asyncio.

An awaiting consumer waits in a thread of the event loop's default executor
(``Consumer.wait``, which releases the GIL and sleeps on the queue's futex),
never in a busy loop on the event loop: idle, it costs no CPU. Each wait
lasts at most a quarter of a second, so a cancelled ``poll_async`` frees its
thread, and the consumer, within that time; until then the consumer counts
as in use by that thread.
"""
import asyncio
from typing import Optional

from . import _shmq  # type: ignore[attr-defined]

# Longest single wait in the executor: bounds how long a cancelled
# poll_async keeps a thread (and the consumer) busy.
_WAIT_SLICE = 0.25


class Consumer(_shmq.Consumer):
    __slots__ = ()
    __doc__ = _shmq.Consumer.__doc__
    __module__ = "shmq"

    async def poll_async(self, timeout: Optional[float] = None) -> Optional[bytes]:
        """Await the next message, up to timeout seconds (None: forever).

        Returns None on timeout, and at once when the producer closed the
        stream and everything was read.
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
            ready = await loop.run_in_executor(None, self.wait, left)
            msg = self.poll()
            if msg is not None:
                return msg
            if not ready and self.ended:
                return None

    def __aiter__(self) -> "Consumer":
        return self

    async def __anext__(self) -> bytes:
        msg = await self.poll_async(None)
        if msg is None:
            raise StopAsyncIteration
        return msg

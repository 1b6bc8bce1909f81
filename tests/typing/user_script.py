"""A user's script, checked with `mypy --strict` against shmq's stubs and also run.

tests/test_python_conventions.py type-checks it and runs it as
`python tests/typing/user_script.py QUEUE_NAME` (it unlinks nothing: the test
owns the name). It touches what a user reaches for first: numpy arrays as
messages and as receive buffers, zero-copy loan/view, asyncio, and a lossless
producer with its keyword arguments.
"""
import asyncio
import sys
from typing import Dict, List, Optional, Union

import numpy as np
import numpy.typing as npt

import shmq


def publish_arrays(p: shmq.Producer) -> int:
    samples: npt.NDArray[np.float64] = np.linspace(0.0, 1.0, 8)
    seq: int = p.publish(samples)
    last: Optional[int] = p.publish_many([samples, samples[:4].copy(), b"raw bytes"])
    assert last is not None and last == seq + 3
    return seq


def loan_in_place(p: shmq.Producer) -> None:
    with p.loan(16, timeout=1.0) as out:
        out[:16] = bytes(range(16))


def read_into_numpy(c: shmq.Consumer) -> npt.NDArray[np.float64]:
    buf: npt.NDArray[np.float64] = np.zeros(8, dtype=np.float64)
    n: Optional[int] = c.poll_into(buf, timeout=1.0)
    assert n == buf.nbytes
    lengths: List[int] = c.poll_many_into(bytearray(4096), max_messages=3, timeout=1.0)
    assert lengths == [64, 32, 9]
    return buf


def view_in_place(c: shmq.Consumer) -> bytes:
    with c.view(timeout=1.0) as msg:
        if msg is None:  # no message within the timeout
            return b""
        return msg.tobytes()


def describe(name: str) -> str:
    """Type-checked only (main does not call it): inspect's dict is typed by key."""
    info = shmq.inspect(name)
    head: int = info["head"]
    registered: List[bool] = [entry["registered"] for entry in info["consumers"]]
    return f"{info['name']}: head {head}, {sum(registered)} registered, alive {info['producer_alive']}"


async def read_async(c: shmq.Consumer) -> List[bytes]:
    got: List[bytes] = []
    first: Optional[bytes] = await c.poll_async(timeout=1.0)
    if first is not None:
        got.append(first)
    async for msg in c:  # ends when the producer closes the stream
        got.append(msg)
    return got


def main(name: str) -> int:
    with shmq.Producer(name, slot_size=128, capacity=64, mode=0o600, lossless=True,
                       max_consumers=4) as p:
        assert p.lossless
        with shmq.Consumer(name, start="earliest", spin=0, register=True, wait=1.0) as c:
            publish_arrays(p)
            loan_in_place(p)
            assert np.array_equal(read_into_numpy(c), np.linspace(0.0, 1.0, 8))
            assert view_in_place(c) == bytes(range(16))
            table: List[Dict[str, Union[int, bool]]] = p.consumers
            assert len(table) >= 1
            p.publish(b"one")
            p.publish(b"two")
            p.close()  # ends the stream: the async for below stops after "two"
            got = asyncio.run(read_async(c))
            assert got == [b"one", b"two"], got
            assert c.ended and c.lost == 0
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

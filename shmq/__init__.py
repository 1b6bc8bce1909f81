"""shmq: the fastest correct way to move messages between processes on one Linux host.

One Producer publishes bytes into a ring of fixed-size slots in shared memory;
any number of Consumers each read every message at their own pace. A consumer
that falls more than a ring behind is told exactly how many messages it lost
(``Consumer.lost``) and never gets a torn message.

    with shmq.Producer("ticks", slot_size=256, capacity=65536) as p:
        p.publish(b"hello")

    with shmq.Consumer("ticks", start="earliest") as c:
        msg = c.poll(timeout=1.0)
"""
from importlib.util import find_spec as _find_spec

if _find_spec("._shmq", __name__) is None:  # a source folder whose extension was never built
    raise ImportError(f"shmq's C extension is not built in {__path__[0]}: run 'pip install -e .' "
                      "in the repository root (or bash scripts/test-all.sh), or import shmq from "
                      "outside the source tree")

from ._shmq import (
    CAPACITY_MAX,
    NAME_MAX,
    NAME_PREFIX,
    SLOT_SIZE_MAX,
    SPIN_MAX,
    CorruptSlot,
    Full,
    IncompatibleQueue,
    Lease,
    MessageTooLarge,
    Overwritten,
    ProducerBusy,
    QueueNotFound,
    ShmqError,
    TooManyConsumers,
    exists,
    inspect,
    unlink,
    wait_any,
)

from ._aio import Consumer, Producer

from importlib.metadata import version as _dist_version
__version__ = _dist_version(__name__)  # written once, in pyproject.toml

__all__ = [
    "Producer",
    "Consumer",
    "unlink",
    "exists",
    "inspect",
    "wait_any",
    "ShmqError",
    "QueueNotFound",
    "IncompatibleQueue",
    "MessageTooLarge",
    "ProducerBusy",
    "CorruptSlot",
    "Full",
    "TooManyConsumers",
    "Overwritten",
    "Lease",
    "SLOT_SIZE_MAX",
    "CAPACITY_MAX",
    "NAME_MAX",
    "NAME_PREFIX",
    "SPIN_MAX",
]

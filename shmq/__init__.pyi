import queue
from types import TracebackType
from typing import Any, AsyncIterator, Generic, Protocol, TypeVar, Dict, Iterable, Iterator, List, Literal, Optional, Type, TypedDict, Union, final

from typing_extensions import Buffer, Self

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

__version__: str
SLOT_SIZE_MAX: int
CAPACITY_MAX: int
NAME_MAX: int
NAME_PREFIX: str
SPIN_MAX: int

class ShmqError(Exception): ...
class QueueNotFound(ShmqError, FileNotFoundError): ...
class IncompatibleQueue(ShmqError, ValueError): ...
class MessageTooLarge(ShmqError, ValueError): ...
class ProducerBusy(ShmqError): ...
class CorruptSlot(ShmqError): ...
class TooManyConsumers(ShmqError): ...
class Overwritten(ShmqError): ...

class _ArrayInterface(Protocol):
    # numpy arrays: numpy's stubs declare __buffer__ only for Python >= 3.12 (PEP 688)
    @property
    def __array_interface__(self) -> Dict[str, Any]: ...

_BufferLike = Union[Buffer, _ArrayInterface]

_V = TypeVar("_V", memoryview, Optional[memoryview])

@final
class Lease(Generic[_V]):
    """A loan (Producer.loan) or a view (Consumer.view); use it in a with-block."""
    def __enter__(self) -> _V: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
        /,
    ) -> None: ...
    def __buffer__(self, flags: int) -> memoryview: ...

class Full(ShmqError, queue.Full):
    """No room in a lossless queue before the timeout ran out (also a queue.Full)."""
    published: int

class _ConsumerInfo(TypedDict):
    """A live consumer that holds an entry (Producer.consumers, inspect()["consumers"]).

    uid is None when the entry's page is not ours to read (another user's).
    unclear: someone planted a second id lock beside this entry's, so its page
    cannot be told; a lossless producer waits for it as for a consumer a lap
    behind, and it is listed that way (registered on a lossless queue, lag =
    capacity, pid 0).
    """
    index: int
    pid: int
    uid: Optional[int]
    registered: bool
    position: int
    lag: int
    lost: int
    unclear: bool

class _GroupInfo(TypedDict):
    """A live consumer group in inspect()'s "groups": its members, the next
    sequence none of them has claimed, what is published and not yet
    claimed, what the group lost, what its members claimed and have not
    returned, whether locks planted for it make its page untellable, and the
    user who made it (two users' groups of one name are two groups)."""
    name: str
    members: int
    position: int
    lag: int
    lost: int
    claimed: int
    unclear: bool
    uid: Optional[int]

class _QueueInfo(TypedDict):
    """What inspect() returns."""
    name: str
    slot_size: int
    max_message_size: int
    capacity: int
    max_consumers: int
    lossless: bool
    first_sequence: int
    head: int
    producer_alive: bool
    ended: bool
    owner_uid: int
    mode: int
    ring_bytes: int
    state_bytes: int
    consumers: List[_ConsumerInfo]
    groups: List[_GroupInfo]

class Producer:
    """The single producer of a queue; creates it or continues its sequence."""
    def __new__(
        cls,
        name: str,
        slot_size: Optional[int] = None,
        capacity: Optional[int] = None,
        *,
        mode: int = 0o600,
        unlink_on_close: bool = False,
        max_consumers: Optional[int] = None,
        lossless: Optional[bool] = None,
        max_message_size: Optional[int] = None,
    ) -> Self: ...
    @property
    def name(self) -> str: ...
    @property
    def slot_size(self) -> int: ...
    @property
    def max_message_size(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def next_sequence(self) -> int: ...
    @property
    def wakeups(self) -> int: ...
    @property
    def lossless(self) -> bool: ...
    @property
    def last_sequence(self) -> Optional[int]: ...
    @property
    def consumers(self) -> List[Dict[str, Union[int, bool]]]: ...
    @property
    def closed(self) -> bool: ...
    def publish(self, data: _BufferLike, timeout: Optional[float] = None) -> int: ...
    def loan(self, size: int, timeout: Optional[float] = None) -> Lease[memoryview]: ...
    def publish_many(
        self, messages: Iterable[_BufferLike], timeout: Optional[float] = None
    ) -> Optional[int]: ...
    def wait_consumers(self, n: int, timeout: Optional[float] = None) -> int: ...
    async def publish_async(self, data: _BufferLike, timeout: Optional[float] = None) -> int: ...
    async def wait_consumers_async(self, n: int, timeout: Optional[float] = None) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
        /,
    ) -> None: ...

class Consumer:
    """A reader of a queue; every consumer sees every message."""
    def __new__(
        cls,
        name: str,
        start: Union[Literal["latest", "earliest"], int] = "latest",
        *,
        spin: int = 0,
        owner: Optional[int] = None,
        register: bool = True,
        wait: Optional[float] = 0,
        group: Optional[str] = None,
    ) -> Self: ...
    @property
    def name(self) -> str: ...
    @property
    def group(self) -> Optional[str]: ...
    @property
    def slot_size(self) -> int: ...
    @property
    def max_message_size(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def lost(self) -> int: ...
    @property
    def owner_uid(self) -> int: ...
    @property
    def lossless(self) -> bool: ...
    @property
    def registered(self) -> bool: ...
    @property
    def backlog(self) -> int: ...
    @property
    def producer_alive(self) -> bool: ...
    @property
    def ended(self) -> bool: ...
    @property
    def unlinked(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def poll(self, timeout: Optional[float] = 0) -> Optional[bytes]: ...
    def wait(self, timeout: Optional[float] = None) -> bool: ...
    def view(self, timeout: Optional[float] = 0) -> Lease[Optional[memoryview]]: ...
    def fileno(self) -> int: ...
    async def poll_async(self, timeout: Optional[float] = None) -> Optional[bytes]: ...
    def __aiter__(self) -> AsyncIterator[bytes]: ...
    async def __anext__(self) -> bytes: ...
    def poll_many(self, max_messages: int, timeout: Optional[float] = 0) -> List[bytes]: ...
    def poll_into(self, buffer: _BufferLike, timeout: Optional[float] = 0) -> Optional[int]: ...
    def poll_many_into(
        self, buffer: _BufferLike, max_messages: Optional[int] = 1024, timeout: Optional[float] = 0
    ) -> List[int]: ...
    def close(self) -> None: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def __next__(self) -> bytes: ...
    def __enter__(self) -> "Consumer": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
        /,
    ) -> None: ...

def unlink(name: str, *, force: bool = False) -> None: ...
def exists(name: str, /) -> bool: ...
def inspect(name: str, /) -> _QueueInfo: ...
def wait_any(consumers: Iterable[Consumer], timeout: Optional[float] = None) -> List[Consumer]: ...

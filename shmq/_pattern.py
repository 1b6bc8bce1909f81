"""The self-checking message format of the example programs (csrc/tools/pattern.h).

Message i is i as 8 little-endian bytes, then filler byte j (j >= 8) equal to
(key(i) + j) mod 256, so a reader can verify every byte from the first eight.
Used by the demo and the interoperability tests.
"""
import struct

_FILLER = bytes(range(256)) * 2
_MIN = 8


def _key(i: int) -> int:
    return ((i * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 56


def _filler(i: int, size: int) -> bytes:
    out = bytearray()
    start = (_key(i) + _MIN) & 0xFF
    need = size - _MIN
    while len(out) < need:
        chunk = _FILLER[start:start + min(need - len(out), 256)]
        out += chunk  # filler repeats every 256 bytes, from the same start
    return bytes(out)


def make(i: int, size: int) -> bytes:
    """Message number i, size bytes long (size >= 8)."""
    if size < _MIN:
        raise ValueError("pattern messages are at least 8 bytes")
    return struct.pack("<Q", i) + _filler(i, size)


def check(msg: bytes) -> int:
    """Returns the message number, or -1 if any byte is wrong."""
    if len(msg) < _MIN:
        return -1
    (i,) = struct.unpack_from("<Q", msg)
    return i if msg[_MIN:] == _filler(i, len(msg)) else -1

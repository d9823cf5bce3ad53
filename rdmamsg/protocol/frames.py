"""How messages travel as RDMA sends: fragments and their immediate data.

Every send is a SEND_WITH_IMM.  Its 32-bit immediate carries the fragment
kind (low 4 bits) and the credits the sender returns (the other 28 bits), so
credit returns ride on data and most messages need no separate ack.

A message that fits one receive buffer goes as one WHOLE fragment with no
header.  A longer one goes as FIRST (an 8-byte little-endian total length,
then data), MIDDLE..., LAST.  CREDIT returns credits only; CLOSE is the
orderly end of the stream.  Both carry no payload.

The Cython poller implements the same layout in C (ext/_cpoller.pyx); the unit
tests check the two agree.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator

from ..errors import ProtocolError

WHOLE, FIRST, MIDDLE, LAST, CREDIT, CLOSE = range(6)
KIND_NAMES = ("WHOLE", "FIRST", "MIDDLE", "LAST", "CREDIT", "CLOSE")
KIND_BITS = 4
MAX_CREDITS = (1 << (32 - KIND_BITS)) - 1
FIRST_HEADER = struct.Struct("<Q")


def pack_imm(kind: int, credits: int) -> int:
    """The immediate (host order) for a fragment of ``kind`` returning ``credits``."""
    if not 0 <= kind <= CLOSE:
        raise ValueError(f"bad fragment kind {kind}")
    if not 0 <= credits <= MAX_CREDITS:
        raise ValueError(f"cannot return {credits} credits in one immediate")
    return (credits << KIND_BITS) | kind


def unpack_imm(imm: int) -> tuple[int, int]:
    """(kind, credits) from an immediate; an unknown kind is a ProtocolError."""
    kind = imm & ((1 << KIND_BITS) - 1)
    if kind > CLOSE:
        raise ProtocolError(f"unknown fragment kind {kind} in immediate {imm:#010x}")
    return kind, imm >> KIND_BITS


def plan(length: int, fragment: int) -> Iterator[tuple[int, int, int]]:
    """Split a ``length``-byte message for receive buffers of ``fragment`` bytes.

    Yields (kind, data_offset, data_length).  A FIRST fragment's data follows
    its 8-byte header, so it holds ``fragment - 8`` bytes of data.
    """
    if fragment <= FIRST_HEADER.size:
        raise ValueError(f"fragment size {fragment} too small")
    if length <= fragment:
        yield WHOLE, 0, length
        return
    first = fragment - FIRST_HEADER.size
    yield FIRST, 0, first
    off = first
    while length - off > fragment:
        yield MIDDLE, off, fragment
        off += fragment
    yield LAST, off, length - off


class Reassembler:
    """Rebuilds messages from fragments, checking everything the peer claims.

    ``feed(kind, payload)`` returns a whole message (bytes) or None while one
    is still incomplete.  Sizes are checked before anything is allocated.
    """

    def __init__(self, max_message: int, fragment: int) -> None:
        self.max_message = max_message
        self.fragment = fragment
        self._buf: bytearray | None = None
        self._off = 0

    @property
    def in_progress(self) -> bool:
        return self._buf is not None

    def expected_length(self, kind: int, payload) -> int:
        """Total length of the message this fragment starts (WHOLE or FIRST)."""
        if kind == WHOLE:
            return len(payload)
        if kind != FIRST:
            raise ProtocolError(f"a {KIND_NAMES[kind]} fragment cannot start a message")
        if len(payload) < FIRST_HEADER.size:
            raise ProtocolError(f"FIRST fragment of {len(payload)} bytes has no length header")
        (total,) = FIRST_HEADER.unpack_from(payload)
        data = len(payload) - FIRST_HEADER.size
        if total > self.max_message:
            raise ProtocolError(f"peer announced a {total}-byte message; the limit is "
                                f"{self.max_message}")
        if total <= data:
            raise ProtocolError(f"FIRST fragment announces {total} bytes but carries {data}")
        return total

    def feed(self, kind: int, payload) -> bytes | None:
        if len(payload) > self.fragment:
            raise ProtocolError(f"{len(payload)}-byte fragment exceeds the {self.fragment}-byte buffer")
        if self._buf is None:
            total = self.expected_length(kind, payload)
            if kind == WHOLE:
                return bytes(payload)
            data = memoryview(payload)[FIRST_HEADER.size:]
            self._buf = bytearray(total)
            self._buf[:len(data)] = data
            self._off = len(data)
            return None
        if kind not in (MIDDLE, LAST):
            raise ProtocolError(f"{KIND_NAMES[kind]} fragment inside an unfinished message")
        end = self._off + len(payload)
        if end > len(self._buf):
            raise ProtocolError(f"fragments overrun the announced {len(self._buf)}-byte message")
        self._buf[self._off:end] = payload
        self._off = end
        if kind == MIDDLE:
            return None
        if end != len(self._buf):
            raise ProtocolError(f"message ended at {end} of {len(self._buf)} announced bytes")
        out, self._buf = self._buf, None
        return bytes(out)

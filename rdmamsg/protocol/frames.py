"""How messages travel as RDMA sends: fragments and their immediate data.

Every send is a SEND_WITH_IMM.  Its 32-bit immediate carries the fragment
kind (low 4 bits) and the credits the sender returns (the other 28 bits), so
credit returns ride on data and most messages need no separate ack.

A message that fits one receive buffer goes as one WHOLE fragment.  A longer
one goes as FIRST, MIDDLE..., LAST, all full buffers but the last.  A FIRST
fragment's immediate carries the message's total length where the others
carry credits (so it returns none); a message of 256 MiB or more starts with
FIRST_LONG instead, whose data begins with the length as 8 bytes, little
endian.  CREDIT returns credits only; CLOSE is the orderly end of the stream.
Both carry no payload.

The Cython poller implements the same layout in C (ext/_cpoller.pyx); the unit
tests check the two agree.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator

from ..errors import ProtocolError

WHOLE, FIRST, MIDDLE, LAST, CREDIT, CLOSE, FIRST_LONG = range(7)
KIND_NAMES = ("WHOLE", "FIRST", "MIDDLE", "LAST", "CREDIT", "CLOSE", "FIRST_LONG")
KIND_BITS = 4
MAX_CREDITS = (1 << (32 - KIND_BITS)) - 1
MAX_IMM_LENGTH = MAX_CREDITS          #: longest message whose FIRST carries its length
FIRST_HEADER = struct.Struct("<Q")    #: FIRST_LONG's length header
STARTS = (FIRST, FIRST_LONG)


def pack_imm(kind: int, value: int) -> int:
    """The immediate (host order) for a fragment of ``kind``; ``value`` is the
    credits it returns, or for FIRST the message's length."""
    if not 0 <= kind <= FIRST_LONG:
        raise ValueError(f"bad fragment kind {kind}")
    if not 0 <= value <= MAX_CREDITS:
        raise ValueError(f"{value} does not fit an immediate's {32 - KIND_BITS} bits")
    return (value << KIND_BITS) | kind


def unpack_imm(imm: int) -> tuple[int, int]:
    """(kind, value) from an immediate; an unknown kind is a ProtocolError."""
    kind = imm & ((1 << KIND_BITS) - 1)
    if kind > FIRST_LONG:
        raise ProtocolError(f"unknown fragment kind {kind} in immediate {imm:#010x}")
    return kind, imm >> KIND_BITS


def returns_credits(kind: int) -> bool:
    """Whether a fragment of ``kind`` carries credits (FIRST carries a length)."""
    return kind != FIRST


def plan(length: int, fragment: int, *, long_first: bool = False,
         first_limit: int | None = None) -> Iterator[tuple[int, int, int]]:
    """Split a ``length``-byte message for receive buffers of ``fragment`` bytes.

    Yields (kind, data_offset, data_length).  A FIRST_LONG fragment's data
    follows its 8-byte header, so it holds ``fragment - 8`` bytes of data
    (``first_limit - 8`` if that is smaller: the header is always copied, so
    a zero-copy message's first fragment must fit a send buffer).  With
    ``long_first`` (the write channel, whose immediates carry no length) every
    message of several fragments starts with FIRST_LONG.
    """
    if fragment <= FIRST_HEADER.size:
        raise ValueError(f"fragment size {fragment} too small")
    if length <= fragment:
        yield WHOLE, 0, length
        return
    if length <= MAX_IMM_LENGTH and not long_first:
        first, kind = fragment, FIRST
    else:
        first, kind = min(fragment, first_limit or fragment) - FIRST_HEADER.size, FIRST_LONG
    yield kind, 0, first
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

    def expected_length(self, kind: int, payload, value: int = 0) -> int:
        """Total length of the message this fragment starts (WHOLE, FIRST or
        FIRST_LONG); ``value`` is the immediate's value (FIRST's length)."""
        if kind == WHOLE:
            return len(payload)
        if kind == FIRST:
            total, data = value, len(payload)
        elif kind == FIRST_LONG:
            if len(payload) < FIRST_HEADER.size:
                raise ProtocolError(f"FIRST_LONG fragment of {len(payload)} bytes has no length")
            (total,) = FIRST_HEADER.unpack_from(payload)
            data = len(payload) - FIRST_HEADER.size
        else:
            raise ProtocolError(f"a {KIND_NAMES[kind]} fragment cannot start a message")
        if total > self.max_message:
            raise ProtocolError(f"peer announced a {total}-byte message; the limit is "
                                f"{self.max_message}")
        if total <= data:
            raise ProtocolError(f"{KIND_NAMES[kind]} fragment announces {total} bytes but "
                                f"carries {data}")
        return total

    def feed(self, kind: int, payload, value: int = 0) -> bytes | None:
        """Take one fragment (``value``: its immediate's value); a whole
        message once its last fragment is in, else None."""
        if len(payload) > self.fragment:
            raise ProtocolError(f"{len(payload)}-byte fragment exceeds the {self.fragment}-byte buffer")
        if self._buf is None:
            total = self.expected_length(kind, payload, value)
            if kind == WHOLE:
                return bytes(payload)
            skip = FIRST_HEADER.size if kind == FIRST_LONG else 0
            data = memoryview(payload)[skip:]
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

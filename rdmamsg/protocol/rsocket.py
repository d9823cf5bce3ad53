"""The rsockets stream protocol (librdmacm's rsocket.c), as rules with no I/O.

How it works.  A connection is an RC QP made through rdma_cm; each side
advertises, in 40 bytes of connect/accept private data (``ConnData``), its
receive ring (first half lent at once), a two-entry "target SGL" array the
peer may write, and its receive depth.  Stream bytes go by RDMA WRITE with
immediate into the slot the receiver lent last: ``imm = op << 29 | value``,
DATA carrying the byte count.  The receiver ignores addresses and reads its
ring in order, so a sender fills each lent slot (half the ring) completely,
in order, alternating between the two target-SGL entries.

The receiver lends the next half of its ring by writing a 16-byte entry
{addr, key, length} into the sender's target SGL (in the sender's byte order)
with ``imm = SGL | (rseq_no + rq_size) & 0xffff``: the absolute sequence
number up to which the sender may send (credits).  The same immediate without
an entry only moves credits.  CTRL messages (0-byte writes) end the stream:
SHUTDOWN for one direction, DISCONNECT for both.

``Sender`` and ``Receiver`` hold one side's state each; the transport posts
what they decide and feeds them what arrives.  Anything a peer sends outside
these rules raises ProtocolError.  The rules are C (ext/protocol/rsocket_rules.pxd),
run by the C endpoint and wrapped for Python here; this module adds the
connection set-up's private data.
"""
from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

from ..errors import ProtocolError
from ._rsrules import (  # the rules themselves, in C
    CTRL_DISCONNECT, CTRL_KEEPALIVE, CTRL_SHUTDOWN, CTRL_SLOTS, FIRST_TRANSFER, MAX_DEPTH,
    MAX_TRANSFER, OP_CTRL, OP_DATA, OP_IOMAP_SGL, OP_SGL, SGE_LEN, SGL_SIZE, Receiver, Sender,
    rule_text, write_size)

__all__ = [
    "CTRL_DISCONNECT", "CTRL_KEEPALIVE", "CTRL_SHUTDOWN", "CTRL_SLOTS", "FIRST_TRANSFER",
    "MAX_DEPTH", "MAX_TRANSFER", "OP_CTRL", "OP_DATA", "OP_IOMAP_SGL", "OP_SGL", "SGE_LEN",
    "SGL_SIZE", "Receiver", "Sender", "rule_text", "write_size",
    "VERSION", "FLAG_NET", "FLAG_IOMAP", "CONN_DATA_LEN", "DEFAULT_PORT", "Sge", "ConnData",
    "imm", "split_imm"]

VERSION = 1
FLAG_NET = 1                #: the sender of the ConnData is big-endian
FLAG_IOMAP = 2
CONN_DATA = struct.Struct(">BBH3xB QII QII")
CONN_DATA_LEN = CONN_DATA.size          # 40
DEFAULT_PORT = 7471         #: rstream's

_NATIVE_FLAGS = FLAG_NET if sys.byteorder == "big" else 0


def imm(op: int, value: int) -> int:
    return ((op & 7) << 29) | (value & 0x1FFFFFFF)


def split_imm(value: int) -> tuple[int, int]:
    return value >> 29, value & 0x1FFFFFFF


@dataclass(frozen=True)
class Sge:
    addr: int
    key: int
    length: int


@dataclass(frozen=True)
class ConnData:
    """The private data of a connect request or accept."""

    credits: int            #: the sender's receive depth
    target_sgl: Sge         #: its target SGL array (length: entries)
    data_buf: Sge           #: the first lent half of its ring
    flags: int = _NATIVE_FLAGS
    iomap_size: int = 0

    def pack(self) -> bytes:
        t, d = self.target_sgl, self.data_buf
        return CONN_DATA.pack(VERSION, self.flags, self.credits, self.iomap_size,
                              t.addr, t.key, t.length, d.addr, d.key, d.length)

    @classmethod
    def unpack(cls, data: bytes) -> "ConnData":
        """Parse a peer's private data (rdma_cm pads it: extra bytes are
        ignored); ProtocolError for anything we cannot talk to."""
        if len(data) < CONN_DATA_LEN:
            raise ProtocolError(f"rsocket private data is {len(data)} bytes, "
                                f"not {CONN_DATA_LEN}")
        (version, flags, credits, iomap, taddr, tkey, tlen,
         daddr, dkey, dlen) = CONN_DATA.unpack_from(data)
        if version != VERSION:
            raise ProtocolError(f"rsocket version {version} is not {VERSION}")
        if tlen < 1:
            raise ProtocolError("the peer's target SGL has no entries")
        if credits < 1:
            raise ProtocolError("the peer offers no receive credits")
        if not dlen:
            raise ProtocolError("the peer lends an empty receive buffer")
        return cls(credits, Sge(taddr, tkey, tlen), Sge(daddr, dkey, dlen), flags, iomap)

    @property
    def byte_order(self) -> str:
        """The struct prefix for SGL entries written into this side's memory."""
        return ">" if self.flags & FLAG_NET else "<"

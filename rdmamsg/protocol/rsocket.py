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
these rules raises ProtocolError.
"""
from __future__ import annotations

import collections
import struct
import sys
from dataclasses import dataclass

from ..errors import ProtocolError

VERSION = 1
FLAG_NET = 1                #: the sender of the ConnData is big-endian
FLAG_IOMAP = 2
CONN_DATA = struct.Struct(">BBH3xB QII QII")
CONN_DATA_LEN = CONN_DATA.size          # 40
SGL_SIZE = 2                #: entries in each side's target SGL
SGE_LEN = 16
DEFAULT_PORT = 7471         #: rstream's

OP_DATA, OP_SGL, OP_IOMAP_SGL, OP_CTRL = 0, 4, 6, 7
CTRL_DISCONNECT, CTRL_KEEPALIVE, CTRL_SHUTDOWN = 0, 1, 2
CTRL_SLOTS = 4              #: control messages in flight at once (RS_QP_CTRL_SIZE)
MAX_TRANSFER = 64 << 10     #: the longest single write
FIRST_TRANSFER = 2 << 10    #: a send's first write; each next one doubles
MIN_QUEUE = 16

_NATIVE = "<" if sys.byteorder == "little" else ">"
_SGE = {"<": struct.Struct("<QII"), ">": struct.Struct(">QII")}


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
    flags: int = (FLAG_NET if _NATIVE == ">" else 0)
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


def _diff16(a: int, b: int) -> int:
    """a - b as a signed 16-bit sequence difference."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


class Sender:
    """Where the next write goes, and whether it may go.

    ``sgl`` is our target SGL array (``SGL_SIZE`` entries of 16 bytes, native
    order): the peer writes its lent slots there, and we use them up in place,
    as rsocket.c does, so the entry we write next is always current.
    """

    def __init__(self, sgl: memoryview, peer: ConnData) -> None:
        self._sgl = sgl
        self._fmt = _SGE[_NATIVE]
        self.slot_len = peer.data_buf.length     # every later slot is this long too
        self.entry = 0
        self.seq = 0                              # DATA writes sent (16-bit)
        self.limit = peer.credits & 0xFFFF        # may send while seq != limit
        self.peer_depth = peer.credits
        # Entry 0 is the slot lent at connect; the peer's first update goes to
        # entry 1 (zeroed memory until then), maybe before this object exists.
        self._set(0, peer.data_buf)

    def _set(self, i: int, sge: Sge) -> None:
        self._fmt.pack_into(self._sgl, i * SGE_LEN, sge.addr, sge.key, sge.length)

    def _get(self, i: int) -> Sge:
        return Sge(*self._fmt.unpack_from(self._sgl, i * SGE_LEN))

    def room(self) -> int:
        """Bytes the next write may carry now (0: wait for the peer)."""
        if self.seq == self.limit:
            return 0
        length = self._get(self.entry).length
        if length > self.slot_len:
            raise ProtocolError(f"the peer lent a slot of {length} bytes; "
                                f"its slots are {self.slot_len}")
        return length

    def take(self, n: int) -> tuple[int, int]:
        """Spend ``n`` bytes (at most room()) of the current slot and one
        credit; the (remote address, rkey) to write them to."""
        cur = self._get(self.entry)
        if not 0 < n <= cur.length or self.seq == self.limit:
            raise ValueError(f"cannot take {n} bytes (room {cur.length})")
        self._set(self.entry, Sge(cur.addr + n, cur.key, cur.length - n))
        if cur.length == n:
            self.entry = (self.entry + 1) % SGL_SIZE
        self.seq = (self.seq + 1) & 0xFFFF
        return cur.addr, cur.key

    def credits(self, value: int) -> None:
        """The peer's SGL immediate: it now takes DATA writes up to ``value``."""
        value &= 0xFFFF
        ahead = (value - self.seq) & 0xFFFF
        if ahead > self.peer_depth or _diff16(value, self.limit) < 0:
            raise ProtocolError(f"credit sequence {value} is from the past "
                                f"(sent {self.seq}, allowed {self.limit})")
        self.limit = value


class Receiver:
    """Our ring: what arrived, what the reader has taken, what to lend next.

    ``size`` is the whole ring; halves are lent one at a time.  ``depth`` is
    our receive queue (the peer's credits).
    """

    def __init__(self, addr: int, rkey: int, size: int, depth: int, peer: ConnData) -> None:
        if size % 2 or size < 2 * FIRST_TRANSFER:
            raise ValueError("the ring must be an even size of at least 4 KiB")
        self.addr, self.rkey = addr, rkey
        self.size, self.half, self.depth = size, size // 2, depth
        self.unread = 0
        self.peer_entries = peer.target_sgl.length
        self._peer_fmt = _SGE[peer.byte_order]
        self.messages: collections.deque[list[int]] = collections.deque()  # [offset, left]
        self.read_at = 0            # the reader's offset in the ring
        self.fill_at = 0            # where the next DATA lands
        self.lent = self.half       # bytes lent and not yet filled
        self.free = self.half       # bytes read and not yet lent again
        self.lend_at = self.half
        self.seq = 0                # DATA messages read (16-bit)
        self.next_update = depth // 2
        self.peer_entry = 1         # the peer's SGL entry we write next
        self.ctrl_in_flight = 0

    # -- what arrives ---------------------------------------------------------------

    def on_data(self, n: int) -> None:
        if len(self.messages) >= self.depth:
            raise ProtocolError("the peer wrote more DATA messages than it had credits for")
        if n > self.lent or (self.fill_at % self.half) + n > self.half:
            raise ProtocolError(f"a {n}-byte write does not fit the slot lent "
                                f"({self.lent} bytes lent)")
        self.messages.append([self.fill_at, n])
        self.unread += n
        self.fill_at = (self.fill_at + n) % self.size
        self.lent -= n

    def peek(self) -> tuple[int, int]:
        """(offset, length) of the unread part of the oldest message."""
        off, left = self.messages[0]
        return off, left

    def consume(self, n: int) -> None:
        """The reader took ``n`` bytes of the oldest message."""
        m = self.messages[0]
        if not 0 <= n <= m[1]:
            raise ValueError(f"cannot consume {n} of {m[1]} bytes")
        m[0] += n
        m[1] -= n
        self.unread -= n
        self.free += n
        self.read_at = (self.read_at + n) % self.size
        if m[1] == 0:
            self.messages.popleft()
            self.seq = (self.seq + 1) & 0xFFFF

    # -- what we send back ----------------------------------------------------------

    def update_due(self) -> bool:
        """Whether to send the peer credits (and a slot) now (rs_give_credits)."""
        if self.ctrl_in_flight >= CTRL_SLOTS:
            return False
        return self.free >= self.half or _diff16(self.seq, self.next_update) >= 0

    def make_update(self) -> tuple[int, bytes | None, int]:
        """The update to send: (immediate, the SGL entry to write or None, the
        index of the peer's SGL entry it goes to).  Lends the next half if
        it is free.  The caller posts it and calls ctrl_done() on completion."""
        self.ctrl_in_flight += 1
        self.next_update = (self.seq + self.depth // 2) & 0xFFFF
        value = imm(OP_SGL, (self.seq + self.depth) & 0xFFFF)
        if self.free < self.half:
            return value, None, 0
        entry = self._peer_fmt.pack(self.addr + self.lend_at, self.rkey, self.half)
        index = self.peer_entry
        self.free -= self.half
        self.lent += self.half
        self.lend_at = (self.lend_at + self.half) % self.size
        self.peer_entry = (self.peer_entry + 1) % self.peer_entries
        return value, entry, index

    def ctrl_done(self) -> None:
        self.ctrl_in_flight -= 1


def write_size(left: int, room: int, step: int) -> tuple[int, int]:
    """(bytes for the next write of a send with ``left`` to go, the next
    ``step``): a send's writes start at FIRST_TRANSFER and double up to
    MAX_TRANSFER, so small sends go at once and large ones in big writes;
    never more than the ``room`` lent."""
    if step < left:
        return min(step, room), min(step * 2, MAX_TRANSFER)
    return min(left, room), step

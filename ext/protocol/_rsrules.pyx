# cython: language_level=3
"""The rsockets rules (ext/protocol/rsocket_rules.pxd) for Python: the same code the C
endpoint runs, one call per rule, for the unit tests and fuzzers.
rdmamsg/protocol/rsocket.py re-exports it; read the model there.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE
from libc.stdint cimport uint32_t, uint64_t, int64_t

from rsocket_rules cimport *

from rdmamsg.errors import ProtocolError

SGL_SIZE = RS_SGL_SIZE
SGE_LEN = RS_SGE_LEN
OP_DATA, OP_SGL, OP_IOMAP_SGL, OP_CTRL = RS_OP_DATA, RS_OP_SGL, RS_OP_IOMAP_SGL, RS_OP_CTRL
CTRL_DISCONNECT, CTRL_KEEPALIVE, CTRL_SHUTDOWN = (RS_CTRL_DISCONNECT, RS_CTRL_KEEPALIVE,
                                                  RS_CTRL_SHUTDOWN)
CTRL_SLOTS = RS_CTRL_SLOTS
MAX_TRANSFER = RS_MAX_TRANSFER
FIRST_TRANSFER = RS_FIRST_TRANSFER
MAX_DEPTH = RS_MAX_DEPTH


def rule_text(int code) -> str:
    """What an RS_E_* code from the C endpoint means."""
    return rs_rule_text(code).decode()


cdef int _check(int rc) except -1:
    if rc:
        raise ProtocolError(rs_rule_text(rc).decode())
    return 0


def write_size(uint64_t left, uint32_t room, uint32_t step):
    """(bytes for the next write of a send with ``left`` to go, the next
    ``step``): small sends go at once, large ones in ever bigger writes."""
    n = rs_write_size(left, room, &step)
    return n, step


cdef class Sender:
    """Where the next write goes, and whether it may go.  ``sgl`` is our target
    SGL (SGL_SIZE entries of 16 bytes, native order), which the peer writes
    and we use up in place; ``peer`` the peer's ConnData."""

    cdef rs_send_t s
    cdef Py_buffer buf
    cdef bint held

    def __cinit__(self, sgl, peer):
        PyObject_GetBuffer(sgl, &self.buf, PyBUF_WRITABLE)
        self.held = True
        if self.buf.len < RS_SGL_SIZE * RS_SGE_LEN:
            raise ValueError(f"the target SGL needs {RS_SGL_SIZE * RS_SGE_LEN} bytes")
        d = peer.data_buf
        rs_send_init(&self.s, <rs_sge *>self.buf.buf, peer.credits, d.addr, d.key, d.length)

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.buf)

    @property
    def entry(self) -> int:
        return self.s.entry

    @property
    def seq(self) -> int:
        return self.s.seq

    @property
    def limit(self) -> int:
        return self.s.limit

    def room(self) -> int:
        """Bytes the next write may carry now (0: wait for the peer)."""
        cdef int64_t r = rs_send_room(&self.s)
        if r < 0:
            _check(<int>-r)
        return r

    def take(self, uint32_t n):
        """Spend ``n`` bytes of the current slot and one credit: (remote address, rkey)."""
        cdef uint64_t addr
        cdef uint32_t key
        if rs_send_take(&self.s, n, &addr, &key):
            raise ValueError(f"cannot take {n} bytes (room {self.s.sgl[self.s.entry].length}, "
                             f"seq {self.s.seq}, limit {self.s.limit})")
        return addr, key

    def credits(self, uint32_t value) -> None:
        _check(rs_send_credits(&self.s, value))


cdef class Receiver:
    """Our ring: what arrived, what the reader took, what to lend next."""

    cdef rs_recv_t r

    def __cinit__(self, uint64_t addr, uint32_t rkey, uint32_t size, uint32_t depth, peer):
        if rs_recv_init(&self.r, addr, rkey, size, depth, peer.target_sgl.length,
                        peer.byte_order == ">"):
            raise ValueError(f"a ring of {size} bytes and depth {depth} cannot be kept "
                             f"(an even size of at least 4 KiB; depth 1 to {RS_MAX_DEPTH})")

    @property
    def messages(self) -> int:
        """Messages arrived and not wholly read."""
        return self.r.mcount

    @property
    def unread(self) -> int:
        return self.r.unread

    @property
    def ctrl_in_flight(self) -> int:
        return self.r.ctrl_in_flight

    @ctrl_in_flight.setter
    def ctrl_in_flight(self, int n):
        self.r.ctrl_in_flight = n

    def on_data(self, uint32_t n) -> None:
        _check(rs_recv_data(&self.r, n))

    def peek(self):
        """(offset, length) of the unread part of the oldest message."""
        cdef uint32_t off, n
        if not rs_recv_peek(&self.r, &off, &n):
            raise IndexError("no message waits")
        return off, n

    def consume(self, uint32_t n) -> None:
        if rs_recv_consume(&self.r, n):
            raise ValueError(f"cannot consume {n} bytes of the oldest message")

    def update_due(self) -> bool:
        return rs_update_due(&self.r)

    def make_update(self):
        """(immediate, the SGL entry to write or None, the peer's entry index)."""
        cdef uint32_t value, index = 0
        cdef rs_sge entry
        if not rs_make_update(&self.r, &value, &entry, &index):
            return value, None, 0
        return value, (<char *>&entry)[:RS_SGE_LEN], index

    def ctrl_done(self) -> None:
        self.r.ctrl_in_flight -= 1

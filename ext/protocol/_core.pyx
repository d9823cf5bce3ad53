# cython: language_level=3
"""rdmamsg's wire rules (ext/protocol/protocol_core.pxd) for Python: the same C
the Cython engine runs, for the pure-pyverbs engine, the unit tests and the
fuzzers.  rdmamsg/protocol/frames.py, credits.py and ring.py re-export it;
read the models there."""
from libc.stdint cimport int64_t, uint32_t, uint64_t

import enum

from protocol_core cimport *

from rdmamsg.errors import PeerClosedError, ProtocolError

WHOLE, FIRST, MIDDLE, LAST, CREDIT, CLOSE, FIRST_LONG = range(7)
KIND_NAMES = ("WHOLE", "FIRST", "MIDDLE", "LAST", "CREDIT", "CLOSE", "FIRST_LONG")
NUMBERS = {"GRANT_LEN": GRANT_LEN, "KIND_BITS": KIND_BITS, "MAX_CREDITS": MAX_IMM_VALUE, "FIRST_HEADER": FIRST_HDR,
           "MIN_DEPTH": MIN_DEPTH, "RING_FIELD_BITS": RING_FIELD_BITS,
           "RING_RESERVED": RING_RESERVED, "RING_MIN_CELLS": RING_MIN_CELLS,
           "RING_MAX_CELLS": RING_MAX_CELLS, "RING_MIN_CELL": RING_MIN_CELL,
           "WC_FLUSH": WC_FLUSH, "WC_NONE": WC_NONE,
           "WC_OTHER": WC_OTHER}


def _kind(k) -> str:
    return KIND_NAMES[k] if 0 <= k < len(KIND_NAMES) else f"kind {k}"


_RULES = {                  # what each CORE_E_* code says ({kind}: a, named)
    CORE_E_KIND: "unknown fragment kind {a} (or one that cannot come this way)",
    CORE_E_CREDITS: "peer returned {a} credits, more than it could owe",
    CORE_E_CONTROL: ("a {kind} fragment of {b} bytes came as a control; only empty CREDIT "
                     "and CLOSE fragments may"),
    CORE_E_RING_CELLS: ("a ring write of {b} bytes claims {a} cells; that disagrees with its "
                        "bytes or exceeds a quarter of the ring"),
    CORE_E_RING_OFFSET: "a ring write landed at cell {a}; the next free cell is {b}",
    CORE_E_RING_OVERRUN: "the peer wrote into ring cells not yet released",
    CORE_E_RING_FREED: "peer reports {a} ring cells freed, more than are in use",
    CORE_E_NO_LENGTH: "FIRST_LONG fragment of {a} bytes has no length",
    CORE_E_CANNOT_START: "a {kind} fragment cannot start a message",
    CORE_E_TOO_LONG: "peer announced a {a}-byte message; the limit is {b}",
    CORE_E_CLAIM: "a first fragment announces {a} bytes but carries {b}",
    CORE_E_INSIDE: "{kind} fragment inside an unfinished message",
    CORE_E_OVERRUN: "fragments overrun the announced {a}-byte message",
    CORE_E_SHORT: "message ended at {a} of {b} announced bytes",
    CORE_E_FRAGMENT: "{a}-byte fragment exceeds the {b}-byte buffer",
    CORE_E_GRANT: "not an rdmamsg grant descriptor ({a} bytes)",
    CORE_E_GRANT_ACCESS: "grant descriptor with unknown access {a}",
}


def describe(int code, a=0, b=0) -> str:
    """What a CORE_E_* code, with its arguments, says the peer broke."""
    text = _RULES.get(code)
    if text is None:
        return f"protocol rule {code} broken"
    return text.format(a=a, b=b, kind=_kind(a))


cdef int _check(int code, uint64_t a=0, uint64_t b=0) except -1:
    if code != CORE_OK:
        raise ProtocolError(describe(code, a, b))
    return 0


def completion_error_wins(int held, int status) -> bool:
    """Whether a failed completion's ``status`` is the error to report, given
    the one held (a status, or NUMBERS' WC_NONE or WC_OTHER)."""
    return wc_error_wins(held, status)


# -- immediates ------------------------------------------------------------------

def pack_imm(int kind, int64_t value) -> int:
    """The immediate (host order) of a send of ``kind``; ``value`` is the
    credits it returns, or for FIRST the message's length."""
    if not 0 <= kind <= K_FIRST_LONG:
        raise ValueError(f"bad fragment kind {kind}")
    if not 0 <= value <= MAX_IMM_VALUE:
        raise ValueError(f"{value} does not fit an immediate's {32 - KIND_BITS} bits")
    return imm_pack(kind, <uint32_t>value)


def unpack_imm(uint32_t imm) -> tuple:
    """(kind, value) of a send's immediate; an unknown kind is a ProtocolError."""
    cdef int kind
    cdef uint32_t value
    cdef int rc = imm_unpack(imm, &kind, &value)     # (before kind is read)
    _check(rc, kind)
    return kind, value


def check_control(int kind, uint64_t nbytes) -> None:
    """ProtocolError unless this is an empty CREDIT or CLOSE."""
    _check(control_check(kind, nbytes), kind, nbytes)


def pack_ring_imm(int kind, int64_t offset, int64_t ncells) -> int:
    """The immediate of a ring write (host order)."""
    if kind not in (K_WHOLE, K_FIRST_LONG, K_MIDDLE, K_LAST):
        raise ValueError(f"{_kind(kind)} is not a ring write")
    if not (0 <= offset <= RING_FIELD_MASK and 1 <= ncells <= RING_FIELD_MASK):
        raise ValueError(f"offset {offset} / {ncells} cells do not fit the immediate")
    return ring_imm(kind, <uint32_t>offset, <uint32_t>ncells)


def unpack_ring_imm(uint32_t imm) -> tuple:
    """(kind, offset, ncells) of a ring write; a non-data kind is a ProtocolError."""
    cdef int kind
    cdef uint32_t offset, ncells
    cdef int rc = ring_unpack(imm, &kind, &offset, &ncells)
    _check(rc, kind)
    return kind, offset, ncells


# -- fragments -------------------------------------------------------------------

def plan(uint64_t length, uint64_t fragment, *, bint long_first=False, first_limit=None):
    """Split a ``length``-byte message for receive buffers of ``fragment``
    bytes: yields (kind, data offset, data length)."""
    if fragment <= FIRST_HDR:
        raise ValueError(f"fragment size {fragment} too small")
    cdef uint64_t limit = fragment if first_limit is None else first_limit
    cdef uint64_t off = 0, dlen
    cdef int kind
    while True:
        kind = frag_next(length, off, off == 0, fragment, limit, long_first, &dlen)
        yield kind, off, dlen
        if kind == K_WHOLE or kind == K_LAST:
            return
        off += dlen


cdef class Reassembler:
    """Rebuilds messages from fragments, checking everything the peer claims.

    ``feed(kind, payload, value)`` returns a whole message (bytes), or None
    while one is incomplete.  Sizes are checked before anything is allocated.
    """

    cdef reasm_t r
    cdef bytearray buf

    def __init__(self, uint64_t max_message, uint64_t fragment):
        reasm_init(&self.r, max_message, fragment)

    @property
    def in_progress(self) -> bool:
        return self.r.active

    @property
    def max_message(self) -> int:
        return self.r.max_message

    @property
    def held(self) -> int:
        """Bytes allocated for the message being rebuilt."""
        return 0 if self.buf is None else len(self.buf)

    def expected_length(self, int kind, payload, uint32_t value=0) -> int:
        """The length of the message this fragment starts (WHOLE, FIRST or
        FIRST_LONG); ``value`` is its immediate's (FIRST's length)."""
        cdef const unsigned char[::1] mv = (memoryview(payload).cast("B") if len(payload)
                                            else b"\0")
        cdef uint64_t total, a = 0, b = 0
        cdef int rc = reasm_length(&self.r, kind, len(payload), value, <const char *>&mv[0],
                                   &total, &a, &b)
        _check(rc, a, b)
        return total

    def feed(self, int kind, payload, uint32_t value=0):
        """Take one fragment; the whole message once its last is in, else None."""
        cdef uint64_t total, at, a = 0, b = 0
        cdef Py_ssize_t n = len(payload)
        if not self.r.active:
            total = self.expected_length(kind, payload, value)
            if kind == K_WHOLE:
                return bytes(payload)
            reasm_begin(&self.r, kind, total, n)
            skip = FIRST_HDR if kind == K_FIRST_LONG else 0
            self.buf = bytearray(total)
            self.buf[:n - skip] = memoryview(payload).cast("B")[skip:]
            return None
        cdef int rc = reasm_next(&self.r, kind, n, &at, &a, &b)
        _check(rc, a, b)
        self.buf[at:at + n] = payload
        if self.r.active:
            return None
        out, self.buf = self.buf, None
        return bytes(out)


# -- credits ---------------------------------------------------------------------

def default_threshold(int peer_depth) -> int:
    return cw_default_threshold(peer_depth)


cdef class CreditWindow:
    """The send channel's credits (credits.py has the model)."""

    cdef credit_t c

    def __init__(self, int peer_depth, threshold=None):
        if peer_depth < MIN_DEPTH:
            raise ValueError(f"the peer must post at least {MIN_DEPTH} receives")
        cdef int t = cw_default_threshold(peer_depth) if threshold is None else threshold
        if not 2 <= t <= peer_depth - 1:
            raise ValueError(f"threshold must be in 2..{peer_depth - 1}")
        cw_init(&self.c, peer_depth, t)

    @property
    def credits(self) -> int:
        return self.c.credits

    @property
    def unreturned(self) -> int:
        return self.c.unreturned

    @unreturned.setter
    def unreturned(self, int n):
        self.c.unreturned = n

    @property
    def threshold(self) -> int:
        return self.c.threshold

    @property
    def limit(self) -> int:
        return self.c.limit

    def can_send(self, bint returning=True) -> bool:
        """Whether a fragment may be sent now; ``returning``: it carries credits."""
        return cw_can_send(&self.c, returning)

    def update_due(self) -> bool:
        """Whether a standalone CREDIT fragment should be sent now."""
        return cw_update_due(&self.c)

    def spend(self, bint returning=True) -> int:
        """Spend a credit on a fragment; the credits it carries back."""
        if self.c.credits < 1:
            raise RuntimeError("no credit to spend")
        return cw_spend(&self.c, returning)

    def returned(self, int64_t n) -> None:
        """The peer returned ``n`` credits."""
        _check(cw_returned(&self.c, n), n)

    def reposted(self, int n=1) -> None:
        """We reposted ``n`` receive buffers: the peer may use them again."""
        self.c.unreturned += n


# -- the ring --------------------------------------------------------------------

def check_geometry(size, cells) -> int:
    """The cell size of a ring of ``size`` bytes in ``cells`` cells;
    ValueError if unusable."""
    if cells & (cells - 1) or not RING_MIN_CELLS <= cells <= RING_MAX_CELLS:
        raise ValueError(f"ring cells must be a power of two in {RING_MIN_CELLS}.."
                         f"{RING_MAX_CELLS}")
    if size & (size - 1) or size < cells * RING_MIN_CELL:
        raise ValueError(f"ring size must be a power of two of at least {RING_MIN_CELL} bytes "
                         f"per cell ({cells * RING_MIN_CELL} for {cells} cells)")
    return size // cells


cdef class RingSender:
    """The sender's view of the peer's ring (ring.py has the model)."""

    cdef ring_tx_t t

    def __init__(self, uint32_t cells, uint32_t cell):
        check_geometry(cells * cell, cells)
        rtx_init(&self.t, cells, cell)

    @property
    def cells(self) -> int:
        return self.t.cells

    @property
    def cell(self) -> int:
        return self.t.cell

    @property
    def max_cells(self) -> int:
        return self.t.max_cells

    @property
    def tail(self) -> int:
        return self.t.tail

    @property
    def head(self) -> int:
        return self.t.head


    @property
    def max_bytes(self) -> int:
        """The longest fragment: ``max_cells`` cells."""
        return self.t.max_cells * self.t.cell

    @property
    def free(self) -> int:
        return self.t.cells - (self.t.tail - self.t.head)

    def cells_for(self, uint64_t nbytes) -> int:
        return ring_cells_for(self.t.cell, nbytes)

    def place(self, uint64_t nbytes):
        """(offset, ncells) for a fragment of ``nbytes``, spending its space;
        None while the ring lacks room."""
        cdef uint32_t offset, ncells
        if ring_cells_for(self.t.cell, nbytes) > self.t.max_cells:
            raise ValueError(f"{nbytes}-byte fragment exceeds the ring's {self.max_bytes}")
        if not rtx_place(&self.t, nbytes, &offset, &ncells):
            return None
        return offset, ncells

    def freed(self, uint64_t ncells) -> None:
        """The peer reports ``ncells`` more cells released."""
        _check(rtx_freed(&self.t, ncells), ncells)


cdef class RingReceiver:
    """Our ring: checks each write, frees space in order, says when a report
    is due (ring.py has the model)."""

    cdef ring_rx_t r

    def __init__(self, uint32_t cells, uint32_t cell):
        check_geometry(cells * cell, cells)
        if rrx_init(&self.r, cells, cell) < 0:
            raise MemoryError("ring arrays")

    def __dealloc__(self):
        rrx_free(&self.r)

    @property
    def cells(self) -> int:
        return self.r.cells

    @property
    def cell(self) -> int:
        return self.r.cell

    @property
    def max_cells(self) -> int:
        return self.r.max_cells

    @property
    def threshold(self) -> int:
        return self.r.threshold

    @property
    def tail(self) -> int:
        return self.r.tail

    @property
    def head(self) -> int:
        return self.r.head

    @property
    def unreported(self) -> int:
        return self.r.unreported


    @property
    def max_bytes(self) -> int:
        return self.r.max_cells * self.r.cell

    def accept(self, int kind, uint32_t offset, uint32_t ncells, uint64_t nbytes) -> tuple:
        """Check a write the peer made (of a data ``kind``); (entry, byte
        offset of its data)."""
        cdef uint32_t entry
        cdef uint64_t a = 0, b = 0
        if kind not in (K_WHOLE, K_FIRST_LONG, K_MIDDLE, K_LAST):
            _check(CORE_E_KIND, kind)
        cdef int rc = rrx_accept(&self.r, offset, ncells, nbytes, &entry, &a, &b)
        _check(rc, a, b)
        return entry, offset * self.r.cell

    def release(self, uint32_t entry) -> None:
        """The application is done with ``entry``."""
        if entry >= self.r.cells:
            raise ValueError(f"no ring entry {entry}")
        rrx_release(&self.r, entry)

    def report_due(self) -> bool:
        return self.r.unreported >= self.r.threshold

    def reported(self) -> int:
        """Cells to report now (all owed); the count is then cleared."""
        n, self.r.unreported = self.r.unreported, 0
        return n


# -- the send queue --------------------------------------------------------------

cdef class SendQueue:
    """Post numbers (wr_ids), the send buffers they hold, and which posts
    are signaled; a completion frees every buffer up to its number."""

    cdef txq_t t

    def __init__(self, int depth, int nbufs):
        if depth < 1 or nbufs < 0:
            raise ValueError(f"send queue depth {depth}, {nbufs} buffers")
        txq_free(&self.t)
        if txq_init(&self.t, depth, nbufs) < 0:
            raise MemoryError("send queue arrays")

    def __dealloc__(self):
        txq_free(&self.t)

    @property
    def next(self) -> int:
        """The next post's number."""
        return self.t.next

    @property
    def done(self) -> int:
        """Posts completed (every number below this)."""
        return self.t.done

    @property
    def free(self) -> int:
        """Send buffers not in use."""
        return self.t.nfree

    def room(self) -> bool:
        """Whether the send queue takes another post."""
        return txq_room(&self.t)

    def take(self) -> int:
        """A free send buffer."""
        if self.t.nfree == 0:
            raise IndexError("no send buffer is free")
        return txq_take(&self.t)

    def post(self, int slot, int kind, bint signal=False) -> tuple:
        """Record the next post (holding buffer ``slot``, or -1): (its wr_id,
        whether to signal it)."""
        if not txq_room(&self.t):
            raise RuntimeError("the send queue is full")
        if not -1 <= slot < self.t.nbufs:
            raise ValueError(f"no send buffer {slot}")
        cdef uint64_t wr_id = self.t.next
        return wr_id, txq_post(&self.t, slot, kind, signal)

    def unpost(self, int n=1) -> None:
        """The last ``n`` posts recorded never reached the device: forget
        them (their send buffers are free again)."""
        txq_unpost(&self.t, n)

    def completed(self, uint64_t seq) -> None:
        """Post ``seq`` completed, and so did every one before it."""
        txq_done(&self.t, seq)


def send_imm(CreditWindow credits, int kind, uint64_t value=0) -> int:
    """The immediate of a send of ``kind`` (host order), spending a credit
    of ``credits`` on the send channel (None: the write channel)."""
    if not 0 <= kind <= K_FIRST_LONG:
        raise ValueError(f"bad fragment kind {kind}")
    if value > MAX_IMM_VALUE and (credits is None or kind == K_FIRST):   # (others carry credits)
        raise ValueError(f"{value} does not fit an immediate's {32 - KIND_BITS} bits")
    if credits is not None and credits.c.credits < 1:
        raise RuntimeError("no credit to spend")
    return tx_imm(NULL if credits is None else &credits.c, kind, <uint32_t>value)


# -- arrivals --------------------------------------------------------------------

QUEUED, REPOST, PEER_CLOSED = ARR_QUEUED, ARR_REPOST, ARR_CLOSE   #: Arrivals.arrived's flags


cdef class Arrivals:
    """A connection's receive side: what each receive completion means (for
    the send channel's ``credits``, or the write channel's ring ``sender``
    and ``receiver``), and the data fragments waiting to be taken, in order,
    as (slot or ring entry, length, kind, FIRST's length or ring offset)."""

    cdef rxq_t q
    cdef CreditWindow credits
    cdef RingSender sender
    cdef RingReceiver receiver

    def __init__(self, int depth, CreditWindow credits=None, RingSender sender=None,
                 RingReceiver receiver=None):
        if (credits is None) == (sender is None or receiver is None):
            raise ValueError("Arrivals needs credits, or a ring's sender and receiver")
        if depth < 1:
            raise ValueError(f"queue depth {depth}")
        rxq_free(&self.q)
        if rxq_init(&self.q, depth) < 0:
            raise MemoryError("receive queue arrays")
        self.credits, self.sender, self.receiver = credits, sender, receiver

    def __dealloc__(self):
        rxq_free(&self.q)

    def arrived(self, uint32_t slot, bint written, uint64_t nbytes, uint32_t imm) -> int:
        """A receive into ``slot`` completed (``written``: it announces a
        write into our ring): QUEUED, REPOST and PEER_CLOSED flags.
        ProtocolError for a broken rule."""
        cdef int what = 0
        cdef uint64_t a = 0, b = 0
        cdef int rc
        if self.credits is not None:
            rc = rx_arrived(&self.q, &self.credits.c, NULL, NULL, slot, written, nbytes, imm,
                            &what, &a, &b)
        else:
            rc = rx_arrived(&self.q, NULL, &self.sender.t, &self.receiver.r, slot, written,
                            nbytes, imm, &what, &a, &b)
        _check(rc, a, b)
        return what

    def __len__(self) -> int:
        return self.q.count

    @property
    def whole(self) -> int:
        """Messages whose last fragment is queued or being delivered."""
        return self.q.whole

    def head(self):
        """The oldest fragment, or None."""
        if self.q.count == 0:
            return None
        cdef int h = self.q.head
        return self.q.slot[h], self.q.len[h], self.q.kind[h], self.q.val[h]

    def pop(self) -> None:
        if self.q.count == 0:
            raise IndexError("no fragment is queued")
        rxq_pop(&self.q)

    def delivered(self) -> None:
        """A whole message went to the application."""
        self.q.whole -= 1

    def update_due(self):
        """None, or the value of a CREDIT to send now (the ring cells it
        reports; on the send channel 0, and its credits are counted when it
        is sent)."""
        cdef uint32_t value
        cdef credit_t *cw = NULL if self.credits is None else &self.credits.c
        cdef ring_rx_t *rrx = NULL if self.receiver is None else &self.receiver.r
        if not rx_update_due(cw, rrx, &value):
            return None
        return value


# -- the end of a connection ------------------------------------------------------

class End(enum.IntEnum):
    """What ends a connection, for a receive or a send (protocol_core's END_*)."""
    OPEN = END_OPEN
    CLOSED = END_CLOSED
    CLOSED_MID = END_CLOSED_MID
    GONE = END_GONE
    PEER_CLOSED = END_PEER_CLOSED
    SHUT = END_SHUT


EOF_GRACE = EOF_GRACE_MS * 1e-3


def end_error(int end) -> Exception:
    """The error a call meets once the connection ends this way (END_*)."""
    if end == END_CLOSED:
        return PeerClosedError("the peer closed the connection; every message it sent "
                               "has been received")
    if end == END_CLOSED_MID:
        return ProtocolError("the peer closed in the middle of a message")
    if end == END_GONE:
        return ConnectionResetError("the peer is gone: its process ended or its host is "
                                    "unreachable (the bootstrap TCP connection closed)")
    if end == END_PEER_CLOSED:
        return BrokenPipeError("the peer closed the connection")
    if end == END_SHUT:
        return BrokenPipeError("this endpoint was shut down for sending")
    raise ValueError(f"no end {end}")


cdef class PeerEnd:
    """What is known of the peer's end: its CLOSE, the bootstrap
    connection's EOF, and whether it is gone (protocol_core's end_t)."""

    cdef end_t e

    @property
    def closed(self) -> bool:
        """Its CLOSE arrived."""
        return self.e.peer_closed

    @closed.setter
    def closed(self, bint v):
        self.e.peer_closed = v

    @property
    def eof(self) -> bool:
        """The bootstrap connection's EOF came."""
        return self.e.live_eof

    @property
    def gone(self) -> bool:
        return self.e.peer_gone

    def saw_eof(self, double now) -> None:
        if not self.e.live_eof:
            self.e.live_eof, self.e.eof_at = True, now

    def expired(self, double now) -> bool:
        """Whether the EOF outlived its grace with no CLOSE (the peer is then gone)."""
        return end_expired(&self.e, now)

    def receiving(self, int queued, bint assembling) -> int:
        """What ends receiving (OPEN: nothing), with ``queued`` fragments left."""
        return end_receiving(&self.e, queued, assembling)

    def sending(self, bint close_sent) -> int:
        return end_sending(&self.e, close_sent)

    def sleep_limit(self, double timeout) -> float:
        """How long a sleep may last (seconds, -1: no limit) while an EOF
        is judged."""
        if end_sleep_ms(&self.e, -1) < 0:
            return timeout
        return EOF_GRACE if timeout < 0 else min(timeout, EOF_GRACE)


# -- grant descriptors -----------------------------------------------------------

def pack_grant(int access, uint64_t addr, uint64_t length, uint32_t rkey,
               uint32_t gid) -> bytes:
    """The descriptor of a grant (channel/remote.py)."""
    cdef grant_t g
    cdef char out[GRANT_LEN]
    g.access, g.addr, g.length, g.rkey, g.id = access, addr, length, rkey, gid
    grant_pack(out, &g)
    return out[:GRANT_LEN]


def parse_grant(const unsigned char[::1] raw) -> tuple:
    """(access, addr, length, rkey, grant id) of a descriptor; ValueError if
    it is none."""
    cdef grant_t g
    cdef int rc = CORE_E_GRANT
    if raw.shape[0] == GRANT_LEN:
        rc = grant_parse(<const char *>&raw[0], GRANT_LEN, &g)
    if rc == CORE_E_GRANT:
        raise ValueError(describe(rc, raw.shape[0]))
    if rc != CORE_OK:
        raise ValueError(describe(rc, g.access))
    return g.access, g.addr, g.length, g.rkey, g.id

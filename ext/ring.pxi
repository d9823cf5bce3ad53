# The write channel's ring rules (rdmamsg/protocol/ring.py), in C for the
# hot loop.  RingC wraps a sender and a receiver for the unit tests, which
# check they agree with the Python classes step for step.

from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free

from rdmamsg.protocol import ring as _ring_rules

cdef enum:
    RING_FIELD_BITS = 14
    RING_FIELD_MASK = (1 << 14) - 1
    RING_OK = 0
    RING_BAD_CELLS = 1        # the claimed cells disagree with the bytes, or too many
    RING_BAD_OFFSET = 2       # not where the placement rule puts it
    RING_OVERRUN = 3          # onto cells not yet released

cdef uint32_t RING_RESERVED = _ring_rules.RESERVED_RECEIVES


cdef struct ring_tx_t:        # the peer's ring, as its sender sees it
    uint64_t tail, head       # cells placed / freed since the start
    uint32_t cells, cell, max_cells
    uint64_t addr             # where it is in the peer, and its rkey
    uint32_t rkey


cdef struct ring_rx_t:        # our ring
    uint64_t tail, head, unreported
    uint32_t cells, cell, max_cells, threshold
    uint64_t *end             # entry (its first cell) -> its end
    uint8_t *released


cdef inline uint32_t ring_cells_for(uint32_t cell, size_t nbytes) noexcept nogil:
    cdef size_t n = (nbytes + cell - 1) // cell
    return <uint32_t>(n if n > 0 else 1)


cdef inline uint32_t ring_where(uint64_t tail, uint32_t cells, uint32_t ncells,
                                uint32_t *skip) noexcept nogil:
    cdef uint32_t pos = <uint32_t>(tail % cells)
    if pos + ncells <= cells:
        skip[0] = 0
        return pos
    skip[0] = cells - pos
    return 0


cdef inline uint32_t ring_imm(int kind, uint32_t offset, uint32_t ncells) noexcept nogil:
    return (ncells << (KIND_BITS + RING_FIELD_BITS)) | (offset << KIND_BITS) | <uint32_t>kind


cdef inline bint rtx_place(ring_tx_t *t, size_t nbytes, uint32_t *offset,
                           uint32_t *ncells) noexcept nogil:
    """Spend the space of a fragment (at most max_cells cells); False: no room."""
    cdef uint32_t skip
    cdef uint32_t n = ring_cells_for(t.cell, nbytes)
    cdef uint32_t at = ring_where(t.tail, t.cells, n, &skip)
    if t.tail + skip + n - t.head > t.cells:
        return False
    t.tail += skip + n
    offset[0], ncells[0] = at, n
    return True


cdef inline int rtx_freed(ring_tx_t *t, uint32_t n) noexcept nogil:
    if n < 1 or t.head + n > t.tail:
        return -1
    t.head += n
    return 0


cdef inline int rrx_accept(ring_rx_t *r, uint32_t offset, uint32_t ncells, uint32_t nbytes,
                           uint32_t *entry) noexcept nogil:
    cdef uint32_t skip, want
    if ncells > r.max_cells or ring_cells_for(r.cell, nbytes) != ncells:
        return RING_BAD_CELLS
    want = ring_where(r.tail, r.cells, ncells, &skip)
    if offset != want:
        return RING_BAD_OFFSET
    cdef uint64_t end = r.tail + skip + ncells
    if end - r.head > r.cells:
        return RING_OVERRUN
    entry[0] = <uint32_t>(r.tail % r.cells)
    r.end[entry[0]] = end
    r.released[entry[0]] = 0
    r.tail = end
    return RING_OK


cdef inline void rrx_release(ring_rx_t *r, uint32_t entry) noexcept nogil:
    cdef uint32_t at
    r.released[entry] = 1
    while r.head < r.tail and r.released[r.head % r.cells]:
        at = <uint32_t>(r.head % r.cells)
        r.released[at] = 0
        r.unreported += r.end[at] - r.head
        r.head = r.end[at]


cdef int ring_init(ring_tx_t *t, ring_rx_t *r, uint32_t peer_cells, uint32_t peer_cell,
                   uint32_t cells, uint32_t cell) except -1:
    t.tail = t.head = 0
    t.cells, t.cell, t.max_cells = peer_cells, peer_cell, peer_cells // 4
    r.tail = r.head = r.unreported = 0
    r.cells, r.cell, r.max_cells, r.threshold = cells, cell, cells // 4, cells // 2
    r.end = <uint64_t *>calloc(cells, sizeof(uint64_t))
    r.released = <uint8_t *>calloc(cells, sizeof(uint8_t))
    if r.end == NULL or r.released == NULL:
        ring_free(r)
        raise MemoryError("ring arrays")
    return 0


cdef void ring_free(ring_rx_t *r) noexcept:
    free(r.end)
    free(r.released)
    r.end = NULL
    r.released = NULL


cdef class RingC:
    """A sender and a receiver with the C rules, for tests (mirrors ring.py)."""
    cdef ring_tx_t t
    cdef ring_rx_t r

    def __init__(self, uint32_t cells, uint32_t cell):
        _ring_rules.check_geometry(cells * cell, cells)
        ring_init(&self.t, &self.r, cells, cell, cells, cell)

    def __dealloc__(self):
        ring_free(&self.r)

    def place(self, size_t nbytes):
        cdef uint32_t offset, ncells
        if ring_cells_for(self.t.cell, nbytes) > self.t.max_cells:
            raise ValueError("fragment too long")
        if not rtx_place(&self.t, nbytes, &offset, &ncells):
            return None
        return offset, ncells

    def freed(self, uint32_t n):
        if rtx_freed(&self.t, n) < 0:
            raise ValueError("more cells freed than in use")

    def accept(self, uint32_t offset, uint32_t ncells, uint32_t nbytes):
        """(entry, byte offset), or the RING_* code of the broken rule."""
        cdef uint32_t entry
        cdef int rc = rrx_accept(&self.r, offset, ncells, nbytes, &entry)
        if rc != RING_OK:
            return rc
        return entry, offset * self.r.cell

    def release(self, uint32_t entry):
        rrx_release(&self.r, entry)

    def reported(self):
        n, self.r.unreported = self.r.unreported, 0
        return n

    @property
    def state(self):
        return (self.t.tail, self.t.head, self.r.tail, self.r.head, self.r.unreported)


def pack_ring_imm(int kind, uint32_t offset, uint32_t ncells):
    """ring.pack_imm, as the C engine computes it."""
    return ring_imm(kind, offset, ncells)

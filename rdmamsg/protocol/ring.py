"""The write channel's ring: where each fragment lands, and when its space comes back.

How this works.  The receiver registers a ring of ``cells`` cells of ``cell``
bytes, the only memory of its connection a peer may write, and advertises
it in the handshake.  The sender places each fragment at its tail, taking
whole cells (at least one, at most ``max_cells``, a quarter of the ring); a
fragment that does not fit before the ring's end goes to offset 0, and the
cells it skipped are spent with it.  It writes the fragment with RDMA
WRITE_WITH_IMM, whose immediate carries the kind (4 bits), the offset and
the length in cells (14 bits each).  The completion's byte_len gives the
exact length.  The receiver applies the same placement rule and disconnects
a peer whose offset, length or use of space disagrees with it; the data is
then read in place.

Space comes back in order: the head passes a message only once the
application is done with it (copied out, or a lent view released), and the
receiver reports freed cells with a CREDIT control (a zero-length send whose
immediate value is the count) once half the ring is owed.

No deadlock: a fragment needs fewer than ``2 * max_cells``, at most half the
ring, skip included.  A sender that must wait therefore has more than half
the ring in use, and once the receiver has released it, it owes at least
half and reports.  Receives: each write and control takes a receive WR;
they carry no buffer and are reposted as soon as they are polled.  At most
``cells`` writes, two reports (each reports half a ring, and the sender
writes at most a ring past what it last learned) and one CLOSE can be
outstanding, so ``cells + RESERVED_RECEIVES`` posted receives always suffice.
"""
from __future__ import annotations

from ..errors import ProtocolError
from .frames import FIRST_LONG, KIND_BITS, KIND_NAMES, LAST, MIDDLE, WHOLE

FIELD_BITS = 14
FIELD_MASK = (1 << FIELD_BITS) - 1
MAX_CELLS = 8192           #: receives must cover them, and rxe allows 16384 per QP
MIN_CELLS = 4
MIN_CELL = 64
RESERVED_RECEIVES = 4
DATA_KINDS = (WHOLE, FIRST_LONG, MIDDLE, LAST)


def check_geometry(size: int, cells: int) -> int:
    """The cell size of a ring of ``size`` bytes in ``cells`` cells; ValueError if unusable."""
    if cells & (cells - 1) or not MIN_CELLS <= cells <= MAX_CELLS:
        raise ValueError(f"ring cells must be a power of two in {MIN_CELLS}..{MAX_CELLS}")
    if size & (size - 1) or size < cells * MIN_CELL:
        raise ValueError(f"ring size must be a power of two of at least {MIN_CELL} bytes per "
                         f"cell ({cells * MIN_CELL} for {cells} cells)")
    return size // cells


def pack_imm(kind: int, offset: int, ncells: int) -> int:
    """The immediate of a ring write (host order)."""
    if kind not in DATA_KINDS:
        raise ValueError(f"{KIND_NAMES[kind]} is not a ring write")
    if not (0 <= offset <= FIELD_MASK and 1 <= ncells <= FIELD_MASK):
        raise ValueError(f"offset {offset} / {ncells} cells do not fit the immediate")
    return (ncells << (KIND_BITS + FIELD_BITS)) | (offset << KIND_BITS) | kind


def unpack_imm(imm: int) -> tuple[int, int, int]:
    """(kind, offset, ncells) of a ring write; a non-data kind is a ProtocolError."""
    kind = imm & ((1 << KIND_BITS) - 1)
    if kind not in DATA_KINDS:
        raise ProtocolError(f"fragment kind {kind} cannot be a ring write")
    return kind, (imm >> KIND_BITS) & FIELD_MASK, imm >> (KIND_BITS + FIELD_BITS)


class _Geometry:
    def __init__(self, cells: int, cell: int) -> None:
        check_geometry(cells * cell, cells)
        self.cells, self.cell = cells, cell
        self.max_cells = cells // 4
        self.tail = 0        # cells placed since the start (absolute)
        self.head = 0        # cells freed since the start (absolute)

    @property
    def max_bytes(self) -> int:
        """The longest fragment: ``max_cells`` cells."""
        return self.max_cells * self.cell

    def cells_for(self, nbytes: int) -> int:
        return max(1, -(-nbytes // self.cell))

    def _where(self, ncells: int) -> tuple[int, int]:
        """(offset, skipped cells) for a fragment of ``ncells`` at the tail."""
        pos = self.tail % self.cells
        return (pos, 0) if pos + ncells <= self.cells else (0, self.cells - pos)


class RingSender(_Geometry):
    """The sender's view of the peer's ring."""

    def place(self, nbytes: int) -> tuple[int, int] | None:
        """(offset, ncells) for a fragment of ``nbytes``, spending its space;
        None while the ring lacks room (the peer has not released enough)."""
        ncells = self.cells_for(nbytes)
        if ncells > self.max_cells:
            raise ValueError(f"{nbytes}-byte fragment exceeds the ring's {self.max_bytes}")
        offset, skip = self._where(ncells)
        if self.tail + skip + ncells - self.head > self.cells:
            return None
        self.tail += skip + ncells
        return offset, ncells

    def freed(self, ncells: int) -> None:
        """The peer reports ``ncells`` more cells released."""
        if ncells < 1 or self.head + ncells > self.tail:
            raise ProtocolError(f"peer reports {ncells} ring cells freed; only "
                                f"{self.tail - self.head} are in use")
        self.head += ncells

    @property
    def free(self) -> int:
        return self.cells - (self.tail - self.head)


class RingReceiver(_Geometry):
    """The receiver's ring: checks each write, frees space in order, and says
    when a report is due."""

    def __init__(self, cells: int, cell: int) -> None:
        super().__init__(cells, cell)
        self.threshold = cells // 2
        self.unreported = 0
        self._end: list[int] = [0] * cells        # entry (its start cell) -> its end
        self._released = bytearray(cells)

    def accept(self, kind: int, offset: int, ncells: int, nbytes: int) -> tuple[int, int]:
        """Check a write the peer made; (entry, byte offset of its data)."""
        name = KIND_NAMES[kind]
        if ncells > self.max_cells or self.cells_for(nbytes) != ncells:
            raise ProtocolError(f"{name} write of {nbytes} bytes claims {ncells} cells of "
                                f"{self.cell} (at most {self.max_cells})")
        want, skip = self._where(ncells)
        if offset != want:
            raise ProtocolError(f"{name} write at cell {offset}; the next free cell is {want}")
        end = self.tail + skip + ncells
        if end - self.head > self.cells:
            raise ProtocolError("peer wrote into ring space not yet released")
        entry = self.tail % self.cells
        self._end[entry] = end
        self._released[entry] = 0
        self.tail = end
        return entry, offset * self.cell

    def release(self, entry: int) -> None:
        """The application is done with ``entry``; the head moves over every
        released entry it reaches."""
        self._released[entry] = 1
        while self.head < self.tail and self._released[self.head % self.cells]:
            at = self.head % self.cells
            self._released[at] = 0
            self.unreported += self._end[at] - self.head
            self.head = self._end[at]

    def report_due(self) -> bool:
        return self.unreported >= self.threshold

    def reported(self) -> int:
        """Cells to report now (all owed); the count is then cleared."""
        n, self.unreported = self.unreported, 0
        return n

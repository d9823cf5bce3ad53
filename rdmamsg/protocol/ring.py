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

The rules are C (ext/protocol/protocol_core.pxd), which both engines run;
this module adds the geometry check and names them for Python.
"""

from __future__ import annotations

from ._core import NUMBERS, RingReceiver, RingSender, check_geometry
from ._core import pack_ring_imm as pack_imm, unpack_ring_imm as unpack_imm
from .frames import FIRST_LONG, LAST, MIDDLE, WHOLE

__all__ = ["FIELD_BITS", "FIELD_MASK", "MAX_CELLS", "MIN_CELLS", "MIN_CELL", "RESERVED_RECEIVES",
           "DATA_KINDS", "check_geometry", "pack_imm", "unpack_imm", "RingSender",
           "RingReceiver"]

FIELD_BITS = NUMBERS["RING_FIELD_BITS"]
FIELD_MASK = (1 << FIELD_BITS) - 1
MAX_CELLS = NUMBERS["RING_MAX_CELLS"]     #: receives must cover them, and rxe allows 16384 per QP
MIN_CELLS = NUMBERS["RING_MIN_CELLS"]
MIN_CELL = NUMBERS["RING_MIN_CELL"]
RESERVED_RECEIVES = NUMBERS["RING_RESERVED"]
DATA_KINDS = (WHOLE, FIRST_LONG, MIDDLE, LAST)

"""Registered memory a peer may access: the write channel's ring.

Unlike the pool's chunks, a Region's MR carries remote access, so each one
is its own registration, made once per connection (never per message) and
closed with it.  Nothing else of a connection is remotely accessible.
"""
from __future__ import annotations

from . import _pyverbs as pv
from .pool import _Chunk, registrar

e = pv.enums
REMOTE_WRITE = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE


class Region:
    """``size`` bytes of page-aligned memory registered with ``access``:
    ``addr``, ``rkey``, ``lkey`` and ``view`` (a writable memoryview)."""

    def __init__(self, pd, size: int, access: int = REMOTE_WRITE) -> None:
        self._chunk = _Chunk(registrar(pd, access), size)
        self.addr, self.size = self._chunk.addr, size
        self.lkey, self.rkey = self._chunk.mr.lkey, self._chunk.mr.rkey
        self.view = memoryview(self._chunk.mem)

    def close(self) -> None:
        """Deregister; a peer's access fails from then on.  Idempotent."""
        if self._chunk is None:
            return
        self.view.release()
        self._chunk.close()
        self._chunk = None

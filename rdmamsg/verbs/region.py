"""Registered memory a peer may write: the write channel's ring.

Unlike the pool's chunks, a ring is its own registration, made once per
connection (never per message) and closed with it.  Where the device has
type-2 memory windows, the ring's MR has no remote access at all: the peer
gets the rkey of a window bound to this connection's QP, which the device
honours on that QP only, so a key learned by another connection in the same
PD opens nothing.  Without windows the MR itself carries REMOTE_WRITE.
"""
from __future__ import annotations

import time

from ..errors import RdmaError, WorkCompletionError
from . import _pyverbs as pv
from .inherit import keep
from .pool import _Chunk, registrar

e = pv.enums
REMOTE_WRITE = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
WINDOW_BASE = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_MW_BIND
BIND_WR_ID = (1 << 64) - 2          # never one of an engine's wr_ids


def has_qp_windows(device_attr) -> bool:
    """Whether the device binds type-2 (QP-scoped) memory windows."""
    return bool(device_attr.device_cap_flags & e.IBV_DEVICE_MEM_WINDOW_TYPE_2B)


class Region:
    """``size`` bytes of page-aligned memory registered with ``access``:
    ``addr``, ``rkey``, ``lkey`` and ``view`` (a writable memoryview)."""

    def __init__(self, pd, size: int, access: int = REMOTE_WRITE) -> None:
        self._chunk = _Chunk(registrar(pd, access), size)
        self.mr = self._chunk.mr
        self.addr, self.size = self._chunk.addr, size
        self.lkey, self.rkey = self.mr.lkey, self.mr.rkey
        self.view = memoryview(self._chunk.mem)

    def close(self) -> None:
        """Deregister; a peer's access fails from then on.  Idempotent."""
        if self._chunk is None:
            return
        self.view.release()
        self._chunk.close()
        self._chunk = self.mr = None


class QPWindow:
    """A type-2 memory window giving remote write to all of ``region``
    through one QP.  ``rkey`` is known before the bind (the window's key with
    its low byte stepped, as ibv_inc_rkey does), so it can be advertised in
    the handshake; ``bind`` must finish before the peer may write."""

    def __init__(self, pd, region: Region) -> None:
        try:
            self.mw = keep(pv.mr.MW(pd, e.IBV_MW_TYPE_2))
        except pv.PyverbsRDMAError as exc:
            raise RdmaError("ibv_alloc_mw", exc.error_code or 0, "type 2") from exc
        self.region = region
        key = self.mw.rkey
        self.rkey = (key & ~0xFF) | ((key + 1) & 0xFF)

    def bind(self, qp, cq, timeout: float = 10.0) -> None:
        """Bind to ``qp`` (in RTS) and wait for the bind's completion on ``cq``,
        which must carry nothing else yet."""
        info = pv.mr.MWBindInfo(self.region.mr, self.region.addr, self.region.size,
                                e.IBV_ACCESS_REMOTE_WRITE)
        wr = pv.wr.SendWR(wr_id=BIND_WR_ID, opcode=e.IBV_WR_BIND_MW,
                          send_flags=e.IBV_SEND_SIGNALED)
        wr.set_bind_wr(self.mw, info)
        try:
            qp.post_send(wr)
        except pv.PyverbsRDMAError as exc:
            raise RdmaError("ibv_post_send", exc.error_code or 0, "memory window bind") from exc
        finally:
            wr.close()
        deadline = time.monotonic() + timeout
        while True:
            n, wcs = cq.poll()
            if n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the device did not complete the ring's window bind")
            time.sleep(1e-4)
        wc = wcs[0]
        if wc.wr_id != BIND_WR_ID or wc.status != e.IBV_WC_SUCCESS:
            raise WorkCompletionError(wc.status, "memory window bind", wc.vendor_err)

    def close(self) -> None:
        """Free the window (before the ring's MR is deregistered).  Idempotent."""
        if self.mw is not None:
            self.mw.close()
            self.mw = None

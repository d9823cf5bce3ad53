"""The pure-pyverbs poster of one-sided RDMA operations: the twin of
ext/transport/onesided.pxi's OneSidedPoster (read that for how it works), with the same
methods and results.  The caller holds OneSided's lock."""
from __future__ import annotations

import time

from ..errors import RdmaError
from ..verbs import _pyverbs as pv
from ..verbs.regcache import buffer_address

e = pv.enums
RMA_SPIN = 2e-3          # busy-poll this long, then poll between short sleeps
SIGNAL_EVERY = 16        # writes that do not wait ask for a completion this often


class OneSidedPoster:
    def __init__(self, ctx, pd, cq, qp, depth: int, max_inline: int) -> None:
        self._cq, self._qp = cq, qp
        self._depth, self._max_inline = depth, max_inline
        self.posted = self.done = self._signaled = 0
        self._last = (0, 0)              # where the last request went: (raddr, rkey)
        self._stage = None               # (memoryview, addr, lkey, slot size)
        self._failure: tuple[int, int] | None = None

    @staticmethod
    def address(obj) -> int:
        return buffer_address(obj)

    def set_staging(self, region, addr: int, lkey: int, slot_size: int) -> None:
        self._stage = (region.view, addr, lkey, slot_size)

    def failure(self) -> tuple[int, int] | None:
        return self._failure

    def _reap(self) -> None:
        try:
            n, wcs = self._cq.poll(16)
        except pv.PyverbsRDMAError as exc:
            raise RdmaError("ibv_poll_cq", exc.error_code or 0) from exc
        for wc in wcs[:n]:
            if wc.status != e.IBV_WC_SUCCESS and self._failure is None:
                self._failure = (wc.status, wc.vendor_err)
            self.done = wc.wr_id

    def wait(self, seq: int, timeout: float) -> bool:
        if seq > self._signaled:
            if not self._room(timeout):
                return False
            self._post(e.IBV_WR_RDMA_WRITE, 0, 0, 0, *self._last, False, True)
        return self._wait_done(seq, timeout)

    def _wait_done(self, seq: int, timeout: float) -> bool:
        start = time.monotonic()
        while self.done < seq:
            self._reap()
            if self.done >= seq:
                break
            waited = time.monotonic() - start
            if 0 <= timeout < waited:
                return False
            if waited > RMA_SPIN:
                time.sleep(20e-6)
        return True

    def _room(self, timeout: float) -> bool:
        self._reap()
        if self.posted - self.done >= self._depth:
            self._wait_done(self.posted - self._depth + 1, timeout)
        return self.posted - self.done < self._depth

    def _post(self, opcode: int, laddr: int, length: int, lkey: int, raddr: int, rkey: int,
              inline: bool, signal: bool) -> int:
        signal = signal or (self.posted + 1) % SIGNAL_EVERY == 0
        flags = (e.IBV_SEND_SIGNALED if signal else 0) | (e.IBV_SEND_INLINE if inline else 0)
        sge = pv.wr.SGE(laddr, length, lkey)     # pyverbs wants one, even if empty
        wr = pv.wr.SendWR(wr_id=self.posted + 1, opcode=opcode, num_sge=1, sg=[sge],
                          send_flags=flags)
        wr.set_wr_rdma(rkey, raddr)
        try:
            self._qp.post_send(wr)
        except pv.PyverbsRDMAError as exc:
            raise RdmaError("ibv_post_send", exc.error_code or 0) from exc
        finally:
            wr.close()
            sge.close()
        self.posted += 1
        if signal:
            self._signaled = self.posted
        self._last = (raddr, rkey)
        return self.posted

    def post(self, read: bool, laddr: int, length: int, lkey: int, raddr: int, rkey: int,
             timeout: float) -> int:
        if not self._room(timeout):
            return 0
        return self._post(e.IBV_WR_RDMA_READ if read else e.IBV_WR_RDMA_WRITE, laddr, length,
                          lkey, raddr, rkey, False, True)

    @staticmethod
    def write_copy(descriptor, data, offset: int, timeout: float) -> int:
        return -1                        # always the general path (channel/remote.py)

    def post_copy(self, obj, raddr: int, rkey: int, timeout: float) -> int:
        mv = memoryview(obj)
        n = mv.nbytes
        if n > self._max_inline and (self._stage is None or n > self._stage[3]):
            raise ValueError("post_copy: no staging slot that large")
        if not self._room(timeout):
            return 0
        if n <= self._max_inline:
            return self._post(e.IBV_WR_RDMA_WRITE, buffer_address(mv), n, 0, raddr, rkey, True,
                              False)
        view, addr, lkey, slot_size = self._stage
        at = (self.posted % self._depth) * slot_size
        view[at:at + n] = mv.cast("B")
        return self._post(e.IBV_WR_RDMA_WRITE, addr + at, n, lkey, raddr, rkey, False, False)

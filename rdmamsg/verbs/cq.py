"""A completion queue with its completion channel, and the channel's fd.

pyverbs 44's CompChannel does not expose its file descriptor.  We find it as
the one new ``anon_inode:[infinibandevent]`` fd the channel's creation opened
(under a lock that every opening and closing of such fds takes, so another
thread cannot hand the same number back or add one meanwhile); the Cython poller checks
it against the pointer.  The fd is made non-blocking: waits happen in
poll()/select(), never inside ibv_get_cq_event with the GIL held.
"""
from __future__ import annotations

import os

from ..errors import RdmaError, closed_error
from . import _pyverbs as pv
from .inherit import keep
from .context import DeviceContext


def _event_fds() -> set[int]:
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if "infinibandevent" in os.readlink(f"/proc/self/fd/{name}"):
                out.add(int(name))
        except OSError:
            pass
    return out


class CompletionQueue:
    """A CQ of ``depth`` entries with a completion channel; ``fd`` wakes waiters."""

    def __init__(self, dctx: DeviceContext, depth: int) -> None:
        dctx.check_open()
        self.dctx = dctx
        with pv.fd_lock:
            before = _event_fds()
            try:
                self.channel = keep(pv.cq.CompChannel(dctx.ctx))
            except pv.PyverbsRDMAError as exc:
                raise RdmaError("ibv_create_comp_channel", exc.error_code or 0) from exc
            new = _event_fds() - before
            if len(new) != 1:
                self.channel.close()
        if len(new) != 1:
            raise RdmaError("ibv_create_comp_channel", 0,
                            f"could not identify the channel's fd (new event fds: {sorted(new)})")
        self.fd = new.pop()
        os.set_blocking(self.fd, False)
        try:
            self.cq = keep(pv.cq.CQ(dctx.ctx, depth, None, self.channel, 0))
        except pv.PyverbsRDMAError as exc:
            with pv.fd_lock:
                self.channel.close()
            raise RdmaError("ibv_create_cq", exc.error_code or 0, f"{depth} entries") from exc
        self.depth = depth
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        if self._closed:
            raise closed_error("completion queue")

    def close(self) -> None:
        """Destroy the CQ, then its channel.  The poller must have acked its events."""
        if self._closed:
            return
        self._closed = True
        self.cq.close()
        with pv.fd_lock:
            self.channel.close()

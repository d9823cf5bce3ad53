"""An open RDMA device with its protection domain, memory pool and
registration cache.

Endpoints on the same device share one DeviceContext: it is opened by the
first and closed, children first (pool MRs, PD, context), when the last lets
go of it.  Its pool's parameters come from the first opener, or from
``configure_pool`` before any endpoint exists.
"""
from __future__ import annotations

import os
import threading
from typing import Any

from ..errors import RdmaError, closed_error, inherited_error
from . import _pyverbs as pv
from .inherit import keep
from .pool import MemoryPool
from .regcache import RegistrationCache, register_for_send

_lock = threading.Lock()
_open: dict[str, "DeviceContext"] = {}
_pool_options: dict[str, Any] = {}


def configure_pool(**options: Any) -> None:
    """Set MemoryPool options (size_classes, chunk_bytes, max_bytes,
    on_exhausted, timeout) for devices opened from now on."""
    with _lock:
        _pool_options.update(options)


class DeviceContext:
    """A pyverbs Context + PD + MemoryPool, reference counted."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pid = os.getpid()
        try:
            with pv.fd_lock:
                self.ctx = keep(pv.device.Context(name=name))
        except pv.PyverbsRDMAError as exc:
            raise RdmaError("ibv_open_device", exc.error_code or 0, name) from exc
        try:
            self.pd = keep(pv.pd.PD(self.ctx))
            self.attr = self.ctx.query_device()
            self.pool = MemoryPool(self.pd, **_pool_options)
            self.regcache = RegistrationCache(
                register_for_send(self.pd),
                locked_elsewhere=lambda: self.pool.stats().registered_bytes)
        except BaseException:
            self.ctx.close()
            raise
        self._refs = 0
        self._closed = False

    @classmethod
    def acquire(cls, name: str) -> "DeviceContext":
        """The shared context for device ``name``, opened if need be; pair with release()."""
        with _lock:
            dc = _open.get(name)
            if dc is None or dc._pid != os.getpid():
                dc = _open[name] = cls(name)
            dc._refs += 1
            return dc

    def release(self) -> None:
        with _lock:
            if self._closed:
                return
            self._refs -= 1
            if self._refs <= 0:
                if _open.get(self.name) is self:
                    del _open[self.name]
                self._close()

    def check_open(self) -> None:
        if self._closed:
            raise closed_error(f"device context {self.name}")
        if self._pid != os.getpid():
            raise inherited_error(f"device context of {self.name}", self._pid)

    def _close(self) -> None:
        self._closed = True
        if self._pid != os.getpid():
            return  # inherited across fork: the parent owns these objects
        self.regcache.close()
        self.pool.close()
        self.pd.close()
        with pv.fd_lock:
            self.ctx.close()

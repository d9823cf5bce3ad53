"""The registration cache: caller memory registered once, for zero-copy sends.

How this works.  A send of at least ``zerocopy_min`` bytes is posted straight
from the caller's buffer, which must then be registered.  Registering costs
about as much as copying, so registrations are kept and reused, least
recently used first out.  Each entry holds an export of the buffer (a
memoryview), so its memory cannot be freed, moved or resized while it is
registered: that is what makes (address, length) a safe key.  An entry in use
by a send that has not completed is ``busy`` and never evicted.  The cache is
bounded in bytes and by RLIMIT_MEMLOCK; when it cannot register within those
limits, ``acquire`` returns None and the caller copies instead.  MRs here
allow local access only.
"""
from __future__ import annotations

import ctypes
import resource
import threading
from collections import OrderedDict

from ..errors import RdmaError

DEFAULT_MAX = 256 << 20


class Registration:
    __slots__ = ("key", "export", "mr", "lkey", "busy")

    def __init__(self, key, export: memoryview, mr) -> None:
        self.key, self.export, self.mr, self.lkey, self.busy = key, export, mr, mr.lkey, 0


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)


def byte_view(obj) -> memoryview:
    """``obj`` as a flat memoryview of bytes; BufferError if it is strided."""
    mv = memoryview(obj)
    if not mv.c_contiguous:
        raise BufferError("rdmamsg needs a C-contiguous buffer (this one is strided)")
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


def buffer_address(obj) -> int:
    """The address of a C-contiguous buffer's first byte (read-only ones too)."""
    view = _PyBuffer()
    _get_buffer(obj, ctypes.byref(view), 0)
    try:
        return view.buf or 0
    finally:
        _release_buffer(ctypes.byref(view))


class RegistrationCache:
    """LRU registrations of caller memory for one protection domain.

    ``register(addr, length)`` returns an MR (``lkey``, ``close()``).
    """

    def __init__(self, register, max_bytes: int = DEFAULT_MAX, locked_elsewhere=lambda: 0) -> None:
        self._register = register
        self.max_bytes = max_bytes
        self._locked_elsewhere = locked_elsewhere
        self._entries: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._closed = False
        self.hits = self.misses = self.evictions = self.refusals = 0

    def _budget(self) -> int:
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        if soft == resource.RLIM_INFINITY:
            return self.max_bytes
        return max(0, min(self.max_bytes, soft - self._locked_elsewhere()))

    def acquire(self, obj, addr: int, length: int) -> Registration | None:
        """A registration covering ``obj``'s buffer (at ``addr``), marked busy;
        None when it cannot be registered within the limits."""
        key = (addr, length)
        with self._lock:
            if self._closed:
                return None
            reg = self._entries.get(key)
            if reg is not None:
                self._entries.move_to_end(key)
                reg.busy += 1
                self.hits += 1
                return reg
            budget = self._budget()
            if length > budget or not self._evict_until(budget - length):
                self.refusals += 1
                return None
            export = memoryview(obj)
            try:
                mr = self._register(addr, length)
            except RdmaError:
                export.release()
                self.refusals += 1
                return None
            reg = Registration(key, export, mr)
            reg.busy = 1
            self._entries[key] = reg
            self._bytes += length
            self.misses += 1
            return reg

    def _evict_until(self, limit: int) -> bool:
        for key in list(self._entries):
            if self._bytes <= limit:
                break
            reg = self._entries[key]
            if reg.busy:
                continue
            self._drop(reg)
            self.evictions += 1
        return self._bytes <= limit

    def _drop(self, reg: Registration) -> None:
        del self._entries[reg.key]
        self._bytes -= reg.key[1]
        reg.mr.close()
        reg.export.release()

    def release(self, reg: Registration) -> None:
        """The send that acquired ``reg`` has completed (or never posted)."""
        with self._lock:
            reg.busy -= 1
            if self._closed and reg.busy == 0 and reg.key in self._entries:
                self._drop(reg)

    @property
    def registered_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes, "hits": self.hits,
                    "misses": self.misses, "evictions": self.evictions,
                    "refusals": self.refusals}

    def close(self) -> None:
        """Deregister everything not in use; what is busy goes when released."""
        with self._lock:
            self._closed = True
            for reg in list(self._entries.values()):
                if not reg.busy:
                    self._drop(reg)


def register_for_send(pd):
    """Registration of caller memory for sending: local read access only."""
    from .pool import registrar

    return registrar(pd, 0)

"""The registered-memory pool: a few large MRs sliced into fixed-size buffers.

Memory is registered once, a chunk at a time, and handed out as buffers of a
few size classes; nothing is registered per message.  Acquire and release are
O(1) (a free list per class).  Buffers are memoryviews onto the registered
memory, so reading and writing them copies nothing.  The pool's MRs allow
local access only (IBV_ACCESS_LOCAL_WRITE): no peer can touch them.
"""
from __future__ import annotations

import ctypes
import mmap
import threading
import time
import warnings
from dataclasses import dataclass

from ..errors import PoolExhaustedError, PoolTimeoutError, RdmaError, closed_error
from . import _pyverbs as pv
from .inherit import keep

DEFAULT_CLASSES = tuple(1 << k for k in range(12, 21))   # 4 KiB .. 1 MiB, chunks made on first use
DEFAULT_CHUNK = 4 << 20
DEFAULT_MAX = 512 << 20


class Buffer:
    """One pool buffer: ``view`` (a writable memoryview), ``addr`` and ``lkey``
    for work requests.  Owned by whoever acquired it until released."""

    __slots__ = ("addr", "lkey", "size", "view", "index", "_cls", "_out")

    def __init__(self, addr: int, lkey: int, view: memoryview, index: int, cls: "_SizeClass"):
        self.addr, self.lkey, self.size, self.view, self.index, self._cls = (
            addr, lkey, len(view), view, index, cls)
        self._out = False

    def __repr__(self) -> str:
        return f"<Buffer {self.size} bytes at {self.addr:#x} lkey={self.lkey:#x}>"


@dataclass(frozen=True)
class ClassStats:
    buffer_size: int
    total: int
    in_use: int
    free: int
    chunks: int
    peak_in_use: int


@dataclass(frozen=True)
class PoolStats:
    registered_bytes: int
    max_bytes: int
    mrs: int
    classes: tuple[ClassStats, ...]

    @property
    def in_use(self) -> int:
        return sum(c.in_use for c in self.classes)


class _Chunk:
    """One registered region: anonymous memory, page aligned, and its MR."""

    __slots__ = ("mem", "mr", "addr", "length")

    def __init__(self, register, length: int) -> None:
        self.mem = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mem))
        self.length = length
        try:
            self.mr = register(self.addr, length)
        except BaseException:
            self.mem.close()
            raise

    def close(self) -> None:
        self.mr.close()
        try:
            self.mem.close()
        except BufferError:
            # A caller still holds a view into it; the memory goes with that view.
            pass


def registrar(pd, access: int):
    """``register(addr, length)``: an MR on ``pd`` with ``access``; a failure is
    an RdmaError that names RLIMIT_MEMLOCK when that is the likely cause."""

    def register(addr: int, length: int):
        try:
            return keep(pv.mr.MR(pd, length, access, address=addr))
        except pv.PyverbsRDMAError as exc:
            raise _reg_error(exc, length) from exc

    return register


def register_local(pd):
    """The registration a pool uses by default: local access only."""
    return registrar(pd, pv.enums.IBV_ACCESS_LOCAL_WRITE)


def _reg_error(exc, length: int) -> RdmaError:
    import resource

    err = exc.error_code or 0
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    detail = f"registering {length} bytes"
    if err in (12, 1):  # ENOMEM, EPERM: usually the locked-memory limit
        lim = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"
        detail += (f"; RLIMIT_MEMLOCK is {lim}: raise it ('ulimit -l unlimited', or memlock in "
                   "/etc/security/limits.conf) or make the pool smaller")
    return RdmaError("ibv_reg_mr", err, detail)


class _SizeClass:
    def __init__(self, size: int, chunk: int) -> None:
        self.size = size
        self.chunk_bytes = max(chunk, size)
        self.free: list[Buffer] = []
        self.total = 0
        self.peak = 0
        self.chunks: list[_Chunk] = []


class MemoryPool:
    """Registered buffers for one protection domain.

    ``size_classes`` are the buffer sizes offered; each class grows a chunk
    (``chunk_bytes``) at a time until the pool has registered ``max_bytes``.
    When a class is exhausted, ``acquire`` raises PoolExhaustedError, or with
    ``on_exhausted="wait"`` waits up to ``timeout`` seconds for a release and
    then raises PoolTimeoutError.  ``register(addr, length)`` registers a chunk
    and returns its MR (anything with ``lkey`` and ``close()``); by default a
    local-access pyverbs MR on ``pd``.
    """

    def __init__(self, pd, *, size_classes=DEFAULT_CLASSES, chunk_bytes: int = DEFAULT_CHUNK,
                 max_bytes: int = DEFAULT_MAX, on_exhausted: str = "raise",
                 timeout: float | None = None, register=None) -> None:
        if on_exhausted not in ("raise", "wait"):
            raise ValueError("on_exhausted must be 'raise' or 'wait'")
        if not size_classes or any(s <= 0 or s & (s - 1) for s in size_classes):
            raise ValueError("size classes must be positive powers of two")
        self._register = register or register_local(pd)
        self._classes = [_SizeClass(s, chunk_bytes) for s in sorted(set(size_classes))]
        self.max_bytes = max_bytes
        self.on_exhausted = on_exhausted
        self.timeout = timeout
        self._registered = 0
        self._cond = threading.Condition()
        self._closed = False

    def _class_for(self, size: int) -> _SizeClass:
        for c in self._classes:
            if c.size >= size:
                return c
        raise ValueError(f"no buffer class holds {size} bytes (largest is {self._classes[-1].size})")

    def _grow(self, c: _SizeClass) -> bool:
        if self._registered + c.chunk_bytes > self.max_bytes:
            return False
        chunk = _Chunk(self._register, c.chunk_bytes)
        c.chunks.append(chunk)
        self._registered += c.chunk_bytes
        lkey = chunk.mr.lkey
        whole = memoryview(chunk.mem)
        n = c.chunk_bytes // c.size
        base = c.total
        c.free.extend(Buffer(chunk.addr + i * c.size, lkey, whole[i * c.size:(i + 1) * c.size],
                             base + i, c) for i in reversed(range(n)))
        whole.release()
        c.total += n
        return True

    def acquire(self, size: int, *, timeout: float | None = ...) -> Buffer:
        """A buffer of at least ``size`` bytes (the smallest class that fits)."""
        c = self._class_for(size)
        if timeout is ...:
            timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise closed_error("memory pool")
                if c.free or self._grow(c):
                    buf = c.free.pop()
                    buf._out = True
                    c.peak = max(c.peak, c.total - len(c.free))
                    return buf
                if self.on_exhausted == "raise":
                    raise PoolExhaustedError(
                        f"memory pool exhausted: all {c.total} buffers of {c.size} bytes are in "
                        f"use and {self._registered} of max_bytes={self.max_bytes} are "
                        "registered; release buffers or make the pool larger")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PoolTimeoutError(
                        f"no {c.size}-byte buffer was released within {timeout} s "
                        f"(all {c.total} in use, max_bytes={self.max_bytes})")
                self._cond.wait(left)

    def acquire_many(self, size: int, count: int) -> list[Buffer]:
        """``count`` buffers, all or none."""
        got: list[Buffer] = []
        try:
            for _ in range(count):
                got.append(self.acquire(size))
        except BaseException:
            for b in got:
                self.release(b)
            raise
        return got

    def release(self, buf: Buffer) -> None:
        with self._cond:
            if self._closed:
                return
            if buf._cls not in self._classes or not buf._out:
                raise ValueError(f"{buf!r} is not an acquired buffer of this pool")
            buf._out = False
            buf._cls.free.append(buf)
            self._cond.notify()

    def stats(self) -> PoolStats:
        with self._cond:
            return PoolStats(self._registered, self.max_bytes,
                             sum(len(c.chunks) for c in self._classes),
                             tuple(ClassStats(c.size, c.total, c.total - len(c.free), len(c.free),
                                              len(c.chunks), c.peak) for c in self._classes))

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Deregister every chunk.  Buffers still out become invalid."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for c in self._classes:
                for b in c.free:
                    b.view.release()
                c.free.clear()
                for chunk in c.chunks:
                    chunk.close()
                c.chunks.clear()
            self._registered = 0
            self._cond.notify_all()

    def __enter__(self) -> "MemoryPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn("MemoryPool was not closed", ResourceWarning, stacklevel=1)
            try:
                self.close()
            except Exception:
                pass

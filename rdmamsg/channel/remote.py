"""Remote buffers: memory one side exposes and the other writes or reads directly.

How this works.  Each endpoint has a second RC QP for one-sided access, made
and connected in the same handshake, in a protection domain of its own.  An
rkey only works through a QP of its own PD, so memory exposed on one
endpoint can be reached through that endpoint's peer and no other, and the
message channel's QP has no remote access to it at all.  ``expose`` registers
the caller's buffer with just the access asked for and returns a Grant,
whose ``descriptor`` (bytes) is sent to the peer in an ordinary message.
The peer's ``write``/``read`` check the offset and length against the
descriptor and then post one RDMA WRITE or READ, registering their own
buffer through a cache (local access only).  A write that does not wait
goes inline or is copied into a staging slot first, and is only posted, so
such writes pipeline; the poster (transport/) keeps the first failed
completion for the next call to raise.  ``revoke`` deregisters: from
then on the device refuses the key.  A refused access moves both one-sided
QPs to the error state (rxe and RC hardware do so), so the accessor gets
RemoteAccessError and later calls ConnectionResetError, while the message
channel of both sides carries on.
"""
from __future__ import annotations

import functools
import os
import random
import threading
from dataclasses import dataclass

from ..errors import (RdmaError, RemoteAccessError, WorkCompletionError, closed_error,
                      inherited_error)
from ..protocol._core import pack_grant, parse_grant
from ..transport.backend import make_one_sided_poster
from ..verbs import _pyverbs as pv
from ..verbs.context import DeviceContext
from ..verbs.device import LocalAddress
from ..verbs.inherit import keep, owner
from ..verbs.pool import registrar
from ..verbs.qp import RemoteQP, Timing, connect_rc, create_rc_qp, to_error
from ..verbs.region import Region
from ..verbs.regcache import RegistrationCache, buffer_address, byte_view

e = pv.enums
ACCESS = {"read": 1, "write": 2, "rw": 3}
_MR_ACCESS = {1: e.IBV_ACCESS_REMOTE_READ,
              2: e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE,
              3: e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE | e.IBV_ACCESS_REMOTE_READ}
CACHE_BYTES = 64 << 20
DEPTH = 64               #: one-sided requests in flight per endpoint
INLINE = 256             #: writes up to this size go inline (as the device allows)
STAGE_SLOT = 8192        #: writes that do not wait, up to this size, are copied here first


@dataclass(frozen=True)
class RemoteBuffer:
    """A peer's exposed buffer, as its descriptor describes it."""

    addr: int
    length: int
    rkey: int
    access: int
    grant_id: int

    @classmethod
    def parse(cls, descriptor) -> "RemoteBuffer":
        if isinstance(descriptor, RemoteBuffer):
            return descriptor
        return _parse(bytes(descriptor))

    @classmethod
    def _from_bytes(cls, raw: bytes) -> "RemoteBuffer":
        access, addr, length, rkey, gid = parse_grant(raw)
        return cls(addr, length, rkey, access, gid)

    def check(self, need: int, offset: int, length: int) -> None:
        if not self.access & need:
            verb = "write to" if need == 2 else "read from"
            raise PermissionError(f"grant {self.grant_id} does not allow to {verb} it")
        if offset < 0 or length < 0 or offset + length > self.length:
            raise ValueError(f"{length} bytes at offset {offset} fall outside grant "
                             f"{self.grant_id} of {self.length} bytes")


def _limit(timeout: float | None) -> float:
    return -1.0 if timeout is None else timeout


# A peer's descriptor is usually used many times: parse it once.
_parse = functools.lru_cache(maxsize=256)(RemoteBuffer._from_bytes)


class Grant:
    """Memory exposed to the peer; ``descriptor`` is what the peer needs.
    Holds the caller's buffer (it cannot be freed or resized) until revoked."""

    def __init__(self, owner: "OneSided", gid: int, export: memoryview, mr, access: int) -> None:
        self._owner, self.id, self._export, self._mr = owner, gid, export, mr
        self.access = access
        self.length = export.nbytes
        self.descriptor = pack_grant(access, mr.buf, self.length, mr.rkey, gid)

    @property
    def revoked(self) -> bool:
        return self._mr is None

    def revoke(self) -> None:
        """End the peer's access; idempotent.  The device refuses the key from now on."""
        self._owner._revoke(self)

    def __enter__(self) -> "Grant":
        return self

    def __exit__(self, *exc) -> None:
        self.revoke()

    def __repr__(self) -> str:
        state = "revoked" if self.revoked else f"{self.length} bytes"
        return f"<rdmamsg.Grant {self.id} {state}>"


class OneSided:
    """The one-sided QP of an endpoint, with its own PD, CQ and registrations."""

    def __init__(self, dctx: DeviceContext, local: LocalAddress, depth: int = DEPTH) -> None:
        self.local = local
        self._lock = threading.Lock()
        self.pd = keep(pv.pd.PD(dctx.ctx))
        self.cq = self.qp = self._poster = self._stage = None
        self._depth = depth
        self._grants: dict[int, Grant] = {}
        self._next_id = 1
        self._broken: BaseException | None = None
        self._closed = False
        self._ready = False               # open, staging made, nothing broken: write_copy may go
        self._inherited_from = 0          # the parent's pid, in a child after fork()
        owner(self)
        try:
            self.cq = keep(pv.cq.CQ(dctx.ctx, depth * 2))
            self.qp = create_rc_qp(self.pd, self.cq, depth, 1, INLINE)
            _, init = self.qp.query(e.IBV_QP_CAP)
            self.psn = random.getrandbits(24)
            attr = pv.qp.QPAttr(port_num=local.port)
            attr.qp_access_flags = _MR_ACCESS[3]
            self.qp.to_init(attr)
            self._poster = make_one_sided_poster(dctx.ctx, self.pd, self.cq, self.qp, depth,
                                                 init.cap.max_inline_data)
        except BaseException:
            self.close()
            raise
        self._src = RegistrationCache(registrar(self.pd, 0), CACHE_BYTES)
        self._dst = RegistrationCache(registrar(self.pd, e.IBV_ACCESS_LOCAL_WRITE), CACHE_BYTES)

    def info(self) -> dict:
        return {"qpn": self.qp.qp_num, "psn": self.psn}

    def connect(self, peer: dict, remote: RemoteQP, timing: Timing) -> None:
        """INIT -> RTR -> RTS towards the peer's one-sided QP (``peer``: its
        qpn and psn; ``remote``: the peer's message QP, for its address)."""
        target = RemoteQP(peer["qpn"], peer["psn"], remote.gid, remote.lid, remote.mtu)
        connect_rc(self.qp, self.local, target, self.psn, timing, rnr_retry=0)

    # -- the granting side ----------------------------------------------------------

    def expose(self, buf, access: str) -> Grant:
        if access not in ACCESS:
            raise ValueError(f"access must be one of {', '.join(ACCESS)}, not {access!r}")
        bits = ACCESS[access]
        export = memoryview(buf)
        try:
            if not export.c_contiguous:
                raise BufferError("rdmamsg needs a C-contiguous buffer (this one is strided)")
            if bits & 2 and export.readonly:
                raise TypeError(f"access={access!r} needs a writable buffer")
            if export.nbytes == 0:
                raise ValueError("cannot expose an empty buffer")
            with self._lock:
                self._check()
                mr = registrar(self.pd, _MR_ACCESS[bits])(buffer_address(export), export.nbytes)
                grant = Grant(self, self._next_id, export, mr, bits)
                self._grants[grant.id] = grant
                self._next_id += 1
                return grant
        except BaseException:
            export.release()
            raise

    def _revoke(self, grant: Grant) -> None:
        if self._inherited_from:
            raise inherited_error("grant", self._inherited_from)
        with self._lock:
            if grant._mr is None:
                return
            grant._mr.close()
            grant._mr = None
            grant._export.release()
            self._grants.pop(grant.id, None)

    # -- the accessing side -------------------------------------------------------

    def write(self, descriptor, data, offset: int, timeout: float | None, wait: bool) -> None:
        if not wait:
            with self._lock:
                # the common case in one call; -1 sends it down the general path
                seq = self._poster.write_copy(descriptor, data, offset, _limit(timeout)) \
                    if self._ready else -1
                if seq == 0:
                    self._timed_out()
            if seq > 0:
                return
        rb = RemoteBuffer.parse(descriptor)
        mv = byte_view(data)
        rb.check(2, offset, mv.nbytes)
        if mv.nbytes == 0:
            return
        if wait or mv.nbytes > STAGE_SLOT:
            self._transfer(rb, mv, offset, False, self._src, timeout)
            return
        with self._lock:
            self._check()
            if self._stage is None:
                self._stage = Region(self.pd, self._depth * STAGE_SLOT, 0)
                self._poster.set_staging(self._stage, self._stage.addr, self._stage.lkey,
                                         STAGE_SLOT)
                self._ready = True
            if not self._poster.post_copy(mv, rb.addr + offset, rb.rkey, _limit(timeout)):
                self._timed_out()

    def read(self, descriptor, into, offset: int, timeout: float | None) -> int:
        rb = RemoteBuffer.parse(descriptor)
        mv = byte_view(into)
        if mv.readonly:
            raise TypeError("read() needs a writable buffer")
        rb.check(1, offset, mv.nbytes)
        self._transfer(rb, mv, offset, True, self._dst, timeout)
        return mv.nbytes

    def flush(self, timeout: float | None) -> None:
        """Wait until every write posted so far has completed."""
        with self._lock:
            self._check()
            if not self._poster.wait(self._poster.posted, _limit(timeout)):
                self._timed_out()
            self._check()

    def _transfer(self, rb: RemoteBuffer, mv: memoryview, offset: int, read: bool,
                  cache: RegistrationCache, timeout: float | None) -> None:
        if mv.nbytes == 0:
            return
        with self._lock:
            self._check()
            addr = self._poster.address(mv)
            reg = cache.acquire(mv, addr, mv.nbytes)
            if reg is None:
                raise MemoryError(f"could not register {mv.nbytes} bytes for one-sided access "
                                  "(RLIMIT_MEMLOCK or the cache's bound); use smaller pieces")
            try:
                limit = _limit(timeout)
                seq = self._poster.post(read, addr, mv.nbytes, reg.lkey, rb.addr + offset,
                                        rb.rkey, limit)
                if not (seq and self._poster.wait(seq, limit)):
                    self._timed_out()
            finally:
                cache.release(reg)
            self._check()

    def _timed_out(self) -> None:
        """A request is still queued: the QP cannot be trusted with another
        (in the error state the device no longer touches its buffer)."""
        self._ready = False
        self._broken = TimeoutError("a one-sided operation timed out; one-sided "
                                    "access on this endpoint has ended")
        self._to_error()
        raise TimeoutError("the one-sided operation did not complete in time")

    def _failed(self, status: int, vendor: int) -> None:
        """Raise for a failed completion, which ends one-sided access."""
        self._ready = False
        err = WorkCompletionError(status, "RDMA write/read", vendor)
        self._broken = ConnectionResetError(f"one-sided access on this endpoint ended after "
                                            f"an error: {err}")
        if status == e.IBV_WC_REM_ACCESS_ERR:
            raise RemoteAccessError(status, "RDMA write/read", vendor)
        raise err

    def _to_error(self) -> None:
        try:
            to_error(self.qp)
        except RdmaError:
            pass

    def _check(self) -> None:
        if self._inherited_from:
            raise inherited_error("endpoint's remote buffers", self._inherited_from)
        if self._closed:
            raise closed_error("endpoint")
        if self._broken is not None:
            raise self._broken
        failure = self._poster.failure()
        if failure is not None:
            self._failed(*failure)

    def _disown(self) -> None:
        """In a child after fork(): refuse every use and free nothing."""
        self._inherited_from = os.getppid()
        self._ready = False
        self._lock = threading.Lock()

    def drain(self, timeout: float) -> None:
        """Give writes still in flight up to ``timeout`` s to complete (close's
        linger); raises nothing."""
        with self._lock:
            if self._poster is not None and self._broken is None and not self._closed:
                try:
                    self._poster.wait(self._poster.posted, timeout)
                except Exception:      # noqa: BLE001 - close goes on; the QP is torn down
                    pass

    def close(self) -> None:
        """Revoke every grant, then free QP, CQ, registrations and PD.  Idempotent."""
        if self._closed or self._inherited_from:
            return
        self._closed = True
        self._ready = False
        for grant in list(self._grants.values()):
            self._revoke(grant)
        self._poster = None                # it holds the raw QP and CQ pointers
        if self.qp is not None:
            self.qp.close()
        if self._stage is not None:
            self._stage.close()
        if self.cq is not None:
            self.cq.close()
        for cache in (getattr(self, "_src", None), getattr(self, "_dst", None)):
            if cache is not None:
                cache.close()
        self.pd.close()

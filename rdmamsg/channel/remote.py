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
buffer through a cache (local access only).  ``revoke`` deregisters: from
then on the device refuses the key.  A refused access moves both one-sided
QPs to the error state (rxe and RC hardware do so), so the accessor gets
RemoteAccessError and later calls ConnectionResetError, while the message
channel of both sides carries on.
"""
from __future__ import annotations

import functools
import os
import random
import struct
import threading
import time
from dataclasses import dataclass

from ..errors import RemoteAccessError, WorkCompletionError, closed_error, inherited_error
from ..transport.backend import make_one_sided_poster
from ..verbs import _pyverbs as pv
from ..verbs.context import DeviceContext
from ..verbs.device import LocalAddress
from ..verbs.inherit import keep, owner
from ..verbs.qp import RemoteQP, Timing, connect_rc
from ..verbs.pool import registrar
from ..verbs.regcache import RegistrationCache, buffer_address, byte_view

e = pv.enums
_DESC = struct.Struct("<4sBxxxQQII")      # magic, access, addr, length, rkey, grant id
_MAGIC = b"RMG1"
ACCESS = {"read": 1, "write": 2, "rw": 3}
_MR_ACCESS = {1: e.IBV_ACCESS_REMOTE_READ,
              2: e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE,
              3: e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE | e.IBV_ACCESS_REMOTE_READ}
CACHE_BYTES = 64 << 20


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
        if len(raw) != _DESC.size or raw[:4] != _MAGIC:
            raise ValueError(f"not an rdmamsg grant descriptor ({len(raw)} bytes)")
        _, access, addr, length, rkey, gid = _DESC.unpack(raw)
        if access not in _MR_ACCESS:
            raise ValueError(f"grant descriptor with unknown access {access}")
        return cls(addr, length, rkey, access, gid)

    def check(self, need: int, offset: int, length: int) -> None:
        if not self.access & need:
            verb = "write to" if need == 2 else "read from"
            raise PermissionError(f"grant {self.grant_id} does not allow to {verb} it")
        if offset < 0 or length < 0 or offset + length > self.length:
            raise ValueError(f"{length} bytes at offset {offset} fall outside grant "
                             f"{self.grant_id} of {self.length} bytes")


# A peer's descriptor is usually used many times: parse it once.
_parse = functools.lru_cache(maxsize=256)(RemoteBuffer._from_bytes)


class Grant:
    """Memory exposed to the peer; ``descriptor`` is what the peer needs.
    Holds the caller's buffer (it cannot be freed or resized) until revoked."""

    def __init__(self, owner: "OneSided", gid: int, export: memoryview, mr, access: int) -> None:
        self._owner, self.id, self._export, self._mr = owner, gid, export, mr
        self.access = access
        self.length = export.nbytes
        self.descriptor = _DESC.pack(_MAGIC, access, mr.buf, self.length, mr.rkey, gid)

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

    def __init__(self, dctx: DeviceContext, local: LocalAddress, depth: int = 16) -> None:
        self.local = local
        self._lock = threading.Lock()
        self.pd = keep(pv.pd.PD(dctx.ctx))
        self.cq = self.qp = self._poster = None
        self._grants: dict[int, Grant] = {}
        self._next_id = 1
        self._broken: BaseException | None = None
        self._closed = False
        self._inherited_from = 0          # the parent's pid, in a child after fork()
        owner(self)
        try:
            self.cq = keep(pv.cq.CQ(dctx.ctx, depth * 2))
            cap = pv.qp.QPCap(max_send_wr=depth, max_recv_wr=1, max_send_sge=1, max_recv_sge=1)
            init = pv.qp.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq, rcq=self.cq, cap=cap)
            self.qp = keep(pv.qp.QP(self.pd, init))
            self.psn = random.getrandbits(24)
            attr = pv.qp.QPAttr(port_num=local.port)
            attr.qp_access_flags = _MR_ACCESS[3]
            self.qp.to_init(attr)
            self._poster = make_one_sided_poster(dctx.ctx, self.pd, self.cq, self.qp)
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

    def write(self, descriptor, data, offset: int, timeout: float | None) -> None:
        rb = RemoteBuffer.parse(descriptor)
        mv = byte_view(data)
        rb.check(2, offset, mv.nbytes)
        self._transfer(rb, mv, offset, e.IBV_WR_RDMA_WRITE, self._src, timeout)

    def read(self, descriptor, into, offset: int, timeout: float | None) -> int:
        rb = RemoteBuffer.parse(descriptor)
        mv = byte_view(into)
        if mv.readonly:
            raise TypeError("read() needs a writable buffer")
        rb.check(1, offset, mv.nbytes)
        self._transfer(rb, mv, offset, e.IBV_WR_RDMA_READ, self._dst, timeout)
        return mv.nbytes

    def _transfer(self, rb: RemoteBuffer, mv: memoryview, offset: int, opcode: int,
                  cache: RegistrationCache, timeout: float | None) -> None:
        if mv.nbytes == 0:
            return
        with self._lock:
            self._check()
            addr = self._poster.address(mv) if self._poster is not None else buffer_address(mv)
            reg = cache.acquire(mv, addr, mv.nbytes)
            if reg is None:
                raise MemoryError(f"could not register {mv.nbytes} bytes for one-sided access "
                                  "(RLIMIT_MEMLOCK or the cache's bound); use smaller pieces")
            try:
                if self._poster is not None:
                    status, vendor = self._poster.transfer(
                        opcode == e.IBV_WR_RDMA_READ, addr, mv.nbytes, reg.lkey,
                        rb.addr + offset, rb.rkey, -1.0 if timeout is None else timeout)
                else:
                    status, vendor = self._post_and_poll(addr, mv.nbytes, reg.lkey, rb,
                                                         offset, opcode, timeout)
            finally:
                cache.release(reg)
        self._completed(status, vendor)

    def _post_and_poll(self, addr: int, nbytes: int, lkey: int, rb: RemoteBuffer, offset: int,
                       opcode: int, timeout: float | None) -> tuple[int, int]:
        """The pure-pyverbs twin of OneSidedPoster.transfer (mutex held)."""
        sge = pv.wr.SGE(addr, nbytes, lkey)
        wr = pv.wr.SendWR(wr_id=1, opcode=opcode, num_sge=1, sg=[sge],
                          send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(rb.rkey, rb.addr + offset)
        try:
            self.qp.post_send(wr)
        finally:
            wr.close()
            sge.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        spins = 0
        while True:
            n, wcs = self.cq.poll()
            if n:
                return wcs[0].status, wcs[0].vendor_err
            spins += 1
            if spins > 1000:
                time.sleep(20e-6)
            if deadline is not None and time.monotonic() > deadline:
                return -1, 0

    def _completed(self, status: int, vendor: int) -> None:
        """Raise for a failed or timed-out operation; either ends one-sided access."""
        if status == e.IBV_WC_SUCCESS:
            return
        if status < 0:
            # The request is still queued; the QP cannot be trusted with another.
            self._broken = TimeoutError("a one-sided operation timed out; one-sided "
                                        "access on this endpoint has ended")
            self._to_error()
            raise TimeoutError("the one-sided operation did not complete in time")
        err = WorkCompletionError(status, "RDMA write/read", vendor)
        self._broken = ConnectionResetError(f"one-sided access on this endpoint ended after "
                                            f"an error: {err}")
        if status == e.IBV_WC_REM_ACCESS_ERR:
            raise RemoteAccessError(status, "RDMA write/read", vendor)
        raise err

    def _to_error(self) -> None:
        attr = pv.qp.QPAttr()
        attr.qp_state = e.IBV_QPS_ERR
        try:
            self.qp.modify(attr, e.IBV_QP_STATE)
        except pv.PyverbsRDMAError:
            pass

    def _check(self) -> None:
        if self._inherited_from:
            raise inherited_error("endpoint's remote buffers", self._inherited_from)
        if self._closed:
            raise closed_error("endpoint")
        if self._broken is not None:
            raise self._broken

    def _disown(self) -> None:
        """In a child after fork(): refuse every use and free nothing."""
        self._inherited_from = os.getppid()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Revoke every grant, then free QP, CQ, registrations and PD.  Idempotent."""
        if self._closed or self._inherited_from:
            return
        self._closed = True
        for grant in list(self._grants.values()):
            self._revoke(grant)
        self._poster = None                # it holds the raw QP and CQ pointers
        if self.qp is not None:
            self.qp.close()
        if self.cq is not None:
            self.cq.close()
        for cache in (getattr(self, "_src", None), getattr(self, "_dst", None)):
            if cache is not None:
                cache.close()
        self.pd.close()

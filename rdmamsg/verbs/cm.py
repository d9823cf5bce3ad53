"""rdma_cm on pyverbs: an event channel that can be waited on, and the calls
pyverbs lacks.

pyverbs (rdma-core 39 on) gives CMEventChannel, CMID and CMEvent, but no
channel fd (``CMEvent()`` blocks in rdma_get_cm_event with the GIL held), no
rdma_migrate_id, and a ``bind_addr`` that dereferences a NULL device for a
wildcard address.  Those three go to librdmacm directly (ctypes, which drops
the GIL), on the raw pointers inside the pyverbs objects: the first field of
each, at the offset rawptr.pxi documents (ext/transport/pyverbs_layout.h), checked
before use: the channel's fd must be an open ``/dev/infiniband/rdma_cm``,
and an id's channel pointer must be the channel's.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import socket
import struct
import time

from ..errors import RdmaError
from . import _pyverbs as pv
from .inherit import keep

import pyverbs.cmid as cmid            # noqa: E402  (after _pyverbs tamed logging)

ce = pv.cm_enums

_PTR_OFFSET = 16 + 3 * ctypes.sizeof(ctypes.c_void_p)   # PyObject_HEAD, weakref, logger, vtab
_lib = None

EVENT_NAMES = {getattr(ce, n): n[len("RDMA_CM_EVENT_"):] for n in dir(ce)
               if n.startswith("RDMA_CM_EVENT_")}


def _librdmacm():
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(ctypes.util.find_library("rdmacm") or "librdmacm.so.1", use_errno=True)
        lib.rdma_migrate_id.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.rdma_bind_addr.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        _lib = lib
    return _lib


def _pointer(obj, cls) -> int:
    if type(obj) is not cls or cls.__basicsize__ < _PTR_OFFSET + 8:
        raise RdmaError("pyverbs", errno.ENOTSUP,
                        f"{cls.__name__} layout not recognised ({cls.__basicsize__} bytes)")
    ptr = ctypes.c_void_p.from_address(id(obj) + _PTR_OFFSET).value
    if not ptr:
        raise RdmaError("pyverbs", errno.EBADF, f"{cls.__name__} is closed")
    return ptr


def _sockaddr_in(host: str, port: int) -> ctypes.Array:
    raw = struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(host)
    return ctypes.create_string_buffer(raw + bytes(16 - len(raw)), 16)


class EventChannel:
    """An rdma_cm event channel whose ``fd`` (non-blocking) tells when an
    event waits; ``get`` takes one without blocking in librdmacm."""

    def __init__(self) -> None:
        try:
            self.channel = keep(cmid.CMEventChannel())
        except pv.PyverbsRDMAError as exc:
            raise RdmaError("rdma_create_event_channel", exc.error_code or 0) from exc
        self._ptr = _pointer(self.channel, cmid.CMEventChannel)
        fd = ctypes.c_int.from_address(self._ptr).value
        try:
            ok = os.readlink(f"/proc/self/fd/{fd}") == "/dev/infiniband/rdma_cm"
        except OSError:
            ok = False
        if not ok:
            self.channel.close()
            raise RdmaError("rdma_create_event_channel", errno.ENOTSUP,
                            "CMEventChannel layout not recognised (its fd is not rdma_cm's)")
        self.fd = fd
        os.set_blocking(fd, False)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def new_id(self):
        """A CMID in the TCP port space, whose events come here."""
        try:
            return keep(cmid.CMID(creator=self.channel, port_space=ce.RDMA_PS_TCP))
        except pv.PyverbsRDMAError as exc:
            raise RdmaError("rdma_create_id", exc.error_code or 0) from exc

    def ready(self, timeout: float | None = 0.0) -> bool:
        ms = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
        while True:
            try:
                return bool(self._poll.poll(ms))
            except InterruptedError:
                continue

    def get(self, timeout: float | None = None):
        """The next event (a pyverbs CMEvent: ack it with ``close()``), or
        TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.ready(left):
                raise TimeoutError("no rdma_cm event in time")
            try:
                return cmid.CMEvent(self.channel)
            except pv.PyverbsRDMAError as exc:
                if exc.error_code not in (errno.EAGAIN, errno.EINTR, 0):
                    raise RdmaError("rdma_get_cm_event", exc.error_code) from exc

    def expect(self, wanted: int, timeout: float | None, what: str):
        """The next event, which must be ``wanted``; otherwise the OSError a
        socket call would raise for it."""
        ev = self.get(timeout)
        kind = ev.event_type
        if kind == wanted:
            return ev
        status = event_status(ev)
        ev.close()
        raise event_error(kind, status, what)

    def adopt(self, cm_id) -> None:
        """Move ``cm_id`` (an id made for a connection request on a listener's
        channel) here, so its later events come to this channel."""
        rc = _librdmacm().rdma_migrate_id(_pointer(cm_id, cmid.CMID), self._ptr)
        if rc:
            raise RdmaError("rdma_migrate_id", ctypes.get_errno())

    def owns(self, cm_id) -> bool:
        ptr = _pointer(cm_id, cmid.CMID)
        return ctypes.c_void_p.from_address(ptr + ctypes.sizeof(ctypes.c_void_p)).value == self._ptr

    def close(self) -> None:
        """Destroy the channel; every id on it must be destroyed first."""
        if self.channel is not None:
            self._poll.unregister(self.fd)
            self.channel.close()
            self.channel = None


def event_status(ev) -> int:
    """The event's status field (a negative errno, or a reject reason)."""
    ptr = _pointer(ev, cmid.CMEvent)
    return ctypes.c_int.from_address(ptr + 2 * ctypes.sizeof(ctypes.c_void_p) + 4).value


def event_error(kind: int, status: int, what: str) -> OSError:
    name = EVENT_NAMES.get(kind, str(kind))
    if kind == ce.RDMA_CM_EVENT_REJECTED:
        return ConnectionRefusedError(errno.ECONNREFUSED, f"{what}: the peer rejected it "
                                      f"(reason {status})")
    if kind in (ce.RDMA_CM_EVENT_UNREACHABLE, ce.RDMA_CM_EVENT_ADDR_ERROR,
                ce.RDMA_CM_EVENT_ROUTE_ERROR, ce.RDMA_CM_EVENT_CONNECT_ERROR):
        code = -status if status < 0 else errno.EHOSTUNREACH
        if code == errno.ETIMEDOUT:
            return TimeoutError(code, f"{what}: {name} ({os.strerror(code)})")
        return OSError(code, f"{what}: {name} ({os.strerror(code)})")
    if kind == ce.RDMA_CM_EVENT_DISCONNECTED:
        return ConnectionResetError(errno.ECONNRESET, f"{what}: the peer disconnected")
    return OSError(errno.EPROTO, f"{what}: unexpected rdma_cm event {name} (status {status})")


def bind(cm_id, host: str, port: int) -> None:
    """rdma_bind_addr to an IPv4 ``host`` (0.0.0.0 included) and ``port``."""
    addr = _sockaddr_in(host, port)
    rc = _librdmacm().rdma_bind_addr(_pointer(cm_id, cmid.CMID), addr)
    if rc:
        err = ctypes.get_errno()
        raise OSError(err, f"rdma_bind_addr({host}:{port}): {os.strerror(err)}")


def _sockaddr(ptr: int) -> tuple[str, int]:
    family = ctypes.c_uint16.from_address(ptr).value
    port = struct.unpack(">H", ctypes.string_at(ptr + 2, 2))[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, ctypes.string_at(ptr + 4, 4)), port
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, ctypes.string_at(ptr + 8, 16)), port
    return "0.0.0.0", 0


def addresses(cm_id) -> tuple[tuple[str, int], tuple[str, int]]:
    """(source, destination) of an id: its route's two sockaddr_storage
    fields, right after the verbs, channel, context and qp pointers."""
    ptr = _pointer(cm_id, cmid.CMID) + 4 * ctypes.sizeof(ctypes.c_void_p)
    return _sockaddr(ptr), _sockaddr(ptr + 128)


def addr_info(host: str, port: int, passive: bool = False):
    """A pyverbs AddrInfo for ``host``:``port`` in the TCP port space."""
    try:
        if passive:
            return cmid.AddrInfo(src=host, src_service=str(port), port_space=ce.RDMA_PS_TCP,
                                 flags=ce.RAI_PASSIVE)
        return cmid.AddrInfo(dst=host, dst_service=str(port), port_space=ce.RDMA_PS_TCP)
    except pv.PyverbsRDMAError as exc:
        raise OSError(exc.error_code or errno.EHOSTUNREACH,
                      f"rdma_getaddrinfo({host}:{port}) failed") from exc

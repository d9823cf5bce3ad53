"""Making rsocket connections through rdma_cm: ``rs_connect`` and ``RsListener``.

As rsocket.c does it: the TCP port space; receives posted before the
connect or accept; our ConnData as private data; retry and RNR retry 7 with
flow control.  Our QP is our own (pyverbs cannot post write-with-immediate on
the CMID's), moved through the states rdma_cm computes for it: the active
side after the CONNECT_RESPONSE, then ``establish()``; the passive side
before it accepts.  An accepted id moves to an event channel of its own, so
that its disconnect reaches its own endpoint, not the listener.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import time

from ..errors import ProtocolError, inherited_error
from ..verbs.inherit import keep, owner
from ..protocol import rsocket as rs
from ..verbs import _pyverbs as pv
from ..verbs import cm
from .rsocket import Resources, RsEndpoint, core_class

log = logging.getLogger("rdmamsg.rsocket")
Address = tuple[str, int]
ROUTE_MS = 2000


def _ipv4(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise OSError(errno.EHOSTUNREACH, f"cannot resolve {host!r}: {exc}") from exc


def _param(res: Resources):
    param = cm.cmid.ConnParam(resources=0, depth=0, flow_control=1, retry=7, rnr_retry=7,
                              qp_num=res.qp.qp_num, data_len=rs.CONN_DATA_LEN)
    param.set_private_data(res.conn_data().pack())
    return param


def _left(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("rsocket connect timed out")
    return left


def rs_connect(address: Address, timeout: float | None = None,
               source_address: Address | None = None) -> RsEndpoint:
    """Connect to an rsocket server (C rsockets, rstream, or ours) at ``address``."""
    host, port = _ipv4(address[0]), int(address[1])
    deadline = None if timeout is None else time.monotonic() + timeout
    core_class()                      # fail before connecting if there is no C data path
    events = cm.EventChannel()
    cm_id = res = None
    try:
        cm_id = events.new_id()
        if source_address is not None:
            cm.bind(cm_id, _ipv4(source_address[0]) if source_address[0] else "0.0.0.0",
                    int(source_address[1]))
        ms = ROUTE_MS if deadline is None else max(1, int(_left(deadline) * 1000))
        try:
            cm_id.resolve_addr(cm.addr_info(host, port), min(ms, ROUTE_MS))
        except pv.PyverbsRDMAError as exc:
            raise OSError(exc.error_code or errno.EHOSTUNREACH,
                          f"rdma_resolve_addr({host}) failed: no RDMA route") from exc
        events.expect(cm.ce.RDMA_CM_EVENT_ADDR_RESOLVED, _left(deadline), f"connect to {host}")
        try:
            cm_id.resolve_route(ROUTE_MS)
        except pv.PyverbsRDMAError as exc:
            raise OSError(exc.error_code or errno.EHOSTUNREACH,
                          f"rdma_resolve_route({host}) failed") from exc
        events.expect(cm.ce.RDMA_CM_EVENT_ROUTE_RESOLVED, _left(deadline), f"connect to {host}")
        res = Resources(cm_id)
        try:
            cm_id.connect(_param(res))
        except pv.PyverbsRDMAError as exc:
            raise OSError(exc.error_code or errno.ECONNREFUSED, "rdma_connect failed") from exc
        ev = events.expect(cm.ce.RDMA_CM_EVENT_CONNECT_RESPONSE, _left(deadline),
                           f"connect to {host}:{port}")
        try:
            peer = rs.ConnData.unpack(ev.private_data)
        finally:
            ev.close()
        res.ready_to_send(cm_id)
        try:
            cm_id.establish()
        except pv.PyverbsRDMAError as exc:
            raise OSError(exc.error_code or errno.ECONNRESET, "rdma_establish failed") from exc
        laddr, raddr = cm.addresses(cm_id)
        return RsEndpoint(cm_id, events, res, peer, laddr, raddr)
    except BaseException:
        if res is not None:
            res.close()
        if cm_id is not None:
            cm_id.close()
        events.close()
        raise


class RsListener:
    """An rdma_cm listener for rsocket clients on ``address`` (0.0.0.0: any)."""

    def __init__(self, address: Address, backlog: int = 128) -> None:
        host = _ipv4(address[0]) if address[0] else "0.0.0.0"
        core_class()
        self._events = cm.EventChannel()
        self._id = None
        try:
            self._id = self._events.new_id()
            cm.bind(self._id, host, int(address[1]))
            try:
                self._id.listen(max(backlog, 1))
            except pv.PyverbsRDMAError as exc:
                raise OSError(exc.error_code or errno.EADDRINUSE, "rdma_listen failed") from exc
        except BaseException:
            if self._id is not None:
                self._id.close()
            self._events.close()
            raise
        self.address: Address = (host, cm.addresses(self._id)[0][1])
        self.refused = 0        #: connection requests refused (bad private data)
        self._inherited_from = 0
        owner(self)

    def _disown(self) -> None:
        """In a child after fork(): the rdma_cm id is the parent's, and so are
        the requests that come to it."""
        self._inherited_from = os.getppid()

    def fileno(self) -> int:
        """Readable when a connection request waits."""
        return self._events.fd

    def accept(self, timeout: float | None = None) -> RsEndpoint:
        """The next client's connection (TimeoutError if none came in time).
        A request whose private data we cannot talk to is rejected, logged
        and counted in ``refused``, and we wait for the next."""
        if self._inherited_from:
            raise inherited_error("rsocket listener", self._inherited_from)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ev = self._events.get(left)
            if ev.event_type != cm.ce.RDMA_CM_EVENT_CONNECT_REQUEST:
                ev.close()
                continue
            child = keep(cm.cmid.CMID(creator=ev, listen_id=self._id))
            try:
                peer = rs.ConnData.unpack(ev.private_data)
            except ProtocolError as exc:
                self.refused += 1
                log.warning("rdmamsg: refused an rsocket connection request: %s", exc)
                try:
                    child.reject()
                finally:
                    ev.close()
                    child.close()
                continue
            ev.close()
            try:
                return self._accept(child, peer, deadline)
            except (OSError, TimeoutError) as exc:
                log.warning("rdmamsg: an rsocket connection failed while accepted: %s", exc)
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError("no rsocket connection completed in time") from exc

    def _accept(self, child, peer: rs.ConnData, deadline: float | None) -> RsEndpoint:
        events = cm.EventChannel()
        res = None
        try:
            events.adopt(child)
            res = Resources(child)
            res.ready_to_send(child)
            try:
                child.accept(_param(res))
            except pv.PyverbsRDMAError as exc:
                raise OSError(exc.error_code or errno.ECONNABORTED, "rdma_accept failed") from exc
            left = None if deadline is None else max(5.0, deadline - time.monotonic())
            events.expect(cm.ce.RDMA_CM_EVENT_ESTABLISHED, left, "accept").close()
            laddr, raddr = cm.addresses(child)
            return RsEndpoint(child, events, res, peer, laddr, raddr)
        except BaseException:
            if res is not None:
                res.close()
            child.close()
            events.close()
            raise

    def close(self) -> None:
        if self._id is not None and not self._inherited_from:
            self._id.close()
            self._events.close()
        self._id = None

    def __enter__(self) -> "RsListener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

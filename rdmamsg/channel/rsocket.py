"""An rsockets connection: the byte stream librdmacm's rsocket() speaks.

``RsEndpoint`` is one connected rsocket, made by ``rs_connect`` or
``RsListener.accept`` (channel/rsocket_setup.py).  It offers the stream side
of the Endpoint contract that RdmaSocket (stream/socket.py) drives, so the
socket facade, its asyncio transport and the transparent mode run on either
protocol.  A "message" here is what one DATA write carried; ``send`` returns
how much it sent, as a socket does.

This module owns the connection's verbs objects and its rdma_cm id; the
data path (posting, completions, waiting, the rules of protocol/rsocket.py)
is C: ``RsCore`` in the Cython poller (ext/transport/rsocket.pxi), whose head says who
waits for what.  There is no pure-pyverbs twin: rsockets need the Cython
poller.
"""
from __future__ import annotations

import errno
import functools
from typing import Any

from ..errors import PollerUnavailableError, RdmaError
from ..protocol import rsocket as rs
from ..verbs import _pyverbs as pv
from ..verbs.context import DeviceContext
from ..verbs.cq import CompletionQueue
from ..verbs.inherit import keep, owner
from ..verbs.qp import to_error
from ..verbs.region import Region
from ..verbs import cm

e = pv.enums
RING = 1 << 17              #: the receive ring (rsockets' default mem_default)
SEND_RING = 1 << 17         #: the staging ring outgoing bytes are copied into
QUEUE = 384                 #: send and receive queue depths (rsockets' defaults)
MAX_INLINE = 64             #: writes this short go inline (rsockets' default)


def core_class() -> type:
    """The C data path's class; PollerUnavailableError saying why if the
    Cython poller cannot be used here."""
    try:
        from ..transport._cpoller import RsCore
    except ImportError as exc:
        raise PollerUnavailableError(f"rsockets need the Cython poller, which is not built "
                                     f"here: {exc}") from exc
    return RsCore


class Resources:
    """The verbs objects of one connection, on our own device context: a CQ
    with its channel fd, an RC QP walked to RTS by rdma_cm's attributes, the
    receive ring and target SGL (remote-writable), and the send ring."""

    def __init__(self, cm_id, depth: int = QUEUE) -> None:
        self.dctx = DeviceContext.acquire(cm_id.dev_name)
        self.cq = self.qp = self.ring = self.sgl = self.sbuf = None
        try:
            self.cq = CompletionQueue(self.dctx, 2 * depth)
            cap = pv.qp.QPCap(max_send_wr=depth, max_recv_wr=depth, max_send_sge=1,
                              max_recv_sge=1, max_inline_data=MAX_INLINE)
            init = pv.qp.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq.cq, rcq=self.cq.cq,
                                    cap=cap, sq_sig_all=1)
            try:
                self.qp = keep(pv.qp.QP(self.dctx.pd, init))
            except pv.PyverbsRDMAError as exc:
                raise OSError(exc.error_code or errno.ENOMEM, "ibv_create_qp failed") from exc
            self.max_inline = MAX_INLINE
            self.ring = Region(self.dctx.pd, RING)
            self.sgl = Region(self.dctx.pd, 4096)
            self.sbuf = Region(self.dctx.pd, SEND_RING + rs.CTRL_SLOTS * rs.SGE_LEN,
                               e.IBV_ACCESS_LOCAL_WRITE)
            self.depth = depth
            self._move(cm_id, e.IBV_QPS_INIT)
            recv_wr = pv.wr.RecvWR(wr_id=core_class().RECV_WR_ID, num_sge=1,
                                   sg=[pv.wr.SGE(self.ring.addr, 0, self.ring.lkey)])
            for _ in range(depth):
                self.qp.post_recv(recv_wr)
        except BaseException:
            self.close()
            raise
    def _move(self, cm_id, state: int) -> None:
        try:
            attr, mask = cm_id.init_qp_attr(state)
            self.qp.modify(attr, mask)
        except pv.PyverbsRDMAError as exc:
            raise OSError(exc.error_code or errno.EINVAL, f"rdma_init_qp_attr/ibv_modify_qp "
                          f"to state {state} failed") from exc

    def ready_to_send(self, cm_id) -> None:
        # INIT again first: only now does rdma_cm grant the peer REMOTE_WRITE.
        self._move(cm_id, e.IBV_QPS_INIT)
        self._move(cm_id, e.IBV_QPS_RTR)
        self._move(cm_id, e.IBV_QPS_RTS)

    def conn_data(self) -> rs.ConnData:
        return rs.ConnData(credits=self.depth,
                           target_sgl=rs.Sge(self.sgl.addr, self.sgl.rkey, rs.SGL_SIZE),
                           data_buf=rs.Sge(self.ring.addr, self.ring.rkey, RING // 2))

    def to_error(self) -> None:
        try:
            to_error(self.qp)
        except RdmaError:
            pass

    def close(self) -> None:
        """QP first (rxe waits for it), then memory, CQ and the context."""
        if self.dctx is None:
            return
        if self.qp is not None:
            self.qp.close()
        for r in (self.ring, self.sgl, self.sbuf):
            if r is not None:
                r.close()
        if self.cq is not None:
            self.cq.close()
        dctx, self.dctx = self.dctx, None
        dctx.release()


class RsView:
    """Received bytes lent from the ring (``data``); ``release()`` consumes them."""

    __slots__ = ("_core", "data")

    def __init__(self, core, data: memoryview | None) -> None:
        self._core, self.data = core, data

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data)

    def release(self) -> None:
        if self.data is None:
            return
        n = len(self.data)
        self.data.release()
        self.data = None
        if self._core is not None:
            self._core.consumed(n)


def _peer_gone(events: cm.EventChannel) -> bool:
    """Read every rdma_cm event waiting; True if one says the peer is gone."""
    gone = False
    while events.ready(0):
        try:
            ev = events.get(0)
        except TimeoutError:
            break
        kind = ev.event_type
        ev.close()
        gone = gone or kind in (cm.ce.RDMA_CM_EVENT_DISCONNECTED,
                                cm.ce.RDMA_CM_EVENT_DEVICE_REMOVAL)
    return gone


class RsEndpoint:
    """A connected rsocket.  ``laddr``/``raddr`` are (host, port).

    The calls of the Endpoint contract are RsCore's own (bound here), so a
    socket's call reaches C without a Python frame; ``engine`` is the core,
    so RdmaSocket's C fast path (ext/transport/stream.pxi) drives it too.
    """

    poller = "cython"
    fragment = rs.MAX_TRANSFER

    def __init__(self, cm_id, events: cm.EventChannel, res: Resources, peer: rs.ConnData,
                 laddr, raddr) -> None:
        self._id, self._events, self._res = cm_id, events, res
        self.laddr, self.raddr = laddr, raddr
        self.engine = core = core_class()(res, peer, events.fd,
                                          functools.partial(_peer_gone, events))
        self.send, self.recv_into = core.send, core.recv_into
        self.poll, self.pending, self.wait = core.poll, core.pending, core.wait
        self.signal, self.progress_count = core.signal, core.progress_count
        self.fileno, self.interrupt = core.fileno, core.interrupt
        self._ring = res.ring.view
        owner(self)

    def _disown(self) -> None:
        """In a child after fork(): every use raises InheritedError, and
        close() destroys nothing (the QP and the rdma_cm id are the parent's)."""
        self.engine._disown()
        self._res = None

    def send(self, data, timeout: float | None = None) -> int:      # bound in __init__
        """Send ``data``; the number of bytes sent.  Blocks while the peer lends
        no room, up to ``timeout`` (0: what can go now).  An empty ``data``
        ends our direction of the stream (CTRL SHUTDOWN).  TimeoutError if
        nothing could go in time."""
        return self.engine.send(data, timeout)

    def recv_into(self, buffer, timeout: float | None = None) -> int:   # bound in __init__
        """Up to len(buffer) bytes as soon as some are there; 0 at end of stream."""
        return self.engine.recv_into(buffer, timeout)

    def recv_view(self, timeout: float | None = None) -> RsView:
        """The oldest unread bytes, lent from the ring; empty at end of stream."""
        span = self.engine.span(timeout)
        if span is None:
            return RsView(None, None)
        off, n = span
        return RsView(self.engine, self._ring[off:off + n].toreadonly())

    def recv(self, timeout: float | None = None) -> bytes:
        buf = bytearray(rs.MAX_TRANSFER)
        return bytes(buf[:self.recv_into(buf, timeout)])

    def stats(self) -> dict[str, Any]:
        return dict(self.engine.stats(), protocol="rsocket")

    @property
    def closed(self) -> bool:
        return self.engine.closed

    def close(self, linger: float | None = None) -> None:
        """Say goodbye (CTRL DISCONNECT), wait up to ``linger`` seconds (2 by
        default) for what we sent to be taken, then free everything."""
        if self._res is None:
            return
        self.engine.close(linger)
        res, self._res = self._res, None
        self._ring.release()
        res.to_error()
        self._id.close()
        res.close()
        self._events.close()

    def __repr__(self) -> str:
        state = "closed" if self._res is None else f"{self.laddr[:2]} -> {self.raddr[:2]}"
        return f"<rdmamsg RsEndpoint {state}>"

    def __enter__(self) -> "RsEndpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

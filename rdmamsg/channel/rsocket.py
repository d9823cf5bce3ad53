"""An rsockets connection: the byte stream librdmacm's rsocket() speaks.

``RsEndpoint`` is one connected rsocket on pyverbs, made by ``rs_connect`` or
``RsListener.accept`` (channel/rsocket_setup.py).  It offers the stream side
of the Endpoint contract that RdmaSocket (stream/socket.py) drives, so the
socket facade, its asyncio transport and the transparent mode run on either
protocol.  A "message" here is what one DATA write carried; ``send`` returns
how much it sent, as a socket does.  The rules live in protocol/rsocket.py.

Who waits for what.  One lock guards the state.  A call that must wait polls
the CQ; if nothing came, one thread (the leader) arms the CQ and sleeps in
epoll on the CQ channel, the rdma_cm channel and a wake-up eventfd, with the
lock released; others wait on the condition the leader notifies.  The
rdma_cm channel reports the peer's disconnect (also when its process dies):
arrived data is still read first, then ConnectionResetError, unless the peer
said goodbye with CTRL DISCONNECT or SHUTDOWN (an orderly end of stream).
"""
from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from typing import Any

from ..errors import ProtocolError, RdmaError, WorkCompletionError, closed_error
from ..protocol import rsocket as rs
from ..verbs import _pyverbs as pv
from ..verbs.context import DeviceContext
from ..verbs.cq import CompletionQueue
from ..verbs.qp import to_error
from ..verbs.region import Region
from ..verbs import cm

e = pv.enums
RECV = 1 << 63
K_DATA, K_SGL, K_CTRL = 1, 2, 3
WC_BATCH = 32
RING = 1 << 17              #: the receive ring (rsockets' default mem_default)
SEND_RING = 1 << 17         #: the staging ring outgoing bytes are copied into
QUEUE = 384                 #: send and receive queue depths (rsockets' defaults)
LOW_WATER = 2048            #: no write smaller than this unless the send is


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
                              max_recv_sge=1, max_inline_data=0)
            init = pv.qp.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=self.cq.cq, rcq=self.cq.cq,
                                    cap=cap, sq_sig_all=1)
            try:
                self.qp = pv.qp.QP(self.dctx.pd, init)
            except pv.PyverbsRDMAError as exc:
                raise OSError(exc.error_code or errno.ENOMEM, "ibv_create_qp failed") from exc
            self.ring = Region(self.dctx.pd, RING)
            self.sgl = Region(self.dctx.pd, 4096)
            self.sbuf = Region(self.dctx.pd, SEND_RING + rs.CTRL_SLOTS * rs.SGE_LEN,
                               e.IBV_ACCESS_LOCAL_WRITE)
            self.depth = depth
            self._move(cm_id, e.IBV_QPS_INIT)
            self.recv_wr = pv.wr.RecvWR(wr_id=RECV, num_sge=1,
                                        sg=[pv.wr.SGE(self.ring.addr, 0, self.ring.lkey)])
            for _ in range(depth):
                self.qp.post_recv(self.recv_wr)
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

    __slots__ = ("_ep", "data")

    def __init__(self, ep: "RsEndpoint | None", data: memoryview | None) -> None:
        self._ep, self.data = ep, data

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data)

    def release(self) -> None:
        if self.data is None:
            return
        n = len(self.data)
        self.data.release()
        self.data = None
        if self._ep is not None:
            self._ep._consumed(n)


class RsEndpoint:
    """A connected rsocket.  ``laddr``/``raddr`` are (host, port)."""

    engine = None               # no C fast path: RdmaSocket's general path serves it
    poller = "python"

    def __init__(self, cm_id, events: cm.EventChannel, res: Resources, peer: rs.ConnData,
                 laddr, raddr) -> None:
        self._id, self._events, self._res = cm_id, events, res
        self.laddr, self.raddr = laddr, raddr
        self.fragment = rs.MAX_TRANSFER
        self._tx = rs.Sender(res.sgl.view[:rs.SGL_SIZE * rs.SGE_LEN], peer)
        self._rx = rs.Receiver(res.ring.addr, res.ring.rkey, RING, res.depth, peer)
        self._peer_sgl = peer.target_sgl
        self._sq_free = res.depth - rs.CTRL_SLOTS     # send WRs left for DATA
        self._sbuf_head = 0
        self._sbuf_free = SEND_RING
        self._sbuf_skipped = 0                # a skipped ring tail, freed with the next write
        self._ctrl_seq = 0
        self._sent_ctrl: int | None = None    # SHUTDOWN/DISCONNECT posted by us
        self._peer_shut = False               # the peer will send no more
        self._peer_bye = False                # ... nor read (CTRL DISCONNECT)
        self._peer_gone = False               # its QP is gone (rdma_cm said so)
        self._error: BaseException | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._leader = False
        self._changes = 0
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sig = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ep = select.epoll()
        for fd in (res.cq.fd, events.fd, self._wake):
            self._ep.register(fd, select.EPOLLIN)
        self._sel = select.epoll()
        self._sel.register(self._ep.fileno(), select.EPOLLIN)
        self._sel.register(self._sig, select.EPOLLIN)
        self._cc_ready = select.poll()
        self._cc_ready.register(res.cq.fd, select.POLLIN)
        self._stats = dict.fromkeys(("bytes_sent", "bytes_received", "writes", "credit_updates"), 0)

    # -- sending -------------------------------------------------------------------------

    def send(self, data, timeout: float | None = None) -> int:
        """Send ``data``; the number of bytes sent.  Blocks while the peer lends
        no room, up to ``timeout`` (0: what can go now).  An empty ``data``
        ends our direction of the stream (CTRL SHUTDOWN).  TimeoutError if
        nothing could go in time."""
        mv = memoryview(data).cast("B")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check_send()
            if not mv.nbytes:
                self._shut_write(deadline)
                return 0
            sent, step, total = 0, rs.FIRST_TRANSFER, mv.nbytes
            while sent < total:
                room = self._room(total - sent)
                if not room:
                    if not self._wait(deadline):
                        if sent:
                            return sent
                        raise TimeoutError("the peer lent no room in time")
                    self._check_send()
                    continue
                n, step = rs.write_size(total - sent, room, step)
                self._post_data(mv[sent:sent + n])
                sent += n
            return sent

    def _room(self, left: int) -> int:
        """Bytes the next write may carry now: a send WR, room in the lent
        slot (any), and contiguous space in the send ring, which must take
        at least a useful write (a shorter tail is skipped: the next write
        frees it when it completes)."""
        if not self._sq_free:
            return 0
        room = self._tx.room()
        if not room:
            return 0
        want = min(left, room, LOW_WATER)
        tail = SEND_RING - self._sbuf_head
        if tail < want and self._sbuf_free >= tail:
            self._sbuf_free -= tail
            self._sbuf_skipped += tail
            self._sbuf_head = 0
        space = min(self._sbuf_free, SEND_RING - self._sbuf_head)
        return min(room, space) if space >= want else 0

    def _post_data(self, piece: memoryview) -> None:
        n = piece.nbytes
        res = self._res
        at = self._sbuf_head
        res.sbuf.view[at:at + n] = piece
        addr, rkey = self._tx.take(n)
        frees, self._sbuf_skipped = n + self._sbuf_skipped, 0
        self._post(res.sbuf.addr + at, n, res.sbuf.lkey, (K_DATA << 32) | frees,
                   rs.imm(rs.OP_DATA, n), addr, rkey)
        self._sbuf_head = (at + n) % SEND_RING
        self._sbuf_free -= n
        self._sq_free -= 1
        self._stats["bytes_sent"] += n
        self._stats["writes"] += 1

    def _post(self, addr: int, length: int, lkey: int, wr_id: int, imm: int,
              raddr: int, rkey: int) -> None:
        sge = pv.wr.SGE(addr, length, lkey)
        wr = pv.wr.SendWR(wr_id=wr_id, opcode=e.IBV_WR_RDMA_WRITE_WITH_IMM, num_sge=1,
                          sg=[sge], imm_data=socket.htonl(imm), send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(rkey, raddr)
        if not length:
            wr.num_sge = 0
        try:
            self._res.qp.post_send(wr)
        except pv.PyverbsRDMAError as exc:
            self._fail(ConnectionResetError(exc.error_code or errno.EIO,
                                            "ibv_post_send failed: the connection is down"))
            raise self._error from exc
        finally:
            wr.close()
            sge.close()

    def _post_ctrl(self, value: int, entry: bytes | None = None, index: int = 0) -> None:
        """A control write: credits (with a lent slot's entry) or CTRL."""
        res = self._res
        self._ctrl_seq += 1
        kind = K_SGL if rs.split_imm(value)[0] == rs.OP_SGL else K_CTRL
        if entry is None:
            self._post(0, 0, 0, (kind << 32) | (value & 0xFFFFFFFF), value, 0, 0)
            return
        at = SEND_RING + (self._ctrl_seq % rs.CTRL_SLOTS) * rs.SGE_LEN
        res.sbuf.view[at:at + rs.SGE_LEN] = entry
        self._post(res.sbuf.addr + at, rs.SGE_LEN, res.sbuf.lkey, (kind << 32) | value, value,
                   self._peer_sgl.addr + index * rs.SGE_LEN, self._peer_sgl.key)

    def _shut_write(self, deadline: float | None) -> None:
        if self._sent_ctrl is not None:
            return
        ctrl = rs.CTRL_DISCONNECT if self._peer_shut else rs.CTRL_SHUTDOWN
        while self._rx.ctrl_in_flight >= rs.CTRL_SLOTS:
            if not self._wait(deadline):
                raise TimeoutError("could not send the end of stream in time")
            self._check_send()
        self._rx.ctrl_in_flight += 1
        self._sent_ctrl = ctrl
        self._post_ctrl(rs.imm(rs.OP_CTRL, ctrl))

    # -- receiving -----------------------------------------------------------------------

    def recv_view(self, timeout: float | None = None) -> RsView:
        """The oldest unread bytes, lent from the ring; empty at end of stream."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if not self._await_data(deadline):
                return RsView(None, None)
            off, n = self._rx.peek()
            return RsView(self, self._res.ring.view[off:off + n].toreadonly())

    def recv_into(self, buffer, timeout: float | None = None) -> int:
        """Up to len(buffer) bytes as soon as some are there; 0 at end of stream."""
        dst = memoryview(buffer).cast("B")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if not self._await_data(deadline):
                return 0
            got, ring = 0, self._res.ring.view
            while got < dst.nbytes and self._rx.messages:
                off, n = self._rx.peek()
                n = min(n, dst.nbytes - got)
                dst[got:got + n] = ring[off:off + n]
                got += n
                self._consume(n)
            self._give_credits()
            return got

    def recv(self, timeout: float | None = None) -> bytes:
        buf = bytearray(rs.MAX_TRANSFER)
        return bytes(buf[:self.recv_into(buf, timeout)])

    def _await_data(self, deadline: float | None) -> bool:
        """Lock held: True once bytes wait, False at end of stream."""
        self._check_open()
        while not self._rx.messages:
            self._progress()
            if self._rx.messages:
                break
            if self._peer_shut and not self._rx.messages:
                return False
            if self._error is not None:
                raise self._error
            if self._peer_gone:
                raise ConnectionResetError(errno.ECONNRESET, "the rsocket peer disconnected "
                                           "without ending the stream")
            if not self._wait(deadline):
                raise TimeoutError("no data in time")
        return True

    def _consume(self, n: int) -> None:
        self._rx.consume(n)
        self._stats["bytes_received"] += n

    def _consumed(self, n: int) -> None:           # an RsView released
        with self._lock:
            if self._closed:
                return
            self._consume(n)
            self._give_credits()

    def _give_credits(self) -> None:
        rx = self._rx
        if (self._sent_ctrl == rs.CTRL_DISCONNECT or self._peer_bye or self._error
                or self._peer_gone):
            return
        while rx.update_due():
            value, entry, index = rx.make_update()
            self._stats["credit_updates"] += 1
            self._post_ctrl(value, entry, index)
            if entry is None:
                break

    # -- completions ---------------------------------------------------------------------

    def _progress(self) -> bool:
        """Handle every completion waiting; True if there were any."""
        if self._error is not None:
            return False
        try:
            n, wcs = self._res.cq.cq.poll(WC_BATCH)
        except pv.PyverbsRDMAError as exc:
            self._fail(ConnectionResetError(exc.error_code or errno.EIO, "ibv_poll_cq failed"))
            return True
        if not n:
            return False
        reposts = 0
        try:
            for wc in wcs[:n]:
                if wc.wr_id & RECV:
                    reposts += 1
                    self._arrived(wc)
                else:
                    self._completed(wc)
        except ProtocolError as exc:
            self._fail(exc)
        if self._error is None:
            try:
                for _ in range(reposts):
                    self._res.qp.post_recv(self._res.recv_wr)
            except pv.PyverbsRDMAError as exc:
                self._fail(ConnectionResetError(exc.error_code or errno.EIO,
                                                "ibv_post_recv failed"))
            self._give_credits()
        self._changes += 1
        self._cond.notify_all()
        return True

    def _arrived(self, wc) -> None:
        if wc.status != e.IBV_WC_SUCCESS:
            if wc.status != e.IBV_WC_WR_FLUSH_ERR:
                raise WorkCompletionError(wc.status, "receive", wc.vendor_err)
            self._peer_gone = True
            return
        if not wc.wc_flags & e.IBV_WC_WITH_IMM:
            raise ProtocolError("the rsocket peer sent a message without an immediate "
                                "(iWARP's message mode is not supported)")
        op, value = rs.split_imm(socket.ntohl(wc.imm_data))
        if op == rs.OP_DATA:
            if self._peer_shut:
                raise ProtocolError("the rsocket peer wrote data after ending its stream")
            if wc.byte_len != value:
                raise ProtocolError(f"a DATA write of {wc.byte_len} bytes claims {value}")
            if value:
                self._rx.on_data(value)
        elif op == rs.OP_SGL:
            self._tx.credits(value)
        elif op == rs.OP_CTRL:
            if value == rs.CTRL_DISCONNECT:
                self._peer_shut = self._peer_bye = True
            elif value == rs.CTRL_SHUTDOWN:
                self._peer_shut = True
            elif value != rs.CTRL_KEEPALIVE:
                raise ProtocolError(f"unknown rsocket control value {value}")
        else:
            raise ProtocolError(f"rsocket operation {op} is not supported "
                                "(we lend no iomap)")

    def _completed(self, wc) -> None:
        kind = wc.wr_id >> 32
        if kind == K_DATA:
            n = wc.wr_id & 0xFFFFFFFF
            self._sbuf_free += n
            self._sq_free += 1
        else:
            self._rx.ctrl_done()
        if wc.status != e.IBV_WC_SUCCESS:
            if wc.status == e.IBV_WC_WR_FLUSH_ERR and (self._peer_gone or self._closed):
                return
            self._fail(WorkCompletionError(wc.status, "RDMA write", wc.vendor_err))

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            self._res.to_error()
        self._cond.notify_all()

    # -- waiting -------------------------------------------------------------------------

    def _wait(self, deadline: float | None) -> bool:
        """Lock held: wait for progress; False once ``deadline`` passed."""
        if self._progress():
            return True
        if self._error is not None or self._peer_gone:
            return True
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        if self._leader:
            self._cond.wait(left)
            self._check_open()
            return deadline is None or time.monotonic() < deadline
        self._res.cq.cq.req_notify()
        if self._progress():
            return True
        self._leader = True
        self._lock.release()
        try:
            events = self._ep.poll(-1 if left is None else left)
        finally:
            self._lock.acquire()
            self._leader = False
            self._cond.notify_all()
        self._check_open()
        for fd, _ in events:
            if fd == self._res.cq.fd:
                self._drain_cq_events()
            elif fd == self._events.fd:
                self._cm_events()
            elif fd == self._wake:
                try:
                    os.eventfd_read(self._wake)
                except BlockingIOError:
                    pass
        return bool(events) or deadline is None or time.monotonic() < deadline

    def _drain_cq_events(self) -> None:
        cq = self._res.cq
        while self._cc_ready.poll(0):
            try:
                cq.channel.get_cq_event(cq.cq)
            except pv.PyverbsRDMAError:
                return
            cq.cq.ack_events(1)

    def _cm_events(self) -> None:
        while self._events.ready(0):
            try:
                ev = self._events.get(0)
            except TimeoutError:
                return
            kind = ev.event_type
            ev.close()
            if kind in (cm.ce.RDMA_CM_EVENT_DISCONNECTED, cm.ce.RDMA_CM_EVENT_DEVICE_REMOVAL):
                while self._progress():       # what arrived before the goodbye counts
                    pass
                self._peer_gone = True
                self._changes += 1
                self._cond.notify_all()

    # -- the Endpoint contract for the socket layer --------------------------------------

    def poll(self) -> int:
        """Progress without blocking; the messages ready (1 once nothing more can
        arrive, so that a receive reports why)."""
        with self._lock:
            self._check_open()
            self._drain_cq_events()
            self._cm_events()
            while self._progress():
                pass
            self._res.cq.cq.req_notify()
            while self._progress():
                pass
            if self._rx.messages:
                return len(self._rx.messages)
            return int(self._peer_shut or self._peer_gone or self._error is not None)

    def pending(self) -> int:
        return len(self._rx.messages)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check_open()
            if self._rx.messages:
                return True
            return self._wait(deadline)

    def signal(self, on: bool) -> None:
        with self._lock:
            self._check_open()
            if on:
                os.eventfd_write(self._sig, 1)
            else:
                try:
                    os.eventfd_read(self._sig)
                except BlockingIOError:
                    pass

    def progress_count(self) -> int:
        return self._changes

    def fileno(self) -> int:
        self._check_open()
        return self._sel.fileno()

    def interrupt(self) -> None:
        if not self._closed:
            os.eventfd_write(self._wake, 1)

    def stats(self) -> dict[str, Any]:
        return dict(self._stats, protocol="rsocket")

    @property
    def closed(self) -> bool:
        return self._closed

    # -- ending --------------------------------------------------------------------------

    def close(self, linger: float | None = None) -> None:
        """Say goodbye (CTRL DISCONNECT), wait up to ``linger`` seconds (2 by
        default) for what we sent to be taken, then free everything."""
        with self._lock:
            if self._closed:
                return
            deadline = time.monotonic() + (2.0 if linger is None else linger)
            try:
                if (self._error is None and not self._peer_gone and not self._peer_bye
                        and self._sent_ctrl != rs.CTRL_DISCONNECT):
                    while self._rx.ctrl_in_flight >= rs.CTRL_SLOTS and self._wait(deadline):
                        pass
                    if self._rx.ctrl_in_flight < rs.CTRL_SLOTS:
                        self._rx.ctrl_in_flight += 1
                        self._sent_ctrl = rs.CTRL_DISCONNECT
                        self._post_ctrl(rs.imm(rs.OP_CTRL, rs.CTRL_DISCONNECT))
                while (self._error is None and not self._peer_gone
                       and self._outstanding() and self._wait(deadline)):
                    pass
            except OSError:
                pass
            self._closed = True
            self._cond.notify_all()
        try:
            os.eventfd_write(self._wake, 1)
        except OSError:
            pass
        self._res.to_error()
        for obj in (self._sel, self._ep):
            obj.close()
        os.close(self._wake)
        os.close(self._sig)
        self._id.close()
        self._res.close()
        self._events.close()

    def _outstanding(self) -> bool:
        return (self._sq_free < self._res.depth - rs.CTRL_SLOTS or self._rx.ctrl_in_flight > 0)

    def _check_open(self) -> None:
        if self._closed:
            raise closed_error("rsocket")

    def _check_send(self) -> None:
        self._check_open()
        if self._error is not None:
            raise self._error
        if self._sent_ctrl is not None:
            raise BrokenPipeError(errno.EPIPE, "the stream was shut down for writing")
        if self._peer_gone:
            raise ConnectionResetError(errno.ECONNRESET, "the rsocket peer disconnected")
        if self._peer_bye:
            raise BrokenPipeError(errno.EPIPE, "the rsocket peer closed the connection")

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.laddr[:2]} -> {self.raddr[:2]}"
        return f"<rdmamsg RsEndpoint {state}>"

    def __enter__(self) -> "RsEndpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


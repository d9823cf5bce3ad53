"""The pure-pyverbs engine: the fallback poller, same contract as the Cython one.

How this works.  Receives are posted once per buffer and reposted as soon as
the message in them has been copied out; each receive's wr_id is RECV_TAG |
buffer index.  Sends take a buffer from the free list (or none, for a
zero-length fragment), carry the frames.py immediate, and are signaled every
``signal_every`` posts; a send completion frees every buffer up to its
wr_id, since an RC queue completes in order.  Waiting is spin, then arm the
CQ, poll once more (the race), then sleep in epoll on the completion channel
and the liveness socket.  Only one thread (the leader) sleeps in epoll; others
wait on a condition that completions and the leader's waking notify, so no
thread sleeps on an event another thread already took.  The TCP socket from the handshake carries nothing
afterwards: its EOF means the peer is gone, unless its CLOSE came first.

The write channel (``config.ring``) changes only where data goes and what
limits a sender (protocol/ring.py): fragments are RDMA writes with immediate
into the peer's ring, placed by a RingSender instead of spending credits;
receives carry no buffer and are reposted when polled; a message's ring
cells go back when it is consumed, and CREDIT controls report them.

pyverbs' SendWR/SGE leak their C buffers unless closed, and double-free if
closed twice, so each is closed exactly once, right after posting.
"""
from __future__ import annotations

import collections
import os
import select
import socket
import threading
import time

from ..errors import (ProtocolError, RdmaError, WorkCompletionError,
                      closed_error, inherited_error)
from ..protocol import frames, ring
from ..protocol._core import (NUMBERS, PEER_CLOSED, REPOST, Arrivals, End, PeerEnd,
                              SendQueue, completion_error_wins, end_error, send_imm)
from ..protocol.credits import CreditWindow
from ..verbs import _pyverbs as pv
from ..verbs.regcache import buffer_address, byte_view
from .backend import STAT_KEYS, EngineConfig

e = pv.enums
RECV_TAG = 1 << 63
IDLE_SPIN = 50e-6      # the spin after an idle stretch (hybrid polling, as in the C engine)
ACTIVE_WINDOW = 5e-3   # a completion this recent: the connection is busy
WC_BATCH = 32


class Engine:
    name = "python"

    def __init__(self, cq, qp, recv_bufs, send_bufs, liveness: socket.socket, config: EngineConfig,
                 regcache=None):
        self._cq, self._qp = cq, qp
        self._cfg = config
        self._rbufs = list(recv_bufs)
        self._sbufs = list(send_bufs)
        self._sq = SendQueue(qp.max_send_wr, len(self._sbufs))   # post numbers, free buffers
        self._ring = config.ring
        if self._ring is None:
            self._credits = CreditWindow(config.peer_depth, config.credit_threshold)
            self._tx = self._rx = None
            nrecv, largest = len(self._rbufs), max(b.size for b in self._rbufs)
        else:
            self._credits = None
            self._peer_ring = config.peer_ring
            self._tx = ring.RingSender(config.peer_ring.cells, config.peer_ring.cell)
            self._rx = ring.RingReceiver(config.ring_cells, self._ring.size // config.ring_cells)
            nrecv, largest = config.ring_cells + ring.RESERVED_RECEIVES, self._rx.max_bytes
        # What each receive means, and the fragments not yet taken (the C core's rules)
        self._arr = Arrivals(nrecv, self._credits, self._tx, self._rx)
        self._reasm = frames.Reassembler(config.recv_max, largest)
        self._held: bytes | None = None     # a message taken but not yet delivered
        self._tail: tuple[bytes, int] | None = None  # (message, offset) a timed-out send left
        self._regcache = regcache if config.zerocopy_min > 0 else None
        self._zc_pending: collections.deque = collections.deque()   # (last seq, Registration)
        self._recv_wrs = []
        for i in range(nrecv):
            if self._ring is not None:      # data arrives by RDMA write: no buffer
                sge = pv.wr.SGE(self._ring.addr, 0, self._ring.lkey)   # (pyverbs wants one)
            else:
                b = self._rbufs[i]
                sge = pv.wr.SGE(b.addr, b.size, b.lkey)
            self._recv_wrs.append(pv.wr.RecvWR(wr_id=RECV_TAG | i, num_sge=1, sg=[sge]))
            sge.close()
        self._live = liveness
        self._end = PeerEnd()       # its CLOSE, the liveness socket's EOF, gone (the C rules)
        self._close_sent = False
        self._error: BaseException | None = None
        self._aborted = False
        self._closed = False
        self._inherited_from = 0    # the parent's pid, in a child after fork()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._poke_lock = threading.Lock()   # interrupt() writes no fd close() has closed
        self._leader = False
        self._sending = False       # a thread is posting a message (_take_send_turn)
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ep = select.epoll()
        self._ep.register(cq.fd, select.EPOLLIN)
        self._ep.register(liveness.fileno(), select.EPOLLIN)
        self._ep.register(self._wake, select.EPOLLIN)
        self._cc_ready = select.poll()
        self._cc_ready.register(cq.fd, select.POLLIN)
        # fileno(): our epoll set, or the level that signal() holds.  A
        # separate fd, so that no wait of ours can take the signal away.
        self._sig = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel = select.epoll()
        self._sel.register(self._ep.fileno(), select.EPOLLIN)
        self._sel.register(self._sig, select.EPOLLIN)
        self._changes = 0           # completions handled and kicks (progress_count)
        self._inside = 0
        self._interrupted = False   # interrupt() asked a receiver to step aside
        self._spin = config.spin_us / 1e6
        self._last_active = 0.0
        self._max_inline = min(config.max_inline, qp.max_inline)
        self._stats = dict.fromkeys(STAT_KEYS, 0)

    # -- posting ---------------------------------------------------------------

    def post_receives(self) -> None:
        with self._lock:
            for i in range(len(self._recv_wrs)):
                self._repost(i)
            if self._credits is not None:
                self._credits.unreturned = 0   # the initial depth is already the peer's credit

    def _repost(self, slot: int) -> None:
        try:
            self._qp.qp.post_recv(self._recv_wrs[slot])
        except pv.PyverbsRDMAError as exc:
            self._fail(RdmaError("ibv_post_recv", exc.error_code or 0))
            raise self._error from exc
        if self._credits is None:
            return
        self._credits.reposted()
        if self._credits.unreturned == 1 and self._credits.credits == 1:
            self._kick()     # a sender stalled on the last credit may now use it

    def _kick(self) -> None:
        """Wake waiters after a change that no completion will announce.  (The
        lock is held from a waiter's check until it sleeps, so a notify or the
        eventfd always reaches it.)"""
        self._changes += 1
        self._cond.notify_all()
        if self._leader:
            os.eventfd_write(self._wake, 1)

    def _post(self, kind: int, slot: int, length: int, value: int = 0,
              zc: tuple[int, int] | None = None, signal: bool = False,
              at: tuple[int, int] | None = None, inline: bool = False) -> None:
        """Post one SEND_WITH_IMM from send buffer ``slot`` (-1: none), or with
        ``zc`` = (address, lkey) from the caller's registered memory (with
        ``inline``, any memory: the device copies it at once).  ``value``
        is FIRST's length; other kinds carry the credits we owe.  On the write
        channel ``at`` = (offset, cells) makes it a write into the peer's
        ring, and a control's ``value`` is the ring cells it reports."""
        opcode = e.IBV_WR_SEND_WITH_IMM
        if at is not None:
            imm = ring.pack_imm(kind, *at)
            opcode = e.IBV_WR_RDMA_WRITE_WITH_IMM
        else:
            imm = send_imm(self._credits, kind, value)
        wr_id, signaled = self._sq.post(slot, kind, signal)
        if zc is not None:
            addr, lkey = zc
        elif slot >= 0:
            addr, lkey = self._sbufs[slot].addr, self._sbufs[slot].lkey
        else:
            addr = lkey = 0
        sge = pv.wr.SGE(addr, length, lkey)
        flags = (e.IBV_SEND_SIGNALED if signaled else 0) | (e.IBV_SEND_INLINE if inline else 0)
        wr = pv.wr.SendWR(wr_id=wr_id, opcode=opcode, num_sge=1,
                          sg=[sge], imm_data=socket.htonl(imm), send_flags=flags)
        if at is not None:
            peer = self._peer_ring
            wr.set_wr_rdma(peer.rkey, peer.addr + at[0] * peer.cell)
        if length == 0:
            wr.num_sge = 0
        try:
            self._qp.qp.post_send(wr)
        except pv.PyverbsRDMAError as exc:
            self._sq.unpost()              # never posted: no completion will come
            self._fail(RdmaError("ibv_post_send", exc.error_code or 0))
            raise self._error from exc
        finally:
            wr.close()
            sge.close()

    def _post_credit_update(self) -> None:
        if not self._sq.room() or self._close_sent:
            return
        value = self._arr.update_due()
        if value is not None:
            self._post(frames.CREDIT, -1, 0, value)
            self._stats["credit_updates_sent"] += 1

    # -- completions -----------------------------------------------------------

    def _progress(self) -> int:
        """Poll a batch of completions and act on them; how many there were."""
        try:
            n, wcs = self._cq.cq.poll(WC_BATCH)
        except pv.PyverbsRDMAError as exc:
            self._fail(RdmaError("ibv_poll_cq", exc.error_code or 0))
            return 1
        for wc in wcs:
            if wc.status != e.IBV_WC_SUCCESS:
                self._wc_failed(wc)
            elif wc.wr_id & RECV_TAG:
                self._received(wc)
            else:
                self._sq.completed(wc.wr_id)
        if n:
            self._changes += 1
            self._post_credit_update()
            self._cond.notify_all()
            self._last_active = time.monotonic()
        return n

    def _wc_failed(self, wc) -> None:
        if not wc.wr_id & RECV_TAG:
            self._sq.completed(wc.wr_id)
        held = (NUMBERS["WC_NONE"] if self._error is None else self._error.status
                if isinstance(self._error, WorkCompletionError) else NUMBERS["WC_OTHER"])
        if completion_error_wins(held, wc.status):
            what = "receive" if wc.wr_id & RECV_TAG else "send"
            self._error = WorkCompletionError(wc.status, what, wc.vendor_err)

    def _received(self, wc) -> None:
        slot = wc.wr_id & ~RECV_TAG
        if slot >= len(self._recv_wrs) or not wc.wc_flags & e.IBV_WC_WITH_IMM:
            return self._fail(ProtocolError("a receive completed without rdmamsg's immediate"))
        try:
            what = self._arr.arrived(slot, wc.opcode == e.IBV_WC_RECV_RDMA_WITH_IMM,
                                     wc.byte_len, socket.ntohl(wc.imm_data))
        except ProtocolError as exc:
            return self._fail(exc)
        if what & PEER_CLOSED:
            self._end.closed = True
        if what & REPOST:
            self._repost(slot)

    def _payload(self, item) -> memoryview:
        """The data of a received fragment, in place."""
        slot, length, _, value = item
        if self._ring is None:
            return self._rbufs[slot].view[:length]
        return self._ring.view[value:value + length]

    def _consumed(self, slot: int) -> None:
        """A received fragment's memory may be used again."""
        if self._rx is None:
            self._repost(slot)
        else:
            self._rx.release(slot)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if isinstance(exc, ProtocolError):
            self._abort()

    def _abort(self) -> None:
        """The peer broke the protocol: drop the connection now (QP to ERR,
        the liveness socket shut down, so the peer notices at once)."""
        if self._aborted or self._closed:
            return
        self._aborted = True
        try:
            self._qp.to_error()
        except OSError:
            pass
        try:
            self._live.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- waiting ---------------------------------------------------------------

    def _wait_locked(self, deadline: float | None, receiving: bool = False) -> bool:
        """Wait for progress with the lock held (released while sleeping).
        False once ``deadline`` has passed with nothing happening.  A receiver
        (``receiving``) also returns once interrupt() was called."""
        now = time.monotonic()
        busy = now - self._last_active < ACTIVE_WINDOW
        spin_end = now + (self._spin if busy else min(self._spin, IDLE_SPIN))
        if deadline is not None:
            spin_end = min(spin_end, deadline)      # a short timeout is not a spin licence
        while True:
            if self._progress() or (receiving and self._interrupted):
                return True
            if time.monotonic() >= spin_end:
                break
        if self._leader:
            # Another thread sleeps in epoll and notifies when it wakes.
            self._inside += 1
            try:
                self._cond.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            finally:
                self._leave()
            if self._closed:
                raise self._closed_error()
            return deadline is None or time.monotonic() < deadline
        self._cq.cq.req_notify()
        if self._progress() or (receiving and self._interrupted):
            return True
        if self._end.expired(time.monotonic()):
            self._cond.notify_all()
            return True
        timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        timeout = self._end.sleep_limit(timeout)
        self._stats["sleeps"] += 1
        self._inside += 1
        self._leader = True
        self._lock.release()
        try:
            events = self._ep.poll(timeout)
        finally:
            self._lock.acquire()
            self._leader = False
            self._inside -= 1
            self._cond.notify_all()        # (close() too, if it waits for us)
        if self._closed:
            raise self._closed_error()
        for fd, _ in events:
            if fd == self._cq.fd:
                self._drain_events()
            elif fd == self._live.fileno():
                self._check_live()
            elif fd == self._wake:
                os.eventfd_read(self._wake)
        if events or deadline is None:
            return True
        return time.monotonic() < deadline

    def _leave(self) -> None:
        """A waiter leaves (lock held); the last one out of a closed engine
        wakes close()."""
        self._inside -= 1
        if self._closed and not self._inside:
            self._cond.notify_all()

    def _drain_events(self) -> None:
        while True:
            if not self._cc_ready.poll(0):      # poll, not select: fds above 1024 work
                return
            try:
                self._cq.channel.get_cq_event(self._cq.cq)
            except pv.PyverbsRDMAError:
                return
            self._cq.cq.ack_events(1)

    def _check_live(self) -> None:
        if self._end.eof:
            return
        try:
            data = self._live.recv(64, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._end.saw_eof(time.monotonic())
            self._ep.unregister(self._live.fileno())

    # -- state checks ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _closed_error(self) -> Exception:
        if self._inherited_from:
            return inherited_error("endpoint", self._inherited_from)
        return closed_error("endpoint")

    def _disown(self) -> None:
        """In a child after fork(): every use raises InheritedError, and
        nothing is posted, polled or freed (the QP is the parent's).  The
        locks are new: a thread that held them does not exist here."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._poke_lock = threading.Lock()
        self._inside = 0
        self._sending = False
        self._closed = True
        self._inherited_from = os.getppid()

    def _raise_broken(self) -> None:
        if self._error is not None:
            raise self._error
        if self._end.gone:
            raise end_error(End.GONE)

    def _check_send(self) -> None:
        self._check_open()
        self._raise_broken()
        end = self._end.sending(self._close_sent)
        if end != End.OPEN:
            raise end_error(end)

    # -- send --------------------------------------------------------------------

    def send(self, data, timeout: float | None = None) -> None:
        mv = byte_view(data)
        n = mv.nbytes
        if n > self._cfg.send_max:
            raise ValueError(f"message of {n} bytes exceeds the peer's limit of {self._cfg.send_max}")
        deadline = None if timeout is None else time.monotonic() + timeout
        reg = None
        if self._regcache is not None and n >= self._cfg.zerocopy_min:
            addr = buffer_address(mv)
            reg = self._regcache.acquire(mv, addr, n)
        try:
            with self._lock:
                self._check_send()
                self._take_send_turn(deadline)
                wait_for = None
                try:
                    self._check_send()
                    self._prune()
                    if self._tail is not None:
                        self._send_from(*self._tail, continuing=True, deadline=deadline)
                    first = self._sq.next
                    try:
                        self._send_from(mv, 0, continuing=False, deadline=deadline,
                                        zc=None if reg is None else (addr, reg.lkey),
                                        signal_last=type(data) is not bytes)
                    finally:
                        if reg is not None and self._sq.next > first:
                            # Posted from the caller's memory: keep it registered
                            # until the last of those sends completes.
                            self._zc_pending.append((self._sq.next - 1, reg))
                            self._stats["zerocopy_sends"] += 1
                            reg = None
                            if type(data) is not bytes:
                                wait_for = self._sq.next - 1
                finally:
                    self._give_send_turn()
                    if wait_for is not None:
                        self._wait_sent(wait_for)
                self._stats["messages_sent"] += 1
                self._stats["bytes_sent"] += n
        finally:
            if reg is not None:
                self._regcache.release(reg)

    def _take_send_turn(self, deadline: float | None) -> None:
        """Become the thread that posts.  A message's fragments go out
        together: while one thread waits for room part-way through a message
        (the lock let go), another's message waits too."""
        while self._sending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("send timed out waiting for another thread's message to go")
            self._inside += 1
            try:
                self._cond.wait(left)
            finally:
                self._leave()
            if self._closed:
                raise self._closed_error()
        self._sending = True

    def _give_send_turn(self) -> None:
        self._sending = False
        if self._inside:
            self._cond.notify_all()

    def _prune(self) -> None:
        while self._zc_pending and self._zc_pending[0][0] < self._sq.done:
            self._regcache.release(self._zc_pending.popleft()[1])

    def _wait_sent(self, seq: int) -> None:
        """Wait until send ``seq`` has completed; a broken connection flushes it."""
        while self._sq.done <= seq and self._sq.done < self._sq.next:   # (a failed post never will)
            if self._error is not None or self._end.gone:
                self._abort()
            if not self._progress():
                self._wait_locked(None)
        self._prune()

    def _send_from(self, mv, start: int, *, continuing: bool, deadline: float | None,
                   zc: tuple[int, int] | None = None, signal_last: bool = False) -> None:
        frag = self._cfg.zc_fragment if zc else self._cfg.fragment
        n = len(mv)
        if continuing:
            pieces = _continuation(start, n, frag)
        else:
            pieces = frames.plan(n, frag, long_first=self._ring is not None,
                                 first_limit=self._cfg.fragment)
        self._tail = None
        for kind, off, length in pieces:
            inline = kind == frames.WHOLE and n <= self._max_inline
            # A slot to copy into, unless the data goes inline or zero-copy
            # (FIRST_LONG's header always needs one).
            need_slot = not (inline or (zc is not None and kind != frames.FIRST_LONG))
            wire = length + frames.FIRST_HEADER.size * (kind == frames.FIRST_LONG)
            while True:
                at = self._room(kind, wire, need_slot)
                if at is not None:
                    break
                self._raise_broken()
                if self._end.closed:
                    raise end_error(End.PEER_CLOSED)
                if not self._wait_locked(deadline):
                    if kind in (frames.WHOLE, *frames.STARTS):
                        raise TimeoutError("send timed out waiting for the peer to take messages")
                    self._tail = (bytes(mv), off)
                    raise TimeoutError("send timed out part-way through a message; the rest is "
                                       "sent ahead of the next message")
            at = at or None
            if inline:
                self._post(kind, -1, n, zc=(buffer_address(mv) if n else 0, 0), at=at,
                           inline=n > 0)
                self._stats["inline_sends"] += 1
                continue
            if not need_slot:
                self._post(kind, -1, length, n, zc=(zc[0] + off, zc[1]),
                           signal=signal_last and kind in (frames.WHOLE, frames.LAST), at=at)
                continue
            slot = self._sq.take()
            view = self._sbufs[slot].view
            if kind == frames.FIRST_LONG:
                frames.FIRST_HEADER.pack_into(view, 0, n)
                view[8:8 + length] = mv[off:off + length]
                self._post(kind, slot, length + 8, at=at)
            else:
                view[:length] = mv[off:off + length]
                self._post(kind, slot, length, n, at=at)

    def _room(self, kind: int, wire: int, need_slot: bool):
        """None while a ``wire``-byte fragment cannot be posted; else where it
        goes in the peer's ring ((offset, cells), which it spends), or ()."""
        if not self._sq.room() or not (self._sq.free or not need_slot):
            return None
        if self._tx is not None:
            at = self._tx.place(wire)
        else:
            at = () if self._credits.can_send(frames.returns_credits(kind)) else None
        self._stats["credit_stalls"] += at is None
        return at

    # -- receive -------------------------------------------------------------------

    def _take(self) -> bytes | None:
        """The next whole message from received fragments, or None."""
        if self._held is not None:
            msg, self._held = self._held, None
            return msg
        while (item := self._arr.head()) is not None:
            try:
                msg = self._reasm.feed(item[2], self._payload(item), item[3])
            except ProtocolError as exc:
                self._fail(exc)
                raise
            self._arr.pop()
            self._consumed(item[0])
            if msg is not None:
                self._arr.delivered()
                self._stats["messages_received"] += 1
                self._stats["bytes_received"] += len(msg)
                self._post_credit_update()
                return msg
        self._post_credit_update()
        return None

    def _check_recv(self) -> None:
        """Raise if no further message can arrive."""
        self._check_open()
        if self._error is not None:
            raise self._error
        end = self._end.receiving(len(self._arr), self._reasm.in_progress)
        if end == End.CLOSED_MID:
            self._fail(end_error(end))      # drops the connection
            raise self._error
        if end != End.OPEN:
            raise end_error(end)
        if self._interrupted:
            self._interrupted = False
            raise InterruptedError("the receive was interrupted (Engine.interrupt)")

    def recv(self, timeout: float | None = None) -> bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check_open()
            while True:
                msg = self._take()
                if msg is not None:
                    return msg
                self._check_recv()
                if not self._wait_locked(deadline, True):
                    raise TimeoutError("no message arrived in time")

    def recv_into(self, buffer, timeout: float | None = None) -> int:
        mv = byte_view(buffer)
        if mv.readonly:
            raise TypeError("recv_into needs a writable buffer")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check_open()
            while True:
                need = self._next_length()
                if need is not None and need > mv.nbytes:
                    raise ValueError(f"the next message has {need} bytes; the buffer holds "
                                     f"{mv.nbytes}")
                msg = self._take()
                if msg is not None:
                    mv[:len(msg)] = msg
                    return len(msg)
                self._check_recv()
                if not self._wait_locked(deadline, True):
                    raise TimeoutError("no message arrived in time")

    def recv_view(self, timeout: float | None = None) -> "MessageView":
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check_open()
            while True:
                item = self._arr.head()
                if (self._held is None and not self._reasm.in_progress and item is not None
                        and item[2] == frames.WHOLE):
                    self._arr.pop()
                    self._arr.delivered()
                    self._stats["messages_received"] += 1
                    self._stats["bytes_received"] += item[1]
                    return MessageView(self, item[0], self._payload(item).toreadonly())
                msg = self._take()
                if msg is not None:
                    return MessageView(self, -1, memoryview(msg))
                self._check_recv()
                if not self._wait_locked(deadline, True):
                    raise TimeoutError("no message arrived in time")

    def _give_back(self, slot: int) -> None:
        with self._lock:
            if not self._closed:
                self._consumed(slot)
                self._post_credit_update()

    def _next_length(self) -> int | None:
        if self._held is not None:
            return len(self._held)
        item = self._arr.head()
        if self._reasm.in_progress or item is None:
            return None
        try:
            return self._reasm.expected_length(item[2], self._payload(item), item[3])
        except ProtocolError as exc:
            self._fail(exc)
            raise

    # -- the rest of the contract -------------------------------------------------

    def poll(self) -> int:
        with self._lock:
            self._check_open()
            self._drain_events()
            self._check_live()
            while self._progress():
                pass
            self._cq.cq.req_notify()
            while self._progress():
                pass
            self._end.expired(time.monotonic())
            self._prune()
            if self._arr.whole or self._held is not None:
                return self._arr.whole + (self._held is not None)
            # Nothing more can arrive: 1, so that the caller's recv reports it.
            return int(self._error is not None
                       or self._end.receiving(len(self._arr), False) != End.OPEN)

    def pending(self) -> int:
        """Whole messages ready now, without polling."""
        return self._arr.whole + (self._held is not None)

    def interrupt(self) -> None:
        """Make the receive waiting in another thread raise InterruptedError,
        or, if none waits, the next one that would (see the Cython engine)."""
        with self._poke_lock:
            if self._closed:
                return
            self._interrupted = True
            os.eventfd_write(self._wake, 1)    # a receiver asleep in epoll wakes

    def signal(self, on: bool) -> None:
        """Hold fileno() readable (``on``) or stop holding it: data waits above
        the engine, where a selector cannot see it."""
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
        """A counter that moves whenever completions are handled: a layer that
        gave up on a non-blocking call compares it to learn whether to retry."""
        return self._changes

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._check_open()
            if self._arr.whole or self._held is not None:
                return True
            return self._wait_locked(deadline)

    def fileno(self) -> int:
        self._check_open()
        return self._sel.fileno()

    def shutdown(self, timeout: float | None = 2.0) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._closed or self._close_sent or self._error or self._end.gone:
                return
            try:
                self._take_send_turn(deadline)
            except (TimeoutError, OSError):
                return
            try:
                if self._close_sent:
                    return
                if self._tail is not None:
                    self._send_from(*self._tail, continuing=True, deadline=deadline)
                while not (self._sq.room() and (self._credits is None
                                                or self._credits.can_send(True))):
                    if self._error or self._end.gone or self._end.eof:
                        return
                    if not self._wait_locked(deadline):
                        return
                self._post(frames.CLOSE, -1, 0)
                self._close_sent = True
                while self._sq.done < self._sq.next:
                    if self._error or self._end.gone or self._end.eof:
                        return
                    if not self._wait_locked(deadline):
                        return
            except (TimeoutError, OSError):
                return
            finally:
                self._give_send_turn()

    @property
    def credit_state(self) -> tuple[int, int]:
        """(credits, unreturned), or on the write channel (free cells in the
        peer's ring, cells we owe a report of): for tests and debugging."""
        if self._credits is None:
            return self._tx.free, self._rx.unreported
        return self._credits.credits, self._credits.unreturned

    def stats(self) -> dict:
        with self._lock:
            out = dict(self._stats)
        out["poller"] = self.name
        return out

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            with self._poke_lock:
                self._closed = True
            os.eventfd_write(self._wake, 1)
            self._cond.notify_all()
            while self._inside:                # each waiter leaves through _leave
                self._cond.wait()
            for wr in self._recv_wrs:
                wr.close()
            self._recv_wrs = []
            while self._zc_pending:
                self._regcache.release(self._zc_pending.popleft()[1])
            self._sel.close()
            self._ep.close()
            os.close(self._sig)
            os.close(self._wake)


class MessageView:
    """A received message lent without a copy (see the Cython engine's twin):
    ``data`` is a read-only memoryview; ``release()`` gives the buffer back."""

    __slots__ = ("_eng", "_slot", "data")

    def __init__(self, eng: Engine, slot: int, data: memoryview) -> None:
        self._eng, self._slot, self.data = eng, slot, data

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data)

    def release(self) -> None:
        if self.data is None:
            return
        self.data.release()          # BufferError while slices of it are alive
        self.data = None
        if self._slot >= 0:
            self._eng._give_back(self._slot)

    def __enter__(self) -> memoryview:
        return self.data

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        if self.data is not None:
            try:
                self.release()
            except Exception:
                pass


def _continuation(start: int, n: int, frag: int):
    off = start
    while n - off > frag:
        yield frames.MIDDLE, off, frag
        off += frag
    yield frames.LAST, off, n - off

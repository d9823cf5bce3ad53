"""Endpoint: one connected RC queue pair carrying whole messages (send/recv).

An Endpoint owns, and closes in this order: its engine (the poller), its QP,
its CQ, its pool buffers, its share of the device context, and the bootstrap
TCP socket, which stays open as the liveness channel.
"""
from __future__ import annotations

import os
import socket
import warnings
from typing import Any

from ..errors import closed_error
from ..protocol import ring
from ..protocol.handshake import QPInfo, RingInfo
from ..verbs.context import DeviceContext
from ..verbs.cq import CompletionQueue
from ..verbs.device import LocalAddress
from ..verbs.qp import QueuePair
from ..verbs.region import REMOTE_WRITE, WINDOW_BASE, QPWindow, Region, has_qp_windows
from .options import Options
from .remote import Grant, OneSided


_FAST = ("send", "recv", "recv_into", "recv_view", "poll", "wait", "fileno")


class Parts:
    """The verbs resources of one connection, released together.  With
    ``write`` the peer writes into our ring instead of posted buffers."""

    def __init__(self, local: LocalAddress, opts: Options, write: bool = False,
                 one_sided: bool = False) -> None:
        self.local = local
        self.dctx = DeviceContext.acquire(local.device)
        self.cq = self.qp = self.ring = self.window = self.one_sided = None
        self.recv_bufs: list = []
        self.send_bufs: list = []
        try:
            sq = max(16, 2 * opts.send_depth)
            nrecv = opts.ring_cells + ring.RESERVED_RECEIVES if write else opts.recv_depth
            self.cq = CompletionQueue(self.dctx, nrecv + sq + 8)
            self.qp = QueuePair(self.dctx, self.cq, local, max_send_wr=sq, max_recv_wr=nrecv,
                                max_inline=opts.max_inline,
                                access=REMOTE_WRITE if write else QueuePair.LOCAL)
            pool = self.dctx.pool
            if write and has_qp_windows(self.dctx.attr):
                self.ring = Region(self.dctx.pd, opts.ring_size, WINDOW_BASE)
                self.window = QPWindow(self.dctx.pd, self.ring)
            elif write:
                self.ring = Region(self.dctx.pd, opts.ring_size)
            else:
                self.recv_bufs = pool.acquire_many(opts.buffer_size, opts.recv_depth)
            self.send_bufs = pool.acquire_many(opts.buffer_size, opts.send_depth)
            if one_sided:
                self.one_sided = OneSided(self.dctx, local)
        except BaseException:
            self.release()
            raise

    def fragment(self, peer: QPInfo) -> int:
        """The longest message that goes as one send or write (no fragments)."""
        return min(self.send_bufs[0].size, peer.bufsize)

    def ring_info(self, opts: Options) -> RingInfo | None:
        if self.ring is None:
            return None
        rkey = self.ring.rkey if self.window is None else self.window.rkey
        return RingInfo(self.ring.addr, rkey, self.ring.size, opts.ring_cells)

    def open_ring(self) -> None:
        """Let the peer write into the ring: bind its window to our QP (now in
        RTS), before the handshake's last message tells the peer to go."""
        if self.window is not None:
            self.window.bind(self.qp.qp, self.cq.cq)

    def info(self, opts: Options) -> QPInfo:
        rinfo = self.ring_info(opts)
        if rinfo is None:
            depth, bufsize, extra = len(self.recv_bufs), self.recv_bufs[0].size, {}
        else:
            depth = opts.ring_cells + ring.RESERVED_RECEIVES
            bufsize = rinfo.size // 4           # the longest single write
            extra = {"ring": rinfo.to_wire()}
        if self.one_sided is not None:
            extra["rma"] = self.one_sided.info()
        return QPInfo(qpn=self.qp.qp_num, psn=self.qp.psn, gid=self.local.gid, lid=self.local.lid,
                      mtu=self.local.mtu, depth=depth, bufsize=bufsize,
                      max_message=opts.max_message, extra=extra)

    def release(self) -> None:
        """Close QP and CQ, give back buffers and the device context.  Idempotent."""
        if self.dctx is None:
            return
        if os.getpid() == self.dctx._pid:
            if self.window is not None:     # first: rxe's QP teardown waits for it
                self.window.close()
            if self.one_sided is not None:
                self.one_sided.close()
            if self.qp is not None:
                self.qp.close()
            if self.cq is not None:
                self.cq.close()
            for b in self.recv_bufs + self.send_bufs:
                self.dctx.pool.release(b)
            if self.ring is not None:
                self.ring.close()
        self.ring = self.window = self.one_sided = None
        self.recv_bufs, self.send_bufs = [], []
        dctx, self.dctx = self.dctx, None
        dctx.release()


class Endpoint:
    """A connection that carries whole messages, in order, with nothing lost.

    Made by ``rdmamsg.connect`` or ``Listener.accept``.  Thread-safe: calls
    from several threads are serialised inside the engine.
    """

    def __init__(self, parts: Parts, engine, sock: socket.socket, peer: QPInfo,
                 opts: Options) -> None:
        self._parts, self._engine, self._sock = parts, engine, sock
        self._peer, self._opts = peer, opts
        self._pid = os.getpid()
        self._closed = False
        self.laddr = sock.getsockname()
        self.raddr = sock.getpeername()
        cls = type(self)
        for name in _FAST:
            if getattr(cls, name) is getattr(Endpoint, name):
                setattr(self, name, getattr(engine, name))

    # -- data ----------------------------------------------------------------
    # The engine's own methods are bound onto each instance in __init__ (unless
    # a subclass overrides them), so a send or receive costs no Python frame of
    # ours; the methods below document them and are what the binding falls back
    # to.  The engine drops the connection itself when the peer breaks the
    # protocol, and raises ProtocolError.

    def send(self, data, timeout: float | None = None) -> None:
        """Send ``data`` (bytes, bytearray, memoryview, numpy array...) as one message.

        Blocks while the peer has no receive buffer free (flow control), up
        to ``timeout`` seconds.  Raises ConnectionResetError if the peer is
        gone, BrokenPipeError if it closed, ValueError if ``data`` is longer
        than the peer accepts.
        """
        self._engine.send(data, timeout)

    def recv(self, timeout: float | None = None) -> bytes:
        """The next whole message.  PeerClosedError (an EOFError) once the
        peer has closed and every message it sent was received."""
        return self._engine.recv(timeout)

    def recv_into(self, buffer, timeout: float | None = None) -> int:
        """Receive the next message into ``buffer``; its length.  A message
        longer than ``buffer`` raises ValueError and stays queued."""
        return self._engine.recv_into(buffer, timeout)

    def recv_view(self, timeout: float | None = None):
        """The next message without a copy: a MessageView whose ``data`` is a
        read-only memoryview onto the receive buffer.  Release it (or use it
        as ``with ep.recv_view() as data:``) to give the buffer back; until
        then the peer has one credit fewer."""
        return self._engine.recv_view(timeout)

    def interrupt(self) -> None:
        """Make the recv (recv_into, recv_view) waiting in another thread raise
        InterruptedError, or, if none waits, the next one that would.  For a
        layer where one thread hands receiving over to another."""
        self._engine.interrupt()

    def poll(self) -> int:
        """Make progress without blocking; the number of whole messages ready
        (1 once nothing more can arrive, so that recv() reports why)."""
        return self._engine.poll()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a message may be ready; False on time-out."""
        return self._engine.wait(timeout)

    def fileno(self) -> int:
        """An fd that becomes readable when there may be progress (selectors);
        then call poll() or recv(timeout=0)."""
        return self._engine.fileno()

    # -- remote buffers (one-sided) --------------------------------------------

    def expose(self, buf, access: str = "rw") -> Grant:
        """Let the peer write (``"write"``), read (``"read"``) or both (``"rw"``)
        ``buf`` directly.  Send ``grant.descriptor`` to the peer in a message;
        ``grant.revoke()`` ends its access.  Only this endpoint's peer can use
        it, and ``buf`` stays exported (cannot be resized) until revoked."""
        return self._one_sided().expose(buf, access)

    def write(self, descriptor, data, offset: int = 0, timeout: float | None = None,
              wait: bool = True) -> None:
        """Write ``data`` into the peer's exposed buffer at ``offset`` (RDMA
        WRITE, from ``data`` itself); returns once the peer's device has it.
        ValueError if it falls outside the grant; RemoteAccessError if the
        peer's device refuses (e.g. the grant was revoked).

        ``wait=False``: data of up to 8 KiB is copied (or sent inline) and the
        write is only posted, so writes pipeline; ``data`` may be reused at
        once.  Such a write's failure is raised by the next write, read or
        ``flush()``, and a message sent after it may arrive first: call
        ``flush()`` before telling the peer.  Longer data waits as usual."""
        self._one_sided().write(descriptor, data, offset, timeout, wait)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every one-sided write posted so far has reached the peer's
        device; raises the failure of any of them (see ``write``)."""
        self._one_sided().flush(timeout)

    def read(self, descriptor, into, offset: int = 0, timeout: float | None = None) -> int:
        """Fill ``into`` from the peer's exposed buffer at ``offset`` (RDMA
        READ, straight into ``into``); the number of bytes read."""
        return self._one_sided().read(descriptor, into, offset, timeout)

    def _one_sided(self) -> OneSided:
        if self._closed:
            raise closed_error("endpoint")
        if self._parts.one_sided is None:
            raise RuntimeError("this endpoint has no remote buffers: it was connected with "
                               "remote_buffers=False")
        return self._parts.one_sided

    # -- information -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def local(self) -> LocalAddress:
        return self._parts.local

    @property
    def fragment(self) -> int:
        """The longest message that goes as one send or write (no fragments)."""
        return self._parts.fragment(self._peer)

    def pending(self) -> int:
        """Whole messages ready now (no polling)."""
        return self._engine.pending()

    def signal(self, on: bool) -> None:
        """Hold fileno() readable, or stop: for layers that keep data above the
        engine (the socket facade), so that selectors still see it."""
        self._engine.signal(on)

    def progress_count(self) -> int:
        """A counter that moves whenever completions are handled.  A layer that
        gave up on a non-blocking send compares it later: if it moved, credits
        may have come back (the fd's event for them may already be taken)."""
        return self._engine.progress_count()

    @property
    def max_message(self) -> int:
        """The largest message the peer accepts."""
        return self._peer.max_message

    @property
    def zerocopy_min(self) -> int:
        """Messages this long are sent from the caller's memory (registered
        and kept exported in the registration cache)."""
        return self._opts.zerocopy_min

    @property
    def poller(self) -> str:
        return self._engine.name

    @property
    def engine(self):
        """The poller driving this connection (transport.backend's contract),
        for a layer above that calls it directly on its hot path."""
        return self._engine

    def stats(self) -> dict[str, Any]:
        return self._engine.stats()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.laddr} -> {self.raddr}"
        return f"<rdmamsg.Endpoint {state} poller={self._engine.name}>"

    # -- ending ------------------------------------------------------------------

    def close(self, linger: float | None = None) -> None:
        """Close in order: an orderly CLOSE after everything already sent
        (waiting up to ``linger`` seconds for it to complete), then free
        everything.  Idempotent.

        If the peer stops taking messages for longer than ``linger``, what
        is still unsent is dropped and no CLOSE goes out: the peer then gets
        ConnectionResetError, never PeerClosedError, so it knows the stream
        was cut short (as with a TCP socket whose linger expires).  A linger
        of 0 aborts at once, with no CLOSE (as SO_LINGER 0 does for TCP)."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:
            return  # inherited across fork: the parent still owns all of it
        linger = self._opts.linger if linger is None else linger
        try:
            if linger > 0:
                if self._parts.one_sided is not None:
                    self._parts.one_sided.drain(linger)
                self._engine.shutdown(linger)
        finally:
            self._engine.close()
            self._parts.release()
            self._sock.close()

    def __enter__(self) -> "Endpoint":
        if self._closed:
            raise closed_error("endpoint")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        if getattr(self, "_pid", None) != os.getpid():
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1)
        try:
            self.close(linger=0.01)           # an orderly end, if it can go at once
        except Exception:
            pass

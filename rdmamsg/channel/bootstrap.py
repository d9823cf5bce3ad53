"""listen() and connect(): the TCP bootstrap that connects two RC QPs.

The messages and their checks are in protocol/handshake.py; this module does
the I/O and builds the connection.  The local IP of the TCP connection picks
the RDMA device and GID (verbs/device.resolve_local).  A failed handshake on
the server side is refused with a reason, logged, and the listener carries on.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import warnings
import weakref

from ..errors import (AuthenticationError, HandshakeError, NoDeviceError, ProtocolError,
                      closed_error, inherited_error)
from ..protocol import handshake as hs
from ..transport.backend import EngineConfig, make_engine
from ..verbs.device import resolve_local
from ..verbs.qp import RemoteQP, Timing
from ..verbs.inherit import owner
from .endpoint import Endpoint, Parts
from .greeter import Greeted, Greeter
from .options import Options
from . import tcp

log = logging.getLogger("rdmamsg")

Address = tuple[str, int]


class _Wire:
    """Framed, deadline-bounded handshake I/O on a TCP socket."""

    NOT_RDMAMSG = "the handshake timed out (is the peer an rdmamsg endpoint?)"

    def __init__(self, sock: socket.socket, deadline: float | None,
                 decoder: hs.FrameDecoder | None = None, expired: str = NOT_RDMAMSG) -> None:
        self.sock, self.deadline, self.expired = sock, deadline, expired
        self.decoder = decoder or hs.FrameDecoder()
        self.queue: list[dict] = []

    def _arm(self) -> None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(self.expired)
            self.sock.settimeout(left)
        else:
            self.sock.settimeout(None)

    def send(self, msg: dict) -> None:
        self._arm()
        self.sock.sendall(hs.encode(msg))

    def recv(self) -> dict:
        while not self.queue:
            self._arm()
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                raise TimeoutError(self.expired) from None
            if not data:
                raise HandshakeError("the peer closed the connection during the handshake")
            self.queue.extend(self.decoder.feed(data))
        return self.queue.pop(0)


#: A vanished host is noticed after this many seconds without an answer
#: from it: a probe a second after 5 s idle, so that ten probes in a row
#: must be lost.  With three (the first setting), 5% loss each way dropped
#: a healthy connection every few minutes.  A dead process closes the
#: connection at once; a busy QP notices sooner (RC retries run out).
HOST_TIMEOUT = 15
_KEEPIDLE = 5


def _keepalive(sock: socket.socket) -> None:
    """The liveness channel: notice a dead host within seconds, not hours."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, _KEEPIDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, HOST_TIMEOUT - _KEEPIDLE)
    # Also bounds unacknowledged data, and overrides the count above.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, HOST_TIMEOUT * 1000)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _finish(parts: Parts, sock: socket.socket, peer: hs.QPInfo, opts: Options, timing: Timing):
    """Make the engine (posting every receive), take the QP to RTS and open
    the ring.  The caller's next handshake message lets the peer send."""
    peer_ring = hs.ring_of(peer)
    if (peer_ring is None) != (parts.ring is None):
        raise HandshakeError("the two sides chose different channels (one offered a ring for "
                             "the write channel, the other did not)")
    fragment = parts.fragment(peer)
    config = EngineConfig(peer_depth=peer.depth, fragment=fragment, send_max=peer.max_message,
                          recv_max=opts.max_message, max_inline=opts.max_inline,
                          zc_fragment=peer.bufsize, zerocopy_min=opts.zerocopy_min,
                          spin_us=opts.spin_us, ring=parts.ring, ring_cells=opts.ring_cells,
                          peer_ring=peer_ring)
    engine = make_engine(cq=parts.cq, qp=parts.qp, recv_bufs=parts.recv_bufs,
                         send_bufs=parts.send_bufs, liveness=sock, config=config,
                         regcache=parts.dctx.regcache)
    peer_one_sided = hs.one_sided_of(peer)
    if (peer_one_sided is None) != (parts.one_sided is None):
        engine.close()
        raise HandshakeError("the two sides disagree on remote buffers (remote_buffers=)")
    try:
        engine.post_receives()
        remote = RemoteQP(peer.qpn, peer.psn, peer.gid, peer.lid, peer.mtu)
        parts.qp.connect(remote, timing)
        parts.open_ring()
        if peer_one_sided is not None:
            parts.one_sided.connect(peer_one_sided, remote, timing)
    except BaseException:
        engine.close()
        raise
    return engine


def _established(parts: Parts, engine, sock: socket.socket, peer: hs.QPInfo,
                 opts: Options) -> Endpoint:
    _keepalive(sock)
    sock.setblocking(False)
    return Endpoint(parts, engine, sock, peer, opts)


def _discard(parts: Parts | None, engine, sock: socket.socket) -> None:
    """Undo a connection that failed part-way."""
    if engine is not None:
        engine.close()
    if parts is not None:
        parts.release()
    sock.close()


def connect(address: Address, timeout: float | None = None, token: str | bytes | None = None, *,
            options: Options | None = None, timing: Timing = Timing(), device: str | None = None,
            gid_index: int | None = None, source_address: Address | None = None,
            **kwargs) -> Endpoint:
    """Connect to an rdmamsg listener; the bootstrap uses TCP ``address``.

    ``token``: a shared secret both sides must hold (an HMAC challenge).
    ``channel="write"`` carries messages as RDMA writes into a ring each side
    advertises (see Options.channel); the listener follows the client's choice.
    ``device``/``gid_index`` override the choice made from the local IP,
    ``source_address`` binds the bootstrap's TCP socket (and so picks the IP);
    other keyword arguments are Options fields (recv_depth, buffer_size...).
    """
    opts = Options.from_kwargs(options, kwargs)
    tok = hs.token_bytes(token)
    deadline = None if timeout is None else time.monotonic() + timeout
    sock = tcp.dial(address, timeout, source_address)
    _keepalive(sock)                  # a host that vanishes while we wait is noticed
    parts = engine = None
    try:
        local = resolve_local(sock.getsockname()[0], device=device, gid_index=gid_index)
        # Any rdmamsg listener says hello at once (its greeter), however busy:
        # so even without a timeout, a server that never speaks is found out.
        hello_end = time.monotonic() + opts.handshake_timeout
        wire = _Wire(sock, hello_end if deadline is None else min(deadline, hello_end))
        server_nonce = hs.check_hello(wire.recv(), tok)
        # Then as long as the server takes to accept(), up to the timeout.
        wire.deadline = deadline
        if timeout is not None:
            wire.expired = f"the rdmamsg server did not accept the connection within {timeout:g} s"
        parts = Parts(local, opts, write=opts.channel == "write", one_sided=opts.remote_buffers)
        client_nonce = hs.new_nonce()
        wire.send(hs.conn(parts.info(opts), server_nonce, client_nonce, tok))
        peer = hs.check_accept(wire.recv(), server_nonce, client_nonce, tok)
        engine = _finish(parts, sock, peer, opts, timing)
        wire.send(hs.ready())
        return _established(parts, engine, sock, peer, opts)
    except BaseException:
        _discard(parts, engine, sock)
        raise


class Listener:
    """Accepts rdmamsg connections on a TCP address (``rdmamsg.listen``).

    A greeter thread (greeter.py) greets every client and checks its first
    message at once; ``accept`` takes the next checked client, makes its QP
    and finishes the handshake.  Nothing is registered or created for a
    client before then."""

    def __init__(self, address: Address, token: str | bytes | None = None, *,
                 backlog: int = 128, options: Options | None = None, timing: Timing = Timing(),
                 device: str | None = None, gid_index: int | None = None, **kwargs) -> None:
        self._opts = Options.from_kwargs(options, kwargs)
        self._token = hs.token_bytes(token)
        self._timing, self._device, self._gid_index = timing, device, gid_index
        self._sock = tcp.serve(address, backlog)
        self._address = self._sock.getsockname()[:2]
        self._closed = False
        self._inherited_from = 0
        self.refused = 0                                  #: handshakes refused so far
        self.last_refusal: BaseException | None = None    #: why the last one was
        # The greeter holds us weakly: a Listener dropped unclosed is collected and warns.
        me = weakref.ref(self)

        def refused(exc: BaseException, addr: tuple) -> None:
            listener = me()
            if listener is not None:
                listener._refused(exc, addr, False)

        self._greeter = Greeter(self._sock, self._token, self._opts.handshake_timeout,
                                max(backlog, 1), refused)
        owner(self)

    @property
    def address(self) -> Address:
        """The bound (host, port), with the real port if 0 was asked for."""
        return self._address

    def fileno(self) -> int:
        """Readable while a client waits for accept() (for selectors)."""
        return self._greeter.fileno()

    def accept(self, timeout: float | None = None) -> Endpoint:
        """The next connection whose handshake succeeds.  Refused handshakes
        (wrong token or version, garbage, time-outs) are logged and skipped."""
        if self._inherited_from:
            raise inherited_error("listener", self._inherited_from)
        if self._closed:
            raise closed_error("listener")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            client = self._greeter.take(left)
            try:
                return self._handshake(client)
            except (HandshakeError, ProtocolError, NoDeviceError, TimeoutError, OSError) as exc:
                self._refused(exc, client.addr, False)
            except Exception as exc:   # a bug or a verbs surprise: one client, not the server
                self._refused(exc, client.addr, True)

    def _refused(self, exc: BaseException, peer_addr, unexpected: bool) -> None:
        self.refused += 1
        self.last_refusal = exc
        log.warning("rdmamsg: refused a connection from %s:%s: %s", *peer_addr[:2], exc,
                    exc_info=exc if unexpected else None)

    def _handshake(self, client: Greeted) -> Endpoint:
        """Make the checked client's QP and finish: accept, then its ready."""
        opts, conn, info = self._opts, client.sock, client.info
        conn.setblocking(True)
        wire = _Wire(conn, time.monotonic() + opts.handshake_timeout, client.decoder,
                     "the client did not finish the handshake within handshake_timeout "
                     f"({opts.handshake_timeout:g} s)")
        parts = engine = None
        try:
            try:
                local = resolve_local(conn.getsockname()[0], device=self._device,
                                      gid_index=self._gid_index)
                # Only now, with the client checked, is anything made for it.
                parts = Parts(local, opts, write=hs.ring_of(info) is not None,
                              one_sided=hs.one_sided_of(info) is not None)
                engine = _finish(parts, conn, info, opts, self._timing)
            except Exception as exc:   # the client learns why (out of pool memory, say)
                _refuse(wire, exc)
                raise
            wire.send(hs.accept(parts.info(opts), client.server_nonce, client.client_nonce,
                                self._token))
            hs.check_ready(wire.recv())
            return _established(parts, engine, conn, info, opts)
        except BaseException:
            _discard(parts, engine, conn)
            raise

    def close(self) -> None:
        """Stop listening; clients not yet accepted are dropped.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._inherited_from:
            self._greeter.close_inherited()
        else:
            self._greeter.close()
        self._sock.close()

    def _disown(self) -> None:
        """In a child after fork(): the greeter thread is the parent's."""
        self._inherited_from = os.getppid()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            if not self._inherited_from:
                warnings.warn(f"unclosed rdmamsg.Listener on {self.address}", ResourceWarning,
                              stacklevel=1)
            self.close()


def _refuse(wire: _Wire, exc: BaseException) -> None:
    try:
        wire.send(hs.refuse(str(exc), auth=isinstance(exc, AuthenticationError)))
    except OSError:
        pass


def listen(address: Address, token: str | bytes | None = None, **kwargs) -> Listener:
    """A Listener on TCP ``address``; ``accept()`` gives Endpoints."""
    return Listener(address, token, **kwargs)

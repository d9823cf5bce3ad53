"""RdmaSocket: a byte stream with the standard library's socket API, over RDMA.

A stream is carried on an Endpoint as messages: every message holds stream
bytes, and an empty message is the end of the stream from that side
(``shutdown(SHUT_WR)``).  Both ends must therefore be RdmaSockets, unless
``protocol="rsocket"``: then the stream is librdmacm's rsockets
(channel/rsocket.py), whose "messages" are its writes, and the peer may be
a C program.  Received
messages are lent by the engine (``recv_view``) and copied out as ``recv``
asks, so a stream never holds more than one receive buffer of its own.

Readiness for select/selectors: ``fileno()`` is the engine's fd, readable
when there may be progress.  The completion queue only signals once per
arming, and data can wait above the engine (the rest of a message), so once
``fileno()`` has been asked for, every receive leaves the queue armed (poll)
and holds the fd readable while data is waiting (``signal``).  The fd never
reports writable (it is an epoll fd): a non-blocking send that cannot go now
raises BlockingIOError, and returning credits make the fd readable.  Those
credits may come in during some other call (a recv's poll takes every
completion), so a blocked send leaves a mark, the engine's progress count,
and the fd is held readable once the count has moved past it.
"""
from __future__ import annotations

import errno
import socket as _socket
import struct
import warnings
import threading
import weakref
from typing import Any, Iterable

from ..channel.bootstrap import Listener, connect
from ..channel.endpoint import Endpoint
from ..channel.rsocket_setup import RsListener, rs_connect
from ..errors import PeerClosedError, closed_error
from ..transport.backend import make_stream_fast

Address = tuple[str, int]
PROTOCOLS = ("rdmamsg", "rsocket")
_RECV_FLAGS = _socket.MSG_PEEK | _socket.MSG_WAITALL | _socket.MSG_DONTWAIT
# (No signal is ever raised, and nothing is held back for more: both hold already.)
_SEND_FLAGS = _socket.MSG_DONTWAIT | _socket.MSG_NOSIGNAL | _socket.MSG_MORE
CHUNK = 4 << 20          #: the largest message a blocking send makes (zero-copy above 64 KiB)
_ACCEPTED_OPTS = {
    (_socket.SOL_SOCKET, _socket.SO_TYPE): _socket.SOCK_STREAM,
    (_socket.SOL_SOCKET, _socket.SO_ERROR): 0,
    (_socket.SOL_SOCKET, _socket.SO_KEEPALIVE): 1,       # the bootstrap TCP link is watched
    (_socket.IPPROTO_TCP, _socket.TCP_NODELAY): 1,       # every send goes out at once
}


class RdmaSocket:
    """A SOCK_STREAM socket over RDMA, as ``socket.socket(AF_INET, SOCK_STREAM)``.

    ``connect`` and ``accept`` make the RDMA connection (a TCP bootstrap on the
    same address, then an RC queue pair); ``options`` are rdmamsg.Options
    fields for it (``channel="write"``, ``buffer_size``, ...).

    ``protocol="rsocket"`` speaks librdmacm's rsockets instead (rdma_cm, no
    TCP port), so the peer may be a C program using rsocket() or running
    under librspreload.so.  rsockets has no token and none of the options.
    """

    family = _socket.AF_INET
    type = _socket.SOCK_STREAM
    proto = 0

    def __init__(self, family: int = _socket.AF_INET, type: int = _socket.SOCK_STREAM,
                 proto: int = 0, *, token: str | bytes | None = None, protocol: str = "rdmamsg",
                 **options: Any) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        if protocol == "rsocket" and (token is not None or options):
            given = sorted(options) + (["token"] if token is not None else [])
            raise ValueError(f"the rsocket protocol carries no token and no rdmamsg options "
                             f"(given: {', '.join(given)})")
        if family != _socket.AF_INET or (type & ~_socket.SOCK_NONBLOCK
                                         & ~_socket.SOCK_CLOEXEC) != _socket.SOCK_STREAM:
            raise OSError(errno.EAFNOSUPPORT, "RdmaSocket is AF_INET, SOCK_STREAM only")
        self._token, self._options, self._protocol = token, options, protocol
        self._timeout: float | None = _socket.getdefaulttimeout()
        if type & _socket.SOCK_NONBLOCK:
            self._timeout = 0.0
        self._ep: Endpoint | None = None
        self._listener: Listener | None = None
        self._bound: Address | None = None
        self._closed = False
        self._io_refs = 0
        self._view = None                    # the message being read, and how far
        self._off = 0
        self._eof = False                    # the peer's end of stream was read
        self._shut_rd = self._shut_wr = False
        self._selectable = False
        self._send_mark: int | None = None   # progress_count() when a send could not go
        self._rlock = threading.Lock()
        self._opts: dict[tuple[int, int], int] = {}
        # With the Cython poller, send/sendall/recv_into are bound to its C
        # fast path (ext/transport/stream.pxi), which serves the plain state (see
        # _refresh) and hands everything else to the methods below.
        self._fast = None

    @classmethod
    def from_endpoint(cls, ep: Endpoint, timeout: float | None = None) -> "RdmaSocket":
        """A stream on a connected Endpoint, whose next messages carry it (the
        socket owns the endpoint from now on)."""
        s = cls()
        s._timeout = timeout
        s._attach(ep)
        return s

    # -- set-up ------------------------------------------------------------------

    def bind(self, address: Address) -> None:
        self._check()
        if self._ep is not None or self._listener is not None or self._bound is not None:
            raise OSError(errno.EINVAL, "the socket is already bound")
        self._bound = (address[0], address[1])

    def listen(self, backlog: int = 128) -> None:
        self._check()
        if self._ep is not None:
            raise OSError(errno.EINVAL, "a connected socket cannot listen")
        if self._listener is None:
            where = self._bound or ("0.0.0.0", 0)
            if self._protocol == "rsocket":
                self._listener = RsListener(where, backlog=max(backlog, 1))
            else:
                self._listener = Listener(where, self._token, backlog=max(backlog, 1),
                                          **self._options)

    def accept(self) -> tuple["RdmaSocket", Address]:
        self._check()
        if self._listener is None:
            raise OSError(errno.EINVAL, "accept() on a socket that is not listening")
        try:
            ep = self._listener.accept(timeout=self._timeout)
        except TimeoutError:
            if self._timeout == 0:
                raise BlockingIOError(errno.EAGAIN, "no connection is waiting") from None
            raise
        child = self.from_endpoint(ep, _socket.getdefaulttimeout())
        child._protocol = self._protocol
        return child, ep.raddr[:2]

    def connect(self, address: Address) -> None:
        self._check()
        if self._ep is not None:
            raise OSError(errno.EISCONN, "the socket is already connected")
        if self._listener is not None:
            raise OSError(errno.EINVAL, "a listening socket cannot connect")
        timeout = None if not self._timeout else self._timeout
        if self._protocol == "rsocket":
            self._attach(rs_connect((address[0], address[1]), timeout, self._bound))
            return
        self._attach(connect((address[0], address[1]), timeout=timeout, token=self._token,
                             source_address=self._bound, **self._options))

    def connect_ex(self, address: Address) -> int:
        try:
            self.connect(address)
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    # -- sending -------------------------------------------------------------------

    def send(self, data, flags: int = 0) -> int:
        """Send some of ``data``; the number of bytes sent.  ``flags``:
        MSG_DONTWAIT (this call does not wait), MSG_NOSIGNAL, MSG_MORE."""
        ep = self._connected()
        if self._shut_wr:
            raise BrokenPipeError(errno.EPIPE, "the socket was shut down for writing")
        if flags & ~_SEND_FLAGS:
            raise OSError(errno.EOPNOTSUPP, f"send flags {flags & ~_SEND_FLAGS:#x} are not "
                          "supported (MSG_DONTWAIT, MSG_NOSIGNAL and MSG_MORE are)")
        timeout = 0.0 if flags & _socket.MSG_DONTWAIT else self._timeout
        mv = memoryview(data).cast("B")
        if not mv.nbytes:
            return 0
        # With a timeout, one fragment at a time: a message either goes whole or not.
        piece = mv[:CHUNK if timeout is None else ep.fragment]
        if not self._selectable:
            return self._send_piece(ep, piece, timeout)
        before = ep.progress_count()
        try:
            n = self._send_piece(ep, piece, timeout)
        except BlockingIOError:
            self._send_mark = ep.progress_count()
            self._rearm_after_send()
            raise
        self._send_mark = None
        if ep.progress_count() != before:      # it took completions: some may be arrivals
            self._rearm_after_send()
        return n

    def _send_piece(self, ep: Endpoint, piece: memoryview, timeout: float | None) -> int:
        """Bytes sent: a message goes whole; an rsocket stream may take part."""
        try:
            n = ep.send(piece, timeout)
            return piece.nbytes if n is None else n
        except TimeoutError:
            if timeout == 0:
                raise BlockingIOError(errno.EAGAIN, "the peer is not taking data now") from None
            raise

    def sendall(self, data, flags: int = 0) -> None:
        mv = memoryview(data).cast("B")
        while mv.nbytes:
            mv = mv[self.send(mv, flags):]

    def sendmsg(self, buffers: Iterable, ancdata=(), flags: int = 0, address=None) -> int:
        """Send the buffers in order; the bytes sent (all of them unless a timeout
        or non-blocking send stops part-way)."""
        if ancdata:
            raise OSError(errno.EOPNOTSUPP, "RdmaSocket has no ancillary data")
        views = [memoryview(b).cast("B") for b in buffers]
        if sum(v.nbytes for v in views) <= self._connected().fragment:
            return self.send(b"".join(views), flags)     # one message, not many small ones
        sent = 0
        for v in views:
            while v.nbytes:
                try:
                    n = self.send(v, flags)
                except (BlockingIOError, TimeoutError):
                    if sent:
                        return sent
                    raise
                sent += n
                v = v[n:]
        return sent

    # -- receiving -------------------------------------------------------------------

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """Up to ``bufsize`` bytes, as soon as any are there; b"" at end of stream.
        ``flags``: MSG_PEEK, MSG_WAITALL, MSG_DONTWAIT, as recv_into."""
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if bufsize == 0:
            return b""                     # at once, as the socket module does
        if flags & _socket.MSG_WAITALL and not flags & _socket.MSG_PEEK:
            buf = bytearray(bufsize)
            return bytes(memoryview(buf)[:self.recv_into(buf, 0, flags)])
        timeout = self._call_timeout(flags)
        with self._rlock:
            data = self._next(timeout)
            if data is None:
                return b""
            n = min(bufsize, len(data) - self._off)
            out = bytes(data[self._off:self._off + n])
            self._took(n, flags & _socket.MSG_PEEK)
            return out

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        """Receive into ``buffer`` (its first ``nbytes`` if given); the count,
        0 at end of stream.  ``flags``: MSG_PEEK (bytes of the message being
        read, left unread), MSG_WAITALL (all, fewer only at end of stream or
        when a timeout or error comes after some arrived), MSG_DONTWAIT."""
        dst = memoryview(buffer).cast("B")
        if dst.readonly:
            raise TypeError("recv_into() needs a writable buffer")
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        want = min(nbytes or dst.nbytes, dst.nbytes)
        timeout = self._call_timeout(flags)
        if want == 0:
            self._connected()
            return 0                       # at once, as the kernel does
        peek = flags & _socket.MSG_PEEK
        with self._rlock:
            got = self._recv_some(dst[:want], timeout, peek)
            if flags & _socket.MSG_WAITALL and not peek:
                while 0 < got < want:
                    try:
                        n = self._recv_some(dst[got:want], timeout, False)
                    except OSError:
                        break                     # the error stays for the next call
                    if not n:
                        break
                    got += n
            return got

    def _call_timeout(self, flags: int) -> float | None:
        """This call's timeout: the socket's, or 0 with MSG_DONTWAIT."""
        if flags & ~_RECV_FLAGS:
            raise OSError(errno.EOPNOTSUPP, f"recv flags {flags & ~_RECV_FLAGS:#x} are not "
                          "supported (MSG_PEEK, MSG_WAITALL and MSG_DONTWAIT are)")
        return 0.0 if flags & _socket.MSG_DONTWAIT else self._timeout

    def _recv_some(self, dst: memoryview, timeout: float | None, peek: int) -> int:
        """What is there, up to len(dst), waiting as ``timeout`` says (the lock held)."""
        if self._view is None and dst.nbytes and not peek:
            n = self._whole_into(dst, timeout)
            if n is not None:
                return n
        data = self._next(timeout)
        if data is None:
            return 0
        n = min(dst.nbytes, len(data) - self._off)
        dst[:n] = data[self._off:self._off + n]
        self._took(n, peek)
        return n

    def _took(self, n: int, peek: int) -> None:
        if not peek:
            self._consumed(n)
        elif self._selectable:
            self._rearm()                         # the message read may have been the signal

    def _at_eof(self) -> None:
        self._eof = True
        self._refresh()

    def _whole_into(self, dst: memoryview, timeout: float | None) -> int | None:
        """The fast path: the next message straight into ``dst`` (one copy, no
        view); None if it is longer than ``dst`` (it stays queued)."""
        ep = self._connected()
        if self._eof or self._shut_rd:
            return 0
        try:
            n = ep.recv_into(dst, timeout)
        except ValueError:
            return None
        except PeerClosedError:
            n = 0
        except TimeoutError:
            raise self._recv_timed_out(timeout) from None
        if n == 0:                                # the peer's shutdown(SHUT_WR)
            self._at_eof()
        if self._selectable:
            self._rearm()
        return n

    def _recv_timed_out(self, timeout: float | None) -> OSError:
        """A receive's timeout, as the socket module reports it (the wait may
        have taken completions a blocked send was waiting for)."""
        if self._selectable:
            self._rearm()
        if timeout == 0:
            return BlockingIOError(errno.EAGAIN, "no data is waiting")
        return TimeoutError("timed out")

    def _next(self, timeout: float | None) -> memoryview | None:
        """The message being read (None at end of stream), waiting for one as the
        timeout says."""
        ep = self._connected()
        if self._view is not None:
            return self._view.data
        if self._eof or self._shut_rd:
            return None
        try:
            view = ep.recv_view(timeout)
        except PeerClosedError:
            self._at_eof()
            return None
        except TimeoutError:
            raise self._recv_timed_out(timeout) from None
        if len(view) == 0:                       # the peer's shutdown(SHUT_WR)
            view.release()
            self._at_eof()
            return None
        self._view, self._off = view, 0
        self._refresh()
        return view.data

    def _consumed(self, n: int) -> None:
        self._off += n
        if self._off == len(self._view):
            self._view.release()
            self._view = None
            self._refresh()
        if self._selectable:
            self._rearm()

    def _rearm(self, reading: bool = True) -> None:
        """Keep fileno() level-triggered: readable while data waits (if
        ``reading``) or a blocked send may go on, and the completion queue
        armed for the next arrival otherwise."""
        ep = self._ep
        try:
            if reading and (self._view is not None or ep.pending()):
                waiting = True
            else:
                waiting = bool(ep.poll()) and reading
                mark = self._send_mark
                waiting = waiting or (mark is not None and ep.progress_count() != mark)
        except (OSError, EOFError):
            waiting = True      # the next call raises it
        try:
            ep.signal(waiting)
        except OSError:
            pass

    def _rearm_after_send(self) -> None:
        # A reader holding the lock rearms when it is done.
        if self._rlock.acquire(blocking=False):
            try:
                self._rearm()
            finally:
                self._rlock.release()

    # -- ending ------------------------------------------------------------------------

    def shutdown(self, how: int) -> None:
        """SHUT_WR sends the end of stream (the peer's recv gives b"" while it
        can still send to us); SHUT_RD makes our recv give b"".  The end of
        stream waits for the peer to have room, as a send does: a
        non-blocking socket raises BlockingIOError instead (nothing is shut;
        retry once writable), one with a timeout TimeoutError."""
        ep = self._connected()
        if how not in (_socket.SHUT_RD, _socket.SHUT_WR, _socket.SHUT_RDWR):
            raise ValueError(f"invalid shutdown how {how}")
        if how in (_socket.SHUT_WR, _socket.SHUT_RDWR) and not self._shut_wr:
            self._shut_wr = True
            self._refresh()
            try:
                ep.send(b"", self._timeout)
            except TimeoutError:
                self._shut_wr = False                 # nothing went: the caller may retry
                self._refresh()
                if self._timeout != 0:
                    raise
                if self._selectable:
                    self._send_mark = ep.progress_count()
                    self._rearm_after_send()
                raise BlockingIOError(errno.EAGAIN, "the end of stream cannot go yet: the "
                                      "peer has no room (retry when writable)") from None
            except (BrokenPipeError, ConnectionResetError):
                pass                                  # nobody left to tell
        if how in (_socket.SHUT_RD, _socket.SHUT_RDWR):
            self._shut_rd = True
            self._refresh()

    def close(self) -> None:
        """Close once no makefile() object uses the socket any more."""
        self._closed = True
        self._refresh()
        if self._io_refs <= 0:
            self._real_close()

    def _real_close(self) -> None:
        if self._view is not None:
            try:
                self._view.release()
            except BufferError:
                pass
            self._view = None
        ep, self._ep = self._ep, None
        ln, self._listener = self._listener, None
        if ep is not None:
            ep.close(self._opts.get((_socket.SOL_SOCKET, _socket.SO_LINGER)))
        if ln is not None:
            ln.close()

    def detach(self) -> int:
        raise OSError(errno.EOPNOTSUPP, "an RdmaSocket has no kernel socket to detach")

    def _decref_socketios(self) -> None:     # makefile()'s objects closing
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed:
            self.close()

    def makefile(self, mode: str = "r", buffering: int | None = None, *, encoding=None,
                 errors=None, newline=None):
        """A file object on the stream (binary or text), as socket.makefile."""
        return _socket.socket.makefile(self, mode, buffering, encoding=encoding,
                                       errors=errors, newline=newline)

    def __enter__(self) -> "RdmaSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and (self._ep or self._listener):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1)
            self._real_close()

    # -- modes and information ---------------------------------------------------------

    def settimeout(self, value: float | None) -> None:
        if value is not None:
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = value
        self._refresh()

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0
        self._refresh()

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    def fileno(self) -> int:
        """An fd for select/selectors, readable when recv() (or accept()) will
        not block; -1 once closed or before connect/listen."""
        if self._closed:
            return -1
        if self._listener is not None:
            return self._listener.fileno()
        if self._ep is None:
            return -1
        if not self._selectable:
            self._selectable = True
            self._refresh()
            with self._rlock:
                self._rearm()
        return self._ep.fileno()

    def getsockname(self) -> Address:
        self._check()
        if self._listener is not None:
            return self._listener.address
        if self._ep is not None:
            return self._ep.laddr[:2]
        return self._bound or ("0.0.0.0", 0)

    def getpeername(self) -> Address:
        return self._connected().raddr[:2]

    def setsockopt(self, level: int, option: int, value, optlen: int | None = None) -> None:
        """Accepted for every option; SO_LINGER ((onoff, seconds) packed as
        struct linger, or an int of seconds) sets how long close() waits."""
        self._check()
        if (level, option) == (_socket.SOL_SOCKET, _socket.SO_LINGER) and isinstance(
                value, (bytes, bytearray)):
            onoff, secs = struct.unpack("ii", bytes(value[:8]))
            value = secs if onoff else None
        self._opts[level, option] = value

    def getsockopt(self, level: int, option: int, buflen: int = 0):
        self._check()
        if (level, option) in self._opts:
            return self._opts[level, option]
        return _ACCEPTED_OPTS.get((level, option), 0)

    @property
    def timeout(self) -> float | None:
        return self._timeout

    @property
    def endpoint(self) -> Endpoint:
        """The Endpoint carrying the stream (for stats())."""
        return self._connected()

    def __repr__(self) -> str:
        if self._closed:
            return "<rdmamsg.RdmaSocket [closed]>"
        if self._listener is not None:
            return f"<rdmamsg.RdmaSocket listening on {self._listener.address}>"
        if self._ep is not None:
            return f"<rdmamsg.RdmaSocket {self._ep.laddr[:2]} -> {self._ep.raddr[:2]}>"
        return "<rdmamsg.RdmaSocket unconnected>"

    # -- checks ------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise closed_error("socket")

    def _attach(self, ep: Endpoint) -> None:
        self._ep = ep
        # The fast path calls back through a weak method: it must not keep us.
        self._fast = make_stream_fast(ep.engine, self, CHUNK, weakref.WeakMethod(self._at_eof))
        if self._fast is not None:
            self._rlock = self._fast.lock      # the fast path takes it without a Python call
            self.send, self.sendall = self._fast.send, self._fast.sendall
            self.recv_into = self._fast.recv_into
        self._refresh()

    def _refresh(self) -> None:
        """Tell the fast path (if any) whether the plain state holds, after a
        change: connected, open, blocking, not selectable; to send, not shut
        for writing; to receive, no half-read message, not shut or at EOF."""
        fast = self._fast
        if fast is not None:
            plain = (self._ep is not None and not self._closed and self._timeout is None
                     and not self._selectable)
            fast.send_ok = plain and not self._shut_wr
            fast.recv_ok = plain and not self._shut_rd and not self._eof and self._view is None

    def _connected(self) -> Endpoint:
        self._check()
        if self._ep is None:
            raise OSError(errno.ENOTCONN, "the socket is not connected")
        return self._ep

    def _checkClosed(self) -> None:           # io.RawIOBase's name, used by SocketIO
        self._check()


def create_connection(address: Address, timeout: float | None = None,
                      source_address: Address | None = None, **options: Any) -> RdmaSocket:
    """Connect to an RdmaSocket server at ``address`` (as socket.create_connection)."""
    s = RdmaSocket(**options)
    try:
        if timeout is not None:
            s.settimeout(timeout)
        if source_address is not None:
            s.bind(source_address)
        s.connect(address)
    except BaseException:
        s.close()
        raise
    return s


def create_server(address: Address, *, family: int = _socket.AF_INET, backlog: int | None = None,
                  reuse_port: bool = False, **options: Any) -> RdmaSocket:
    """A listening RdmaSocket on ``address`` (as socket.create_server)."""
    s = RdmaSocket(family, **options)
    try:
        s.bind(address)
        s.listen(128 if backlog is None else backlog)
    except BaseException:
        s.close()
        raise
    return s


__all__ = ["RdmaSocket", "create_connection", "create_server"]

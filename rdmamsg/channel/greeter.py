"""The first steps of every client's handshake, for all clients at once.

How this works.  A Listener's greeter thread accepts each TCP connection as
it comes, sends the hello, and reads the client's conn message, checking its
version, its fields and its token.  None of this makes a verbs resource.  A
client that passes waits in a queue for Listener.accept(), which makes its QP
and finishes the handshake; one that fails is refused with the reason; one
that stays silent for handshake_timeout is dropped.  So a client learns at
once that it reached an rdmamsg listener however long the queue is, and a
silent or hostile client holds up no one else.

At most ``limit`` clients are in the greeter or its queue; beyond that it
stops taking TCP connections, which then wait in the kernel's backlog.
``fileno()`` is readable while a checked client waits (a pipe holds one byte
per queued client), for selectors.
"""
from __future__ import annotations

import collections
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..errors import AuthenticationError, HandshakeError, closed_error
from ..protocol import handshake as hs

Refused = Callable[[BaseException, tuple], None]


@dataclass
class Greeted:
    """A client whose conn message checked out, waiting for accept()."""

    sock: socket.socket
    addr: tuple
    info: hs.QPInfo
    server_nonce: bytes
    client_nonce: bytes
    decoder: hs.FrameDecoder


class _Greeting:
    __slots__ = ("sock", "addr", "deadline", "decoder", "nonce", "out")

    def __init__(self, sock, addr, deadline: float, nonce: bytes, out: bytes) -> None:
        self.sock, self.addr, self.deadline, self.nonce, self.out = sock, addr, deadline, nonce, out
        self.decoder = hs.FrameDecoder()


class Greeter:
    def __init__(self, lsock: socket.socket, token: bytes | None, timeout: float, limit: int,
                 refused: Refused) -> None:
        self._lsock, self._token, self._timeout, self._limit = lsock, token, timeout, limit
        self._refused = refused
        lsock.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ready_r, self._ready_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._sel.register(lsock, selectors.EVENT_READ)
        self._listening = True
        self._greeting: dict[socket.socket, _Greeting] = {}
        self._queue: collections.deque[Greeted] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"rdmamsg-greeter-{lsock.getsockname()[1]}")
        self._thread.start()

    def fileno(self) -> int:
        return self._ready_r

    # -- the accepting side ------------------------------------------------------------

    def take(self, timeout: float | None) -> Greeted:
        """The next checked client; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._queue and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("no connection arrived in time")
                self._cond.wait(left)
            if self._closed:
                raise closed_error("listener")
            item = self._queue.popleft()
            os.read(self._ready_r, 1)
        self._wake()                       # there may be room to take connections again
        return item

    # -- the greeter thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed:
            now = time.monotonic()
            first = min((g.deadline for g in self._greeting.values()), default=None)
            events = self._sel.select(None if first is None else max(0.0, first - now))
            for key, mask in events:
                if key.fileobj is self._lsock:
                    self._accept_all()
                elif key.fileobj == self._wake_r:
                    _drain(self._wake_r)
                else:
                    self._serve(key.data, mask)
            now = time.monotonic()
            for g in [g for g in self._greeting.values() if g.deadline <= now]:
                self._refuse(g, TimeoutError("the client sent no conn message within "
                                             f"handshake_timeout ({self._timeout:g} s)"))
            self._pace()

    def _pace(self) -> None:
        """Take TCP connections only while fewer than ``limit`` clients wait."""
        with self._cond:
            busy = len(self._greeting) + len(self._queue) >= self._limit
        if busy and self._listening:
            self._sel.unregister(self._lsock)
        elif not busy and not self._listening and not self._closed:
            self._sel.register(self._lsock, selectors.EVENT_READ)
        self._listening = not busy

    def _accept_all(self) -> None:
        while len(self._greeting) + len(self._queue) < self._limit:
            try:
                sock, addr = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return                     # e.g. ECONNABORTED, or the listener closing
            sock.setblocking(False)
            nonce = hs.new_nonce()
            g = _Greeting(sock, addr, time.monotonic() + self._timeout, nonce,
                          hs.encode(hs.hello(nonce, self._token is not None)))
            self._greeting[sock] = g
            self._sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, g)

    def _serve(self, g: _Greeting, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE and g.out:
                g.out = g.out[g.sock.send(g.out):]
                if not g.out:
                    self._sel.modify(g.sock, selectors.EVENT_READ, g)
            if not mask & selectors.EVENT_READ:
                return
            data = g.sock.recv(4096)
            if not data:
                raise HandshakeError("the client closed the connection during the handshake")
            msgs = g.decoder.feed(data)
            if not msgs:
                return
            info, client_nonce = hs.check_conn(msgs[0], g.nonce, self._token)
            hs.ring_of(info)
            hs.one_sided_of(info)
        except (BlockingIOError, InterruptedError):
            return
        except Exception as exc:           # noqa: BLE001 (bad input, or a bug: this client only)
            self._refuse(g, exc)
            return
        self._sel.unregister(g.sock)
        del self._greeting[g.sock]
        with self._cond:
            self._queue.append(Greeted(g.sock, g.addr, info, g.nonce, client_nonce, g.decoder))
            os.write(self._ready_w, b"\0")
            self._cond.notify()

    def _refuse(self, g: _Greeting, exc: BaseException) -> None:
        self._sel.unregister(g.sock)
        del self._greeting[g.sock]
        refuse_quietly(g.sock, exc)
        g.sock.close()
        self._refused(exc, g.addr)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass                           # already awake, or closed

    # -- ending ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the thread; drop every client not yet accepted.  Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
        self._release()

    def close_inherited(self) -> None:
        """In a child after fork(): close our copies of the fds; the thread and
        the clients are the parent's."""
        self._closed = True
        self._cond = threading.Condition()
        self._release()

    def _release(self) -> None:
        for sock in list(self._greeting):
            sock.close()
        for item in self._queue:
            item.sock.close()
        self._greeting.clear()
        self._queue.clear()
        self._sel.close()
        for fd in (self._wake_r, self._wake_w, self._ready_r, self._ready_w):
            os.close(fd)


def refuse_quietly(sock: socket.socket, exc: BaseException) -> None:
    """Tell the client why it was refused, if its socket takes it at once."""
    try:
        sock.setblocking(False)
        sock.send(hs.encode(hs.refuse(str(exc), auth=isinstance(exc, AuthenticationError))))
    except OSError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass

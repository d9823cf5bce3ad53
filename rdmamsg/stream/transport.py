"""An asyncio Transport on an RdmaSocket, so asyncio's own StreamReader,
StreamWriter and protocols run over RDMA.

Completions reach the event loop through the socket's fd (``add_reader``):
the engine's epoll fd, kept level-triggered by the socket.  Nothing spins
while idle.  The same readiness drives both directions: arriving data, and
returning credits that let buffered writes go on.  Connection set-up and
the orderly close, which can block, run in the loop's executor.
"""
from __future__ import annotations

import asyncio
import collections
import socket as _socket
import warnings
from .socket import RdmaSocket

READ_SIZE = 1 << 20
HIGH_WATER = 4 << 20       #: buffered output above which the protocol is paused


class RdmaTransport(asyncio.Transport):
    def __init__(self, loop: asyncio.AbstractEventLoop, sock: RdmaSocket,
                 protocol: asyncio.BaseProtocol) -> None:
        super().__init__({"socket": sock, "peername": sock.getpeername(),
                          "sockname": sock.getsockname(), "endpoint": sock.endpoint})
        self._loop, self._sock, self._protocol = loop, sock, protocol
        sock.setblocking(False)
        self._fd = sock.fileno()
        self._out: collections.deque[memoryview] = collections.deque()
        self._out_bytes = 0
        self._reading = True
        self._closing = False
        self._eof_wanted = False
        self._eof_pending = False       # wanted, and not yet sent (the peer had no room)
        self._eof_read = False
        self._paused_writing = False
        self._conn_lost = False
        self._watching = False
        self._watch()
        protocol.connection_made(self)

    def _watch(self) -> None:
        """Watch the fd while reading or while output waits for credits (with
        reading paused, data held above the engine keeps the fd readable)."""
        want = not self._conn_lost and (self._reading or bool(self._out) or self._eof_pending)
        if want and not self._watching:
            self._loop.add_reader(self._fd, self._on_ready)
        elif self._watching and not want:
            self._loop.remove_reader(self._fd)
        self._watching = want

    # -- readiness ---------------------------------------------------------------

    def _on_ready(self) -> None:
        if self._conn_lost:
            return
        try:
            if self._out or self._eof_pending:
                self._flush()
            if self._reading and not self._eof_read:
                self._read()
            else:
                self._sock._rearm(reading=False)   # take the event; readable only for credits
        except OSError as exc:
            self._fatal(exc)

    def _read(self) -> None:
        while self._reading:
            try:
                data = self._sock.recv(READ_SIZE)
            except BlockingIOError:
                return
            if not data:
                self._eof_read = True
                self._reading = False
                self._watch()
                keep_open = self._protocol.eof_received()
                if not keep_open:
                    self.close()
                return
            self._protocol.data_received(data)

    # -- writing -----------------------------------------------------------------

    def write(self, data) -> None:
        if self._eof_wanted:
            raise RuntimeError("cannot write after write_eof()")
        if self._conn_lost or self._closing:
            return
        mv = memoryview(data if type(data) is bytes else bytes(data)).cast("B")  # ours to keep
        if not mv.nbytes:
            return
        self._out.append(mv)
        self._out_bytes += mv.nbytes
        try:
            self._flush()
        except OSError as exc:
            self._fatal(exc)
            return
        self._watch()
        if self._out_bytes > HIGH_WATER and not self._paused_writing:
            self._paused_writing = True
            self._protocol.pause_writing()

    def _flush(self) -> None:
        while self._out:
            head = self._out[0]
            try:
                n = self._sock.send(head)
            except BlockingIOError:
                return                       # credits come back through the fd
            self._out_bytes -= n
            if n == head.nbytes:
                self._out.popleft()
            else:
                self._out[0] = head[n:]
        self._watch()
        if self._paused_writing:
            self._paused_writing = False
            self._protocol.resume_writing()
        if self._eof_pending:
            try:
                self._sock.shutdown(_socket.SHUT_WR)
            except BlockingIOError:
                return                       # it goes once the peer has room (the fd says)
            self._eof_pending = False
            self._watch()
        if self._closing:
            self._finish()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._eof_wanted:
            return
        self._eof_wanted = self._eof_pending = True
        if not self._out:
            try:
                self._flush()
            except OSError as exc:
                self._fatal(exc)

    def get_write_buffer_size(self) -> int:
        return self._out_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, HIGH_WATER)

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass                                  # one high-water mark, resume when empty

    # -- reading control -----------------------------------------------------------

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        self._reading = False
        self._watch()

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._watch()
            self._loop.call_soon(self._on_ready)

    # -- ending ------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing or self._conn_lost

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._out and not self._eof_pending:
            self._finish()

    def abort(self) -> None:
        self._out.clear()
        self._out_bytes = 0
        self._eof_pending = False
        self._closing = True
        self._finish(linger=0.0)

    def _fatal(self, exc: BaseException) -> None:
        self._out.clear()
        self._out_bytes = 0
        self._eof_pending = False
        self._closing = True
        self._finish(exc, linger=0.0)

    def _finish(self, exc: BaseException | None = None, linger: float | None = None) -> None:
        if self._conn_lost:
            return
        self._conn_lost = True
        self._watch()
        sock = self._sock

        def close() -> None:
            if linger is not None:
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, linger)
            sock.close()

        done = self._loop.run_in_executor(None, close)   # the orderly close may wait
        done.add_done_callback(lambda _: self._protocol.connection_lost(exc))

    def __del__(self) -> None:
        if getattr(self, "_conn_lost", True):
            return
        warnings.warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
        self._conn_lost = True
        if self._out:       # output we hold is lost: the peer must not see a clean end
            self._sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, 0)
        self._sock.close()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def __repr__(self) -> str:
        return f"<rdmamsg.RdmaTransport {self._sock!r}>"

"""One RPC connection's I/O over an Endpoint, for either side.

Frames go out under one lock, so that a frame and its out-of-band buffers
are never interleaved with another's; they come in on one reader thread,
which receives each frame's buffers straight into their final objects and
hands the frame on.  The reader also keeps the connection alive: each side
sends a PING after ``keepalive`` seconds without sending anything, and
drops the connection (ConnectionResetError) after ``dead_after`` seconds
without hearing anything.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..channel.endpoint import Endpoint
from ..errors import PeerClosedError, ProtocolError
from . import wire

FrameHandler = Callable[[wire.Header, list], None]
LostHandler = Callable[[BaseException], None]


class Link:
    def __init__(self, ep: Endpoint, on_frame: FrameHandler, on_lost: LostHandler, *,
                 keepalive: float = 1.0, dead_after: float = 3.5,
                 max_payload: int = wire.MAX_PAYLOAD, name: str = "rdmamsg-rpc") -> None:
        if keepalive <= 0 or dead_after <= keepalive:
            raise ValueError("keepalive must be positive and dead_after longer than it")
        self.ep = ep
        self._on_frame, self._on_lost = on_frame, on_lost
        self._keepalive, self._dead_after = keepalive, dead_after
        self._max_payload = max_payload
        self._send_lock = threading.Lock()
        self._last_rx = self._last_tx = time.monotonic()
        self._closing = False
        self._reader = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._reader.start()

    # -- out -----------------------------------------------------------------------

    def send(self, frame: bytes, buffers: list | tuple = ()) -> None:
        """Send a frame and its out-of-band buffers, together."""
        with self._send_lock:
            self.ep.send(frame)
            for mv in buffers:
                chunk = self.ep.max_message
                for off in range(0, mv.nbytes, chunk):
                    self.ep.send(mv[off:off + chunk])
            self._last_tx = time.monotonic()

    def try_send(self, frame: bytes) -> bool:
        """Send a small frame if that can be done now, without waiting (a
        PING, a CANCEL); whether it went."""
        if not self._send_lock.acquire(blocking=False):
            return False                   # a frame is going out: the peer hears from us
        try:
            self.ep.send(frame, 0)
            self._last_tx = time.monotonic()
            return True
        except (TimeoutError, OSError):
            return False                   # a peer not taking data is what dead_after is for
        finally:
            self._send_lock.release()

    def _ping(self) -> None:
        self.try_send(wire.encode_ping())

    # -- in ------------------------------------------------------------------------

    def _run(self) -> None:
        exc: BaseException = ConnectionResetError("the RPC connection ended")
        try:
            while True:
                try:
                    frame = self.ep.recv(self._keepalive)
                except TimeoutError:
                    self._check_alive()
                    continue
                self._heard()
                head = wire.decode_header(frame, self._max_payload)
                if head.kind != wire.PING:
                    self._on_frame(head, [self._receive(spec) for spec in head.specs])
        except BaseException as e:        # noqa: BLE001 (reported through on_lost)
            exc = e
        finally:
            self._lost(exc)

    def _heard(self) -> None:
        self._last_rx = now = time.monotonic()
        if now - self._last_tx >= self._keepalive:
            self._ping()

    def _check_alive(self) -> None:
        now = time.monotonic()
        if now - self._last_rx > self._dead_after:
            raise ConnectionResetError(f"the RPC peer has been silent for {self._dead_after:g} s "
                                       "(keepalive): it is hung, or its host is unreachable")
        if now - self._last_tx >= self._keepalive:
            self._ping()

    def _receive(self, spec: list) -> Any:
        """One out-of-band buffer, as the object it becomes."""
        nbytes = spec[1]
        obj, into = wire.allocate(spec)
        if into is None:                          # bytes: received as a new object
            parts = []
            got = 0
            while got < nbytes:
                part = self._recv_message(lambda t: self.ep.recv(t))
                if len(part) > nbytes - got:
                    raise ProtocolError("an RPC payload is longer than its frame announced")
                parts.append(part)
                got += len(part)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        got = 0
        while got < nbytes:
            try:
                got += self._recv_message(lambda t: self.ep.recv_into(into[got:], t))
            except ValueError:
                raise ProtocolError("an RPC payload is longer than its frame announced") from None
        return obj

    def _recv_message(self, recv: Callable[[float], Any]) -> Any:
        while True:
            try:
                out = recv(self._keepalive)
            except TimeoutError:
                self._check_alive()
                continue
            if not out:
                raise ProtocolError("an empty message in the middle of an RPC payload")
            self._heard()
            return out

    # -- ending ----------------------------------------------------------------------

    def _lost(self, exc: BaseException) -> None:
        if self._closing:
            exc = ConnectionAbortedError("the RPC connection was closed")
        orderly = self._closing or isinstance(exc, PeerClosedError)
        if isinstance(exc, PeerClosedError):
            exc = ConnectionResetError("the RPC peer closed the connection")
        try:
            self._on_lost(exc)
        finally:
            self.ep.close(linger=None if orderly else 0)

    def close(self) -> None:
        """Close the connection (orderly); the reader ends, and on_lost runs."""
        self._closing = True
        self.ep.close()
        if threading.current_thread() is not self._reader:
            self._reader.join(10)

    @property
    def closing(self) -> bool:
        return self._closing

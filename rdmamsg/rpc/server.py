"""The RPC server: named handlers, called concurrently for every client.

Each accepted connection is a Link with its own reader thread.  Requests
are decoded (their large arguments received straight into their final
objects) on that thread and run elsewhere: plain functions on a thread pool,
coroutine functions on the server's event loop thread (``handlers="asyncio"``
runs plain functions there too; ``handlers="inline"`` runs them on the
reader thread itself).  With the C fast path, the pool's requests are
mostly run by the reader that received them; the connection's second
reader thread takes over receiving if one lasts (the link relays).
``workers`` still bounds how many handlers run at once.  A request whose
deadline has passed by the time it would start is answered with a
deadline error and not run; a CANCEL for one not yet started stops it from
starting (an asyncio handler already running is cancelled).  A malformed
frame ends that one connection.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import threading
import time
import traceback
from typing import Any, Callable

from ..channel.bootstrap import Listener, listen
from ..channel.endpoint import Endpoint
from ..errors import ProtocolError
from . import wire
from .link import Link, fast_path, handler_slots

log = logging.getLogger("rdmamsg.rpc")

Address = tuple[str, int]


class Server:
    """``Server(address, token=None)``: register handlers, then
    ``serve_forever()`` (or ``start()`` for a background thread).

        server = rdmamsg.rpc.Server(("10.88.0.1", 7480))

        @server.register
        def add(a, b):
            return a + b

        server.serve_forever()

    ``workers`` threads run plain handlers; ``handlers="asyncio"`` runs them
    all on one event loop thread instead; ``handlers="inline"`` runs them on
    the connection's own reader thread, with no thread hand-off and no
    second reader (a pool's connection relays instead, with the Cython
    poller), but serves that connection's calls one at a time and cannot
    cancel them: for handlers that return well within
    ``keepalive`` (a longer one stalls its connection, and past
    ``dead_after`` the client gives up on it).  ``options`` are
    rdmamsg.Options fields for the connections (the clients choose the channel).
    """

    def __init__(self, address: Address, token: str | bytes | None = None, *,
                 workers: int = 16, handlers: str = "threads", keepalive: float = 1.0,
                 dead_after: float = 3.5, inline_max: int = wire.INLINE_MAX,
                 max_payload: int = wire.MAX_PAYLOAD, **options: Any) -> None:
        if handlers not in ("threads", "asyncio", "inline"):
            raise ValueError("handlers must be 'threads', 'asyncio' or 'inline'")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._functions: dict[str, tuple[Callable, bool]] = {}   # name -> (fn, on the loop)
        self._mode = handlers
        self._link_args = dict(keepalive=keepalive, dead_after=dead_after, max_payload=max_payload)
        self._inline_max = inline_max
        self._listener: Listener = listen(address, token, **options)
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "rdmamsg-rpc-handler")
        self._slots = handler_slots(workers) if handlers == "threads" else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._closed = threading.Event()
        self._serving: threading.Thread | None = None

    @property
    def address(self) -> Address:
        """The (ip, port) served (the port the system chose for port 0)."""
        return self._listener.address

    def register(self, name_or_fn: str | Callable | None = None, fn: Callable | None = None):
        """``register("name", fn)``, or as a decorator: ``@register`` (the
        function's own name) or ``@register("name")``.  Returns the function."""
        if callable(name_or_fn):
            return self.register(name_or_fn.__name__, name_or_fn)
        if fn is None:
            return lambda f: self.register(name_or_fn or f.__name__, f)
        if not isinstance(name_or_fn, str) or not name_or_fn:
            raise TypeError("a handler's name must be a non-empty string")
        on_loop = inspect.iscoroutinefunction(fn) or self._mode == "asyncio"
        self._functions[name_or_fn] = (fn, on_loop)    # decided once: not per call
        return fn

    # -- serving -------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept and serve clients until close()."""
        while not self._closed.is_set():
            try:
                ep = self._listener.accept(timeout=0.5)
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set() or self._listener.closed:
                    return
                continue                       # a refused or failed handshake: next client
            self._adopt(ep)

    def start(self) -> "Server":
        """serve_forever() on a background thread; returns the server."""
        if self._serving is None:
            self._serving = threading.Thread(target=self.serve_forever, name="rdmamsg-rpc-accept",
                                             daemon=True)
            self._serving.start()
        return self

    def _adopt(self, ep: Endpoint) -> None:
        try:
            conn = _Connection(self, ep)
        except BaseException:
            ep.close(linger=0)
            raise
        with self._lock:
            if self._closed.is_set():
                ep.close(linger=0)
                return
            self._connections.add(conn)
        conn.start()

    def _forget(self, conn: "_Connection") -> None:
        with self._lock:
            self._connections.discard(conn)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(target=self._loop.run_forever,
                                                     name="rdmamsg-rpc-loop", daemon=True)
                self._loop_thread.start()
            return self._loop

    @property
    def connections(self) -> int:
        """Clients connected now."""
        with self._lock:
            return len(self._connections)

    # -- ending ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting, close every connection (pending calls there fail),
        and stop the handler threads and loop.  Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._listener.close()
        if self._serving is not None and self._serving is not threading.current_thread():
            self._serving.join(5)
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            conn.link.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(5)
            if not self._loop.is_running():
                self._loop.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Connection:
    """One client: its Link, and its requests that have not finished."""

    def __init__(self, server: Server, ep: Endpoint) -> None:
        self.server = server
        self.link = Link(ep, self._on_frame, self._on_lost, name="rdmamsg-rpc-conn",
                         **server._link_args)
        self._lock = threading.Lock()
        self._running: dict[int, Any] = {}     # id -> None (queued) or a future that can cancel
        self._cancelled: set[int] = set()

    def start(self) -> None:
        # The C loop answers the common requests itself: inline, or relaying
        # (a pool's slots): a second reader takes over while a handler lasts.
        server = self.server
        fast = None
        if server._mode == "inline" or server._slots is not None:
            fast = fast_path(self.link, server._inline_max, slots=server._slots)
        if fast is None:
            self.link.start()
        else:
            self.link.start(functools.partial(fast.serve, self._finish, server._functions),
                            relay=None if server._slots is None else fast)

    def _on_frame(self, head: wire.Header, objects: list) -> None:
        if head.kind == wire.CANCEL:
            with self._lock:
                if head.id in self._running:
                    self._cancelled.add(head.id)
                    task = self._running[head.id]
                    if task is not None:
                        task.get_loop().call_soon_threadsafe(task.cancel)
            return
        if head.kind != wire.REQUEST:
            raise ProtocolError(f"a client sent an RPC frame of kind {head.kind}")
        args, kwargs = wire.request_parts(head, wire.decode_body(head, objects))
        fn, on_loop = self.server._functions.get(head.method, (None, False))
        if fn is None:
            self._finish(head.id, error=(wire.UNKNOWN_METHOD, f"no RPC method named {head.method!r}"))
            return
        if self.server._mode == "inline" and not on_loop:
            # It starts now and ends before the next frame is read: nothing to
            # track for a CANCEL or a deadline.
            self._call(head.id, fn, args, kwargs)
            return
        deadline = None if head.timeout is None else time.monotonic() + head.timeout
        with self._lock:
            self._running[head.id] = None
        if on_loop:
            loop = self.server._event_loop()
            loop.call_soon_threadsafe(self._start_on_loop, loop, head.id, fn, args, kwargs, deadline)
        else:
            self.server._pool.submit(self._run, head.id, fn, args, kwargs, deadline)

    def _skip(self, call_id: int, deadline: float | None) -> bool:
        """Whether a request about to start should not: cancelled or expired."""
        with self._lock:
            if call_id in self._cancelled:
                self._cancelled.discard(call_id)
                self._running.pop(call_id, None)
                return True
        if deadline is not None and time.monotonic() > deadline:
            self._finish(call_id, error=(wire.DEADLINE_EXCEEDED,
                                         "the call's deadline passed before it started"))
            return True
        return False

    def _run(self, call_id: int, fn: Callable, args: list, kwargs: dict,
             deadline: float | None) -> None:
        slots = self.server._slots
        if slots is not None:
            slots.take()                       # relaying readers run handlers too
        try:
            if not self._skip(call_id, deadline):
                self._call(call_id, fn, args, kwargs)
        finally:
            if slots is not None:
                slots.give()

    def _call(self, call_id: int, fn: Callable, args: list, kwargs: dict) -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:          # noqa: BLE001 (sent to the caller)
            self._finish(call_id, exc=exc)
        else:
            self._finish(call_id, result=result)

    def _start_on_loop(self, loop, call_id: int, fn: Callable, args: list, kwargs: dict,
                       deadline: float | None) -> None:
        if self._skip(call_id, deadline):
            return
        if not inspect.iscoroutinefunction(fn):
            self._call(call_id, fn, args, kwargs)
            return
        task = loop.create_task(fn(*args, **kwargs))
        with self._lock:
            self._running[call_id] = task
        task.add_done_callback(lambda t: self._task_done(call_id, t))

    def _task_done(self, call_id: int, task: asyncio.Task) -> None:
        if task.cancelled():
            self._finish(call_id, error=("asyncio.CancelledError", "the call was cancelled"))
        elif task.exception() is not None:
            self._finish(call_id, exc=task.exception())
        else:
            self._finish(call_id, result=task.result())

    def _finish(self, call_id: int, result: Any = None, exc: BaseException | None = None,
                error: tuple[str, ...] | None = None) -> None:
        """Send the reply (unless the call was cancelled)."""
        with self._lock:
            self._running.pop(call_id, None)
            if call_id in self._cancelled:
                self._cancelled.discard(call_id)
                return
        if self.link.closing:
            return
        buffers: list = []
        if exc is not None:
            error = (_qualified_name(type(exc)), str(exc),
                     "".join(traceback.format_exception(exc)))
        if error is None:
            try:
                frame, buffers = wire.encode_reply(call_id, result, self.server._inline_max)
            except TypeError as e:
                error = ("builtins.TypeError", f"the result could not be sent: {e}")
        if error is not None:
            frame = wire.encode_error(call_id, *error)
        try:
            self.link.send(frame, buffers)
        except OSError as e:                   # the connection is gone: the reader reports it
            log.debug("reply to call %d not sent: %s", call_id, e)

    def _on_lost(self, exc: BaseException) -> None:
        if not isinstance(exc, (ConnectionResetError, ConnectionAbortedError)):
            log.warning("rdmamsg.rpc: closing a connection: %s", exc)
        with self._lock:
            for task in self._running.values():
                if task is not None:
                    task.get_loop().call_soon_threadsafe(task.cancel)
            self._cancelled.update(self._running)
        self.server._forget(self)


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"

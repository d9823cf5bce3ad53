"""RPC clients: Client (threads and futures) and AsyncClient (asyncio).

Every call gets an id; any number may be outstanding on one connection, and
replies complete their futures in whatever order they come.  A call's
timeout travels with it, so the server skips work nobody waits for; a
timed-out or cancelled call sends a CANCEL (best effort) and its late reply
is dropped.  When the connection is lost (the peer died, closed, went
silent past the keepalive, or broke the protocol) every pending call fails
with that error: ConnectionResetError for a lost peer.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import heapq
import itertools
import os
import threading
import time
import warnings
import weakref
from typing import Any, Callable

from ..channel.bootstrap import connect
from ..errors import (InheritedError, ProtocolError, RemoteError, UnknownMethodError, closed_error,
                      inherited_error)
from ..verbs.inherit import owner
from . import wire
from .link import Link, fast_path

try:
    from ._rpcfast import GENERAL as _GENERAL, TIMED_OUT as _TIMED_OUT, ClientPort as _Port
except ImportError:                 # no extension: no fast path returns them
    _GENERAL = _TIMED_OUT = _Port = object()

Address = tuple[str, int]


class Client:
    """``Client(address, token=None, timeout=None)``: calls to an rdmamsg.rpc.Server.

        with rdmamsg.rpc.Client(("10.88.0.1", 7480)) as client:
            client.call("add", 1, 2)                    # 3
            futures = [client.call_async("add", i, i) for i in range(100)]
            client.with_timeout(0.5).call("slow")       # TimeoutError after 0.5 s

    ``timeout`` is each call's default limit (None: wait as long as the
    connection lives).  Binary values of ``inline_max`` bytes or more are
    sent out of band, from their own memory.  ``options`` are rdmamsg.Options
    fields; the write channel is the default.
    """

    def __init__(self, address: Address, token: str | bytes | None = None,
                 timeout: float | None = None, *, connect_timeout: float | None = 30.0,
                 keepalive: float = 1.0, dead_after: float = 3.5,
                 inline_max: int = wire.INLINE_MAX, max_payload: int = wire.MAX_PAYLOAD,
                 **options: Any) -> None:
        options.setdefault("channel", "write")
        self.timeout = timeout
        self._inline_max = inline_max
        self._lock = threading.Lock()
        self._pending: dict[int, concurrent.futures.Future | _Slot] = {}
        self._lost: BaseException | None = None
        self._deadlines = _Deadlines()
        ep = connect(address, connect_timeout, token, **options)
        # The reader and deadline threads hold the client weakly, so that a client dropped
        # without close() is collected, warns, and ends its connection.
        self._me = me = weakref.ref(self)
        self._link = Link(ep, functools.partial(_to_client, me, "_on_frame"),
                          functools.partial(_to_client, me, "_on_lost"), keepalive=keepalive,
                          dead_after=dead_after, max_payload=max_payload,
                          name=f"rdmamsg-rpc-client-{address[0]}:{address[1]}")
        self._fast = fast = fast_path(self._link, inline_max, self._pending)
        self._wake = self._link.wake
        self._next_id = itertools.count(1).__next__ if fast is None else fast.next_id
        self._port = None
        if fast is None:
            self._link.start()
        else:
            fast.completions.on_cancel = functools.partial(_to_client, me, "_cancelled")
            # The same calls, in C: no Python frame per call.  The port is all
            # they know of this client (and its timeout).
            self._port = port = _Port()
            port.down = functools.partial(_to_client, me, "_down")
            port.timed_out = functools.partial(_to_client, me, "_timed_out")
            port.general_call = functools.partial(_to_client, me, "_general_call")
            port.submit = functools.partial(_to_client, me, "_submit", timer=True)
            port.expire_after = functools.partial(_to_client, me, "_expire_after")
            port.expire_calls_at = functools.partial(_to_client, me, "_expire_calls_at")
            port.expect = functools.partial(_to_client, me, "_expect")
            call, call_async = fast.bind(self, port)
            if type(self).call is Client.call:
                self.call = call
            if type(self).call_async is Client.call_async:
                self.call_async = call_async
            # Whoever waits for a reply receives it (CallFuture.result); the
            # reader, for those nobody waits on so (callbacks, wait()).
            self._link.start(serve=fast.collect, awaited=fast.awaited)
        owner(self)

    # -- calling ---------------------------------------------------------------------

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``name(*args, **kwargs)`` on the server and return its result.
        Raises RemoteError (or UnknownMethodError) for the handler's exception,
        TimeoutError after ``timeout``, ConnectionResetError if the server is lost."""
        return self._call(name, args, kwargs, self.timeout)

    def call_async(self, name: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Start a call; a Future of its result.  ``future.cancel()`` cancels it."""
        return self._submit(name, args, kwargs, self.timeout, timer=True)

    def with_timeout(self, timeout: float | None) -> "_Scoped":
        """This client with another timeout for the calls made through it."""
        return _Scoped(self, timeout)

    def _call(self, name: str, args: tuple, kwargs: dict, timeout: float | None) -> Any:
        if self._fast is not None:
            call_id = self._next_id()
            out = self._fast.call(call_id, name, args, kwargs, timeout)
            if out is _TIMED_OUT:
                self._timed_out(call_id, name, timeout)
            if out is not _GENERAL:
                return out
        return self._general_call(name, args, kwargs, timeout)

    def _timed_out(self, call_id: int, name: str, timeout: float) -> None:
        """A fast call timed out: cancel it, and raise TimeoutError."""
        if self._lost is None:
            self._link.try_send(wire.encode_cancel(call_id))
        raise _timed_out(name, timeout)

    def _general_call(self, name: str, args: tuple, kwargs: dict, timeout: float | None) -> Any:
        # The calling thread receives its own reply when no other caller is
        # receiving: no reader thread spins meanwhile, no hand-off follows,
        # and the reply lands in a plain slot rather than a Future.
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._link.take_turn():
            fut = self._submit(name, args, kwargs, timeout, timer=False)
            try:
                return fut.result(None if deadline is None
                                  else max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                if not fut.done():
                    fut.cancel()
                    raise _timed_out(name, timeout) from None
                return fut.result()
        slot = _Slot()
        try:
            call_id = self._send_call(slot, name, args, kwargs, timeout)
            self._link.receive_until(slot.ready, deadline)
        finally:
            self._link.give_turn(park=lambda: not self._pending)
        if not slot.done:
            with self._lock:
                pending = self._pending.pop(call_id, None) is not None
            if pending and self._lost is None:
                self._link.try_send(wire.encode_cancel(call_id))
            if not slot.done:
                raise _timed_out(name, timeout)
        if slot.exc is not None:
            raise slot.exc
        return slot.result

    def _send_call(self, holder: "_Slot | concurrent.futures.Future", name: str, args: tuple,
                   kwargs: dict, timeout: float | None) -> int:
        """Send a request whose reply ``holder`` receives; its call id."""
        if not isinstance(name, str):
            raise TypeError("an RPC method name must be a string")
        call_id = self._next_id()
        fast = self._fast
        frame = buffers = None
        if fast is None:
            frame, buffers = wire.encode_request(call_id, name, args, kwargs, timeout,
                                                 self._inline_max)
        with self._lock:
            if self._lost is not None:
                raise self._down()
            self._pending[call_id] = holder
        try:
            # The fast path encodes in C what its codec covers; wire.py the rest.
            if fast is None or not fast.send_request(call_id, name, args, kwargs, timeout):
                if frame is None:
                    frame, buffers = wire.encode_request(call_id, name, args, kwargs, timeout,
                                                         self._inline_max)
                self._link.send(frame, buffers)
        except BaseException as exc:
            with self._lock:
                self._pending.pop(call_id, None)
            if self._lost is not None:
                raise self._down() from exc
            raise
        return call_id

    def _expect(self, call_id: int) -> "_Slot":
        """A slot for the reply to ``call_id``, which the fast path hands to
        _on_frame (an error, or a result with out-of-band buffers)."""
        slot = _Slot()
        with self._lock:
            self._pending[call_id] = slot
        return slot

    def _submit(self, name: str, args: tuple, kwargs: dict, timeout: float | None,
                timer: bool) -> concurrent.futures.Future:
        fut = _Call(self._me) if self._fast is None else self._fast.new_future()
        fut.call_id = call_id = self._send_call(fut, name, args, kwargs, timeout)
        if timer and self._fast is None:
            self._wake()                 # no caller receives this reply: the reader must
        if timer and timeout is not None:
            self._expire_after(call_id, name, timeout)
        return fut

    def _expire_after(self, call_id: int, name: str, timeout: float) -> None:
        """Fail call ``call_id`` with TimeoutError after ``timeout`` (call_async)."""
        self._deadlines.add(time.monotonic() + timeout,
                            functools.partial(_to_client, self._me, "_expire", call_id, name,
                                              timeout))

    def _expire_calls_at(self, when: float) -> None:
        """At ``when``, expire the fast path's calls that are due (it keeps
        their deadlines in order, and asks again while any remain)."""
        self._deadlines.add(when, functools.partial(_to_client, self._me, "_expire_calls"))

    def _expire_calls(self) -> None:
        due, next_at = self._fast.due_calls()
        for call_id, name, timeout in due:
            self._expire(call_id, name, timeout)
        if next_at is not None:
            self._expire_calls_at(next_at)

    def _expire(self, call_id: int, name: str, timeout: float) -> None:
        with self._lock:
            fut = self._pending.pop(call_id, None)
        if fut is not None and _settle(fut, exc=_timed_out(name, timeout)):
            self._link.try_send(wire.encode_cancel(call_id))

    def _cancelled(self, call_id: int) -> None:
        with self._lock:
            was_pending = self._pending.pop(call_id, None) is not None
        if was_pending and self._lost is None:
            self._link.try_send(wire.encode_cancel(call_id))

    # -- replies ---------------------------------------------------------------------

    def _on_frame(self, head: wire.Header, objects: list) -> None:
        if head.kind != wire.REPLY:
            raise ProtocolError(f"the RPC server sent a frame of kind {head.kind}")
        body = wire.decode_body(head, objects)
        with self._lock:
            fut = self._pending.pop(head.id, None)
        if fut is None:
            return                              # timed out or cancelled: dropped
        if head.status == wire.OK:
            _settle(fut, result=body)
        else:
            _settle(fut, exc=_remote_exception(*wire.error_parts(body)))

    def _on_lost(self, exc: BaseException) -> None:
        with self._lock:
            self._lost = exc
            if self._port is not None:
                self._port.lost = True     # before the calls are taken: see LinkFast.submit
            pending = list(self._pending.values())
            self._pending.clear()          # in place: the fast path holds this dict
        self._deadlines.close()
        if self._fast is not None:
            self._fast.loop_unwatch_soon()     # an AsyncClient's loop receives no more
        for fut in pending:
            _settle(fut, exc=self._down())

    def _down(self) -> BaseException:
        exc = self._lost
        if isinstance(exc, InheritedError):
            return exc
        if isinstance(exc, ConnectionAbortedError):
            return closed_error("RPC client")
        if isinstance(exc, ProtocolError):
            return ProtocolError(f"the RPC connection was dropped: {exc}")
        return ConnectionResetError(f"the RPC connection was lost: {exc}")

    # -- ending ----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._lost is not None

    def close(self) -> None:
        """Close the connection; calls still pending fail with OSError(EBADF)."""
        self._link.close()
        self._deadlines.close()

    def _leave_loop(self) -> None:
        """The asyncio loop that receives for this client's calls (an
        AsyncClient's) stops: call on the loop, which may end next."""
        if self._fast is not None:
            self._fast.loop_unwatch()

    def _disown(self) -> None:
        """In a child after fork(): the connection and its threads are the
        parent's, so calls raise InheritedError and close() frees nothing.
        The locks are new: a thread that held one does not exist here."""
        self._lock = threading.Lock()
        self._pending = {}
        self._lost = inherited_error("RPC client", os.getppid())
        if self._port is not None:
            self._port.lost = True
        self._link._disown()
        self._deadlines = _Deadlines()
        self._deadlines.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_lost", True) is not None or not hasattr(self, "_link"):
            return
        warnings.warn(f"unclosed rdmamsg.rpc.Client to {self._link.ep.raddr}", ResourceWarning,
                      stacklevel=1)
        try:
            self.close()
        except Exception:                  # noqa: BLE001 (never raise from a finaliser)
            pass


def _to_client(ref: weakref.ref, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call a Client's method through its weak reference (the Link's
    callbacks, the fast path's port)."""
    client = ref()
    if client is None:
        if method == "_on_frame":
            raise ConnectionAbortedError("the RPC client was dropped without close()")
        return None
    return getattr(client, method)(*args, **kwargs)


class _Scoped:
    """A Client seen with another timeout (Client.with_timeout)."""

    def __init__(self, client: Client, timeout: float | None) -> None:
        self._client, self.timeout = client, timeout

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._client._call(name, args, kwargs, self.timeout)

    def call_async(self, name: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        return self._client._submit(name, args, kwargs, self.timeout, timer=True)


class AsyncClient:
    """The asyncio client: ``await client.call(name, *args, **kwargs)``.

        async with rdmamsg.rpc.AsyncClient(("10.88.0.1", 7480)) as client:
            print(await client.call("add", 1, 2))

    Takes Client's arguments; connects in ``__aenter__`` (or ``await
    client.connect()``), without blocking the loop.  Cancelling the awaiting
    task cancels the call.
    """

    def __init__(self, address: Address, token: str | bytes | None = None,
                 timeout: float | None = None, **kwargs: Any) -> None:
        self._args = (address, token, timeout)
        self._kwargs = kwargs
        self._client: Client | None = None

    async def connect(self) -> "AsyncClient":
        if self._client is None:
            loop = asyncio.get_running_loop()
            self._client = await loop.run_in_executor(
                None, functools.partial(Client, *self._args, **self._kwargs))
        return self

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await _settled(self._connected().call_async(name, *args, **kwargs))

    def with_timeout(self, timeout: float | None) -> "_AsyncScoped":
        return _AsyncScoped(self._connected().with_timeout(timeout))

    def _connected(self) -> Client:
        if self._client is None:
            raise RuntimeError("AsyncClient is not connected: use 'async with' or await connect()")
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            self._client._leave_loop()
            await asyncio.get_running_loop().run_in_executor(None, self._client.close)

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()


class _AsyncScoped:
    def __init__(self, scoped: _Scoped) -> None:
        self._scoped = scoped

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await _settled(self._scoped.call_async(name, *args, **kwargs))


async def _settled(fut: concurrent.futures.Future) -> Any:
    """A call's result, on the running loop; cancelling the awaiting task
    cancels the call.  (A CallFuture's twin on the loop completes with its
    batch of replies: one loop wake-up for them all.)"""
    on_loop = getattr(fut, "on_loop", None)
    if on_loop is None:
        return await asyncio.wrap_future(fut)      # the pure-pyverbs poller's futures
    try:
        return await on_loop(asyncio.get_running_loop())
    except asyncio.CancelledError:
        fut.cancel()
        raise


class _Call(concurrent.futures.Future):
    """A call's Future (call_async): cancelling it cancels the call.  (A
    subclass rather than a done-callback: no callback object per call.)"""

    def __init__(self, client: weakref.ref) -> None:
        super().__init__()
        self._client = client
        self.call_id = 0

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        _to_client(self._client, "_cancelled", self.call_id)
        return True


class _Slot:
    """Where a reply lands for a caller that receives it itself: what a
    Future would hold, without its lock and callbacks."""

    __slots__ = ("done", "result", "exc")

    def __init__(self) -> None:
        self.done, self.result, self.exc = False, None, None

    def ready(self) -> bool:
        return self.done

    def set_result(self, result: Any) -> None:
        self.result, self.done = result, True

    def set_exception(self, exc: BaseException) -> None:
        self.exc, self.done = exc, True


def _timed_out(name: str, timeout: float | None) -> TimeoutError:
    after = "" if timeout is None else f" after {timeout:g} s"
    return TimeoutError(f"RPC call {name!r} timed out{after}")


def _remote_exception(type_name: str, message: str, tb: str) -> BaseException:
    if type_name == wire.UNKNOWN_METHOD:
        return UnknownMethodError(type_name, message, tb)
    if type_name == wire.DEADLINE_EXCEEDED:
        return TimeoutError(f"the server did not start the call in time: {message}")
    return RemoteError(type_name, message, tb)


def _settle(fut: concurrent.futures.Future, result: Any = None,
            exc: BaseException | None = None) -> bool:
    """Complete ``fut`` unless it was cancelled meanwhile; whether it was."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
        return True
    except concurrent.futures.InvalidStateError:
        return False


class _Deadlines:
    """Call-outs at given times, on one thread started when first needed."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, when: float, fn: Callable[[], None]) -> None:
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._heap, (when, next(self._order), fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rdmamsg-rpc-deadlines",
                                                daemon=True)
                self._thread.start()
            if self._heap[0][2] is fn:
                self._cond.notify()      # sooner than the thread waits for (else: no wake-up)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._closed:
                    return
                fn = heapq.heappop(self._heap)[2]
            fn()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()

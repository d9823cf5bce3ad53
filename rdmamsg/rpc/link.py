"""One RPC connection's I/O over an Endpoint, for either side.

Frames go out under one lock, so that a frame and its out-of-band buffers
are never interleaved with another's; they come in on one reader thread,
which receives each frame's buffers straight into their final objects and
hands the frame on.  The reader also keeps the connection alive: each side
sends a PING after ``keepalive`` seconds without sending anything, and
drops the connection (ConnectionResetError) after ``dead_after`` seconds
without hearing anything.

Who receives, who sleeps, who wakes whom (the progress model):

- A thread that waits for a reply receives frames itself (take_turn,
  receive_until, give_turn), if no other thread does: it completes every
  reply it meets, not only its own.  A synchronous call thus costs one
  thread on each side, as a plain send/recv round trip does, and a thread
  that keeps many calls in flight and waits for them in turn never hands
  off to another thread.
- Other threads waiting meanwhile sleep, each on its own lock, and are
  woken once their reply is completed (a batch of completions wakes each
  of them once); when the receiving thread's own reply has come, it gives
  up its turn and wakes one of them to receive in its place.
- An asyncio loop that awaits calls (AsyncClient, with the C fast path)
  receives for them itself: it watches the endpoint's fd and takes what
  is there whenever it is readable (LinkFast.loop_watch), so no thread
  hands it replies, or the GIL.  A thread whose turn to receive ends has
  the loop look (the fd's readiness may have gone with that thread).
- The reader thread receives when nobody waits in those ways: when calls
  are awaited through callbacks, wait(), as_completed() or another loop
  (they "watch": LinkFast.watch_calls unparks it), or when replies have
  waited ORPHANED seconds with nobody receiving.  Otherwise it stays
  parked, and wakes only to send a PING when one is due.  A waiter that finds the reader receiving
  asks it to step aside (``ep.interrupt()``).
- Nothing spins on behalf of a thread that is not waiting: idle
  connections cost no CPU.

With the Cython poller, ext/rpc/_rpcfast (``fast_path``) runs this in C: a
synchronous call, call_async and its future (ext/rpc/rpc_future.pxi: a
concurrent.futures.Future made and completed without Python code, whose
result() receives as above), the receiving loop, which completes the
replies already there a batch per wake-up (``LinkFast.take_replies``), and
a server connection's requests; requests are encoded in C under the send
lock (``LinkFast.send_request``).  They keep this state by its rules,
through what Link declares for them (its docstring: the turn under
``turn_lock``, frames under ``send_lock``, the keepalive times in
``state``), and give every frame they do not cover to ``dispatch``.  The
pure-pyverbs poller's futures are plain ones, which the reader completes.  A server with
a thread pool gives the link a second reader thread
(``start(relay=...)``): the reader that receives a request runs it, and
the other, parked, takes over receiving if it lasts.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..channel.endpoint import Endpoint
from ..errors import PeerClosedError, ProtocolError
from . import wire

#: Seconds a parked reader leaves awaited replies to their waiters, who
#: receive them themselves (CallFuture.result), before it receives them:
#: for calls nobody waits on at all.
ORPHANED = 0.02

FrameHandler = Callable[[wire.Header, list], None]
LostHandler = Callable[[BaseException], None]
Server = Callable[[float], "bytes | None"]


try:
    from . import _rpcfast
except ImportError:                 # not built: the general path serves everything
    _rpcfast = None


class _State:
    """A Link's receive turn and keepalive times: the state its fast paths
    share (ext/rpc/_rpcfast's LinkState is this, with C fields)."""
    __slots__ = ("last_rx", "last_tx", "ping_tried", "receiver", "asked", "parked", "over",
                 "watched", "idle", "handling")

    def __init__(self) -> None:
        self.last_rx = self.last_tx = self.ping_tried = 0.0
        self.receiver, self.asked, self.parked, self.over = None, False, False, False
        self.watched = False                   # (a client's futures in C: LinkFast.watch_calls)
        self.idle = self.handling = 0          # (relaying, which needs LinkFast)


def fast_path(link: "Link", inline_max: int, pending: dict | None = None, slots=None):
    """The C fast paths for ``link`` (an ext/rpc/_rpcfast LinkFast), or None
    with the pure-pyverbs poller (or without the extension).  ``pending``:
    a client's calls awaiting replies (kept in place, never replaced);
    ``slots``: a server pool's handler_slots (the link relays)."""
    if _rpcfast is None or type(link.state) is not _rpcfast.LinkState:
        return None                # Link.__init__ chose the state: C fields, or not
    return _rpcfast.LinkFast(link, inline_max, pending, slots)


def handler_slots(workers: int):
    """A server pool's ``workers`` slots, shared by its pool and its relaying
    links (an ext/rpc/_rpcfast Slots), or None without the extension."""
    return None if _rpcfast is None else _rpcfast.Slots(workers)


class Link:
    """One connection's frames in and out (the module's docstring says how).

    Its fast path (ext/rpc/rpc_calls.pxi's LinkFast) uses what is public here:
    ``ep``, ``state`` (who receives, the keepalive times), ``keepalive``,
    ``reader`` (the thread), ``send_lock``, ``turn_lock`` (with
    ``notify_turn()`` while it is held), ``take_turn()``, ``after_progress()``,
    ``closing``, and for what it does not cover ``dispatch()``,
    ``check_alive()``, ``ping_if_due()`` and ``lose()``.
    """

    def __init__(self, ep: Endpoint, on_frame: FrameHandler, on_lost: LostHandler, *,
                 keepalive: float = 1.0, dead_after: float = 3.5,
                 max_payload: int = wire.MAX_PAYLOAD, name: str = "rdmamsg-rpc") -> None:
        if keepalive <= 0 or dead_after <= keepalive:
            raise ValueError("keepalive must be positive and dead_after longer than it")
        self.ep = ep
        self._on_frame, self._on_lost = on_frame, on_lost
        self.keepalive, self._dead_after = keepalive, dead_after
        self._max_payload = max_payload
        # st.receiver: who receives frames: the reader thread, a caller
        # (take_turn), or nobody.  A caller that asked (st.asked) waits for the
        # reader to step aside.  st.parked: the reader waits for wake() (or
        # keepalive seconds idle).  st.over: lost, nobody receives any more.
        fast = _rpcfast is not None and ep.poller == "cython"
        self.state = _rpcfast.LinkState() if fast else _State()
        self.state.last_rx = self.state.last_tx = self.state.ping_tried = time.monotonic()
        self._closing = False
        # (The fast paths take and give these locks in C.)
        lock = _rpcfast.Lock if fast else threading.Lock
        self.send_lock = lock()
        self.turn_lock = lock()
        self._turn = threading.Condition(self.turn_lock)
        self._disowned = False     # inherited through fork(): see _disown
        self._serve: Server | None = None
        self._relay = None
        self._awaited: Callable[[], int] | None = None
        self._progressed: Callable[[], None] | None = None
        self._name = name
        self.reader = threading.Thread(target=self._run, name=name, daemon=True)
        self._second: threading.Thread | None = None

    def start(self, serve: Server | None = None, relay=None,
              awaited: Callable[[], int] | None = None) -> None:
        """Start the reader.  ``serve(timeout)``, if given, receives and
        handles frames itself (LinkFast.serve) and returns those it leaves to
        the general path, or None when none came within ``timeout``.
        ``relay``: the LinkFast whose serve() hands the reading to a second
        reader thread, parked in ``relay.park()`` until then.  ``awaited()``:
        whether replies are awaited, which a parked reader receives once
        nobody has for ORPHANED seconds."""
        self._serve, self._relay, self._awaited = serve, relay, awaited
        if relay is not None:
            parking = threading.Event()
            self._second = threading.Thread(target=self._run_relayed, args=(parking,),
                                            name=self._name, daemon=True)
            self._second.start()
            parking.wait(5)        # parked before the first request: that one relays too
        self.reader.start()

    # -- out -----------------------------------------------------------------------

    def send(self, frame: bytes, buffers: list | tuple = ()) -> None:
        """Send a frame and its out-of-band buffers, together."""
        with self.send_lock:
            self.ep.send(frame)
            for mv in buffers:
                chunk = self.ep.max_message
                for off in range(0, mv.nbytes, chunk):
                    self.ep.send(mv[off:off + chunk])
            self.state.last_tx = time.monotonic()
        if self._progressed is not None:
            self._progressed()

    def try_send(self, frame: bytes) -> bool:
        """Send a small frame if that can be done now, without waiting (a
        PING, a CANCEL); whether it went."""
        if not self.send_lock.acquire(blocking=False):
            return False                   # a frame is going out: the peer hears from us
        try:
            self.ep.send(frame, 0)
            self.state.last_tx = time.monotonic()
            return True
        except (TimeoutError, OSError):
            return False                   # a peer not taking data is what dead_after is for
        finally:
            self.send_lock.release()
            if self._progressed is not None:
                self._progressed()

    def _ping_due(self, now: float) -> float:
        """Seconds until our next PING is due (we sent nothing, or last tried)."""
        return max(self.state.last_tx, self.state.ping_tried) + self.keepalive - now

    def ping_if_due(self, now: float) -> None:
        if self._ping_due(now) <= 0:
            self.state.ping_tried = now  # sent or not: the next try is keepalive away
            self.try_send(wire.encode_ping())

    # -- whose turn to receive ---------------------------------------------------------

    def take_turn(self) -> bool:
        """Become the thread that receives frames; False if another caller
        is (or the connection is lost): then wait for your reply as usual."""
        with self._turn:
            st = self.state
            if st.over or st.asked or st.receiver not in (None, self.reader):
                return False
            st.asked = True
            if st.receiver is not None:
                self.ep.interrupt()
                while st.receiver is not None and not st.over:
                    self._turn.wait()
            st.asked = False
            if st.over:
                self._turn.notify_all()
                return False
            st.receiver = threading.current_thread()
            return True

    def receive_until(self, done: Callable[[], bool], deadline: float | None) -> None:
        """Receive and dispatch frames on this thread (its turn) until
        ``done()`` or ``deadline``.  A lost connection is reported through
        on_lost, as the reader would report it."""
        try:
            while not done():
                timeout = self.keepalive
                if deadline is not None:
                    timeout = min(timeout, deadline - time.monotonic())
                    if timeout <= 0:
                        return
                self._step(timeout)
        except BaseException as exc:      # noqa: BLE001 (reported through on_lost)
            self.lose(exc)

    def give_turn(self, park: Callable[[], bool]) -> None:
        """End this thread's turn; the reader stays parked if ``park()`` (asked
        under the turn lock, so that a wake() cannot slip in between)."""
        with self._turn:
            self.state.receiver = None
            self.state.parked = park()
            if self.state.asked or not self.state.parked:
                self._turn.notify_all()    # else nobody is to wake: waking costs a switch
        if self._progressed is not None:
            self._progressed()

    def after_progress(self, fn: Callable[[], None] | None) -> None:
        """Call ``fn()`` whenever a thread may have taken arrivals that the
        endpoint's fd announced (its turn to receive ended, or it sent, which
        can poll): an asyncio loop that receives looks then
        (LinkFast.loop_watch)."""
        self._progressed = fn

    def notify_turn(self) -> None:
        """Wake the threads waiting for the turn (``turn_lock`` held)."""
        self._turn.notify_all()

    def wake(self) -> None:
        """Unpark the reader: a reply is awaited that no caller receives."""
        with self._turn:
            if self.state.parked:
                self.state.parked = False
                self._turn.notify_all()

    def _reader_turn(self) -> bool:
        # (Relaying, the reader threads take turns by the baton; either one
        # is ``self.reader`` here, and only one of them ever asks.)
        with self._turn:
            st = self.state
            while not st.over and (st.receiver not in (None, self.reader) or st.asked
                                   or st.parked):
                if st.receiver not in (None, self.reader) or st.asked:
                    self._turn.wait(self.keepalive)     # a caller receives, and pings
                    continue
                wait = self._quiet_since() + self.keepalive - time.monotonic()
                orphans = self._awaited is not None and self._awaited()
                if orphans:
                    wait = min(wait, ORPHANED)
                if wait <= 0 or (not self._turn.wait(wait) and orphans and self._awaited()):
                    st.parked = False      # a PING is due, or replies wait for nobody: look
            if st.over:
                return False
            st.receiver = self.reader
            return True

    def _end_reader_turn(self) -> None:
        with self._turn:
            if self.state.receiver is self.reader:
                self.state.receiver = None
            self._turn.notify_all()
        if self._progressed is not None:
            self._progressed()

    # -- in ------------------------------------------------------------------------

    def _run_relayed(self, parking: threading.Event) -> None:
        parking.set()              # just before parking (a request that races it takes the pool)
        if self._relay.park():
            self._run()

    def _run(self) -> None:
        while self._reader_turn():
            try:
                self._step(self.keepalive)
            except BaseException as exc:  # noqa: BLE001 (reported through on_lost)
                self.lose(exc)
            finally:
                self._end_reader_turn()

    def _quiet_since(self) -> float:
        """When we last sent, or heard, whichever is earlier."""
        return min(self.state.last_tx, self.state.last_rx)

    def _step(self, timeout: float) -> None:
        """Receive one frame, if one comes within ``timeout``, and dispatch it.
        The wait ends early when our PING is due, so that PINGs go out every
        ``keepalive`` seconds, not every two."""
        if self._serve is not None:
            frame = self._serve(timeout)
            if frame is not None:
                self.dispatch(frame)
            return
        due = self._ping_due(time.monotonic())
        try:
            frame = self.ep.recv(max(0.001, min(timeout, due)))
        except InterruptedError:
            return                         # another thread takes over receiving
        except TimeoutError:
            self.check_alive()
            return
        self._heard()
        self.dispatch(frame)

    def dispatch(self, frame: bytes) -> None:
        """Decode a frame that came, receive its out-of-band buffers, hand it on."""
        head = wire.decode_header(frame, self._max_payload)
        if head.kind != wire.PING:
            self._on_frame(head, [self._receive(spec) for spec in head.specs])

    def _heard(self) -> None:
        self.state.last_rx = now = time.monotonic()
        self.ping_if_due(now)

    def check_alive(self) -> None:
        now = time.monotonic()
        if now - self.state.last_rx > self._dead_after:
            raise ConnectionResetError(f"the RPC peer has been silent for {self._dead_after:g} s "
                                       "(keepalive): it is hung, or its host is unreachable")
        self.ping_if_due(now)

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
                out = recv(self.keepalive)
            except InterruptedError:
                continue                   # a frame's buffers are received by one thread
            except TimeoutError:
                self.check_alive()
                continue
            if not out:
                raise ProtocolError("an empty message in the middle of an RPC payload")
            self._heard()
            return out

    # -- ending ----------------------------------------------------------------------

    def lose(self, exc: BaseException) -> None:
        with self._turn:
            if self.state.over:
                return
            self.state.over = True
            self._turn.notify_all()
        if self._relay is not None:
            self._relay.unpark()           # the parked reader ends
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
        if self._disowned:
            return
        self._closing = True
        self.ep.close()
        self.wake()                        # a parked reader finds the endpoint closed
        for reader in (self.reader, self._second):
            # (A relaying reader in a handler ends after it, as a pool thread would.)
            if reader is not None and reader is not threading.current_thread() \
                    and reader.ident != self.state.handling:
                reader.join(10)

    def _disown(self) -> None:
        """In a child after fork(): nobody receives, nothing is sent or closed
        (the endpoint refuses anyway); the locks are new."""
        self._disowned = self._closing = self.state.over = True
        self.send_lock = threading.Lock()
        self.turn_lock = threading.Lock()
        self._turn = threading.Condition(self.turn_lock)
        self.state.receiver = None

    @property
    def closing(self) -> bool:
        return self._closing

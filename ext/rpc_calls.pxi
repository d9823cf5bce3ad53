# An RPC Link's two hot loops in C (rdmamsg/rpc/link.py, client.py, server.py):
# a synchronous call that receives its own reply, and a server connection's
# requests (handlers inline, or relaying).  They act on the frames the codec
# covers, received into and sent from per-link buffers, and hand every
# other frame to the Link's general path (Link._dispatch), so what they do
# not do here (out-of-band buffers, errors, PINGs, other
# callers' replies, malformed frames) happens as before.
#
# They share the Link's state and follow its rules: the turn to receive is
# taken and given under the Link's turn lock, frames go out under its send
# lock, and the keepalive times live in its LinkState.
#
# A server with a thread pool relays (``slots``): the reader that receives
# a request hands the reading to the connection's second reader thread,
# parked on a lock (the baton), and runs the handler itself, which saves
# the hand-off to a pool thread that both sides' spinning makes slow to
# schedule.  The pool takes what comes while both are busy.  Counters
# shared between threads (LinkState.idle, Slots.free) change only with the
# GIL held and no Python code in between, so each change is atomic.

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.pythread cimport PyThread_get_thread_ident
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cdef extern from "Python.h":
    # (kwargs NULL: no keyword arguments, and no dict made for none)
    object call_with "PyObject_Call"(object fn, object args, PyObject* kwargs)

import _thread
import threading

GENERAL = object()        #: call(): not taken; nothing was sent (use the general path)
TIMED_OUT = object()      #: call(): the timeout passed (the caller sends the CANCEL)

cdef enum:
    RECV_BUF = 65536 + 1024   # frames up to this long are received into LinkFast.rbuf
    LEND_MAX = 4096           # frames up to this long are sent from the Writer itself


cdef double monotonic() noexcept:
    """time.monotonic(), without a Python call (the same clock)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class LinkState:
    """A Link's receive turn and keepalive times (link._State, with C fields,
    so that the loops below read them without a Python attribute lookup)."""
    cdef public double last_rx, last_tx, ping_tried
    cdef public object receiver
    cdef public bint asked, parked, over
    cdef public int idle                      # relaying: reader threads parked (0 or 1)
    cdef public unsigned long handling        # relaying: the reader running a handler (ident)


cdef class Slots:
    """A server's handler slots (its ``workers``): every plain handler holds
    one while it runs, on the pool or on a relaying reader, so that no more
    than that many run at once."""
    cdef int free, waiting
    cdef object cond

    def __init__(self, int n):
        self.free = n
        self.cond = threading.Condition(threading.Lock())

    cdef inline bint try_take(self):
        if self.free > 0:
            self.free -= 1
            return True
        return False

    def take(self):
        """Wait for a free slot and take it (a pool thread, before a handler)."""
        if self.try_take():
            return
        with self.cond:
            self.waiting += 1
            try:
                while not self.try_take():
                    self.cond.wait()
            finally:
                self.waiting -= 1

    cpdef give(self):
        """Free a slot (after the handler's reply went)."""
        self.free += 1
        if self.waiting:       # a waiter either sees the slot or is in wait(): notified
            with self.cond:
                self.cond.notify()


cdef class LinkFast:
    """The fast paths of one rdmamsg.rpc Link (made by link.fast_path)."""
    cdef object link, send, recv, recv_into
    cdef bytearray rbuf                         # frames are received into this (RECV_BUF)
    cdef Py_ssize_t rlen                        # the last frame's length there
    cdef bytes big                              # or the last frame, when longer
    cdef Py_ssize_t lend_max                    # and sent from self.w up to this size
    cdef LinkState st
    cdef dict pending                           # a client's calls awaiting replies, or None
    cdef object turn_acquire, turn_release, turn_notify, send_acquire, send_release
    cdef Writer w
    cdef Py_ssize_t inline_max
    cdef double keepalive
    cdef Slots slots                            # relaying (a server's pool), or None
    cdef object baton_acquire, baton_release

    def __init__(self, link, Py_ssize_t inline_max, dict pending=None, Slots slots=None):
        self.link, self.st, self.pending, self.slots = link, link._st, pending, slots
        self.inline_max, self.keepalive = inline_max, link._keepalive
        self.send, self.recv, self.recv_into = link.ep.send, link.ep.recv, link.ep.recv_into
        self.rbuf = bytearray(RECV_BUF)
        # (A frame lent at the zero-copy size would stay exported in the
        # registration cache, and the Writer could not grow.)
        self.lend_max = min(LEND_MAX, link.ep.zerocopy_min - 1)
        # Bound once: only link._disown (in a child after fork) replaces the
        # locks, and it ends the link (st.over), which these paths check first.
        turn = link._turn
        self.turn_acquire, self.turn_release, self.turn_notify = (turn.acquire, turn.release,
                                                                  turn.notify_all)
        self.send_acquire, self.send_release = link._send_lock.acquire, link._send_lock.release
        self.w = Writer()
        baton = _thread.allocate_lock()
        baton.acquire()                        # held: released to hand the reading over
        self.baton_acquire, self.baton_release = baton.acquire, baton.release

    # -- shared with Link ------------------------------------------------------------

    cdef inline double ping_due(self, double now):
        return max(self.st.last_tx, self.st.ping_tried) + self.keepalive - now

    cdef int heard(self) except -1:
        """Link._heard: a frame came."""
        cdef double now = monotonic()
        self.st.last_rx = now
        if self.ping_due(now) <= 0:
            self.link._ping_if_due(now)
        return 0

    cdef int send_frame(self) except -1:
        """Link.send for the frame in self.w (no out-of-band buffers)."""
        frame = self.w if self.w.n <= self.lend_max else frame_bytes(self.w)
        self.send_acquire()
        try:
            self.send(frame)
            self.st.last_tx = monotonic()
        finally:
            self.send_release()
        return 0

    cdef bint take_turn(self) except -1:
        """Link.take_turn when nobody receives: become the receiver (False:
        somebody does, or the link is over; the general path waits its turn)."""
        st = self.st
        if st.over:
            return False
        self.turn_acquire()
        try:
            if st.over or st.asked or st.receiver is not None:
                return False
            st.receiver = self
            return True
        finally:
            self.turn_release()

    cdef Frame receive(self, double timeout):
        """The next frame, parsed (raw() has its bytes).  Raises what recv raises."""
        try:
            self.rlen = self.recv_into(self.rbuf, timeout)
        except ValueError:                     # longer than rbuf (it stays queued)
            self.big = self.recv(timeout)
            return parse(PyBytes_AS_STRING(self.big), PyBytes_GET_SIZE(self.big))
        self.big = None
        return parse(PyByteArray_AS_STRING(self.rbuf), self.rlen)

    cdef bytes raw(self):
        """The frame receive() parsed last, for the general path (before
        this thread receives again, or hands the reading over)."""
        if self.big is not None:
            return self.big
        return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self.rbuf), self.rlen)

    cdef int give_turn(self) except -1:
        """Link.give_turn(park=lambda: not client._pending)."""
        st = self.st
        self.turn_acquire()
        try:
            st.receiver = None
            st.parked = not self.pending
            if st.asked or not st.parked:
                self.turn_notify()
        finally:
            self.turn_release()
        return 0

    # -- the client's synchronous call ---------------------------------------------

    def call(self, client, uint64_t call_id, name, tuple args, dict kwargs, timeout):
        """Client._call's fast path: send the request and receive frames on
        this thread until its reply comes.  The result; or raises what the
        general path raises (RemoteError, a lost connection's error); or
        GENERAL (nothing sent) or TIMED_OUT (the request went: cancel it)."""
        cdef double deadline = 0
        if type(name) is not str or self.pending is None or self.pending or self.st.over:
            return GENERAL                     # (a lost or inherited client's link is over)
        ms = None
        if timeout is not None:
            deadline = monotonic() + <double>timeout
            ms = max(0, int(timeout * 1000))
        if not self.take_turn():
            return GENERAL
        try:
            # Only the thread whose turn it is uses self.w and self.rbuf.
            if not encode_request(self.w, call_id, name, args, kwargs, ms, self.inline_max):
                return GENERAL
            try:
                self.send_frame()
            except BaseException as exc:
                if client._lost is not None:
                    raise client._down() from exc
                raise
            return self.await_reply(client, call_id, timeout is not None, deadline)
        finally:
            self.give_turn()

    cdef object await_reply(self, client, uint64_t call_id, bint timed, double deadline):
        cdef Frame f
        cdef double now, wait
        link = self.link
        while True:
            now = monotonic()
            wait = self.keepalive
            if timed:
                wait = min(wait, deadline - now)
                if wait <= 0:
                    return TIMED_OUT
            try:
                f = self.receive(max(0.001, min(wait, self.ping_due(now))))
            except InterruptedError:
                continue
            except TimeoutError:
                try:
                    link._check_alive()
                except BaseException as exc:
                    raise self.lose(client, exc)
                continue
            except BaseException as exc:
                raise self.lose(client, exc)
            self.heard()
            if f.kind == REPLY and f.call_id == call_id and f.whole and f.status == OK:
                return f.value
            slot = client._expect(call_id) if f.kind == REPLY and f.call_id == call_id else None
            try:
                link._dispatch(self.raw())  # an error reply, buffers, a PING, another's reply
            except BaseException as exc:
                raise self.lose(client, exc)
            if slot is not None:
                if slot.exc is not None:
                    raise slot.exc
                return slot.result

    cdef object lose(self, client, exc):
        """The connection is lost (as Link.receive_until reports it): the
        error the caller raises."""
        self.link._lost(exc)
        return client._down()

    # -- the server's inline handlers -------------------------------------------------

    def serve(self, conn, dict functions, double timeout):
        """Receive requests and answer them until a frame needs the general
        path (returned: Link._dispatch it) or none comes within ``timeout``
        (None).  Inline handlers run here; with ``slots`` (relaying), a
        handler runs here while the parked reader takes over, and this
        thread then parks until handed the reading again.  Raises what ends
        the connection, as Link._step does."""
        cdef Frame f
        cdef double now
        link = self.link
        while True:
            now = monotonic()
            try:
                f = self.receive(max(0.001, min(timeout, self.ping_due(now))))
            except InterruptedError:
                return None
            except TimeoutError:
                link._check_alive()
                return None
            self.heard()
            if not f.whole or f.kind != REQUEST:
                return self.raw()
            entry = functions.get(f.method)
            if entry is None or entry[1]:
                return self.raw()              # unknown, or runs on the event loop
            if self.slots is None:
                self.answer(conn, f, entry[0])
                continue
            # Expired on arrival, no reader to relay to, or every slot taken:
            # the pool's way (which checks deadlines and cancels).
            if f.ms == 0 or self.st.idle == 0 or not self.slots.try_take():
                return self.raw()
            self.st.idle -= 1
            self.baton_release()
            self.st.handling = PyThread_get_thread_ident()
            try:
                self.answer(conn, f, entry[0])
            finally:
                self.st.handling = 0
                self.slots.give()
            if not self.wait_baton():
                return None

    cdef int answer(self, conn, Frame f, fn) except -1:
        """Run a handler and send its reply (as _Connection._call does)."""
        try:
            # (The args tuple and kwargs dict are new: the handler may have them.)
            result = call_with(fn, f.value, NULL if f.kwargs is None else <PyObject*>f.kwargs)
        except BaseException as exc:           # sent to the caller
            conn._finish(f.call_id, exc=exc)
            return 0
        if not encode_reply(self.w, f.call_id, result, self.inline_max):
            conn._finish(f.call_id, result=result)
        elif not self.link._closing:
            try:
                self.send_frame()
            except OSError:
                pass                           # the connection is gone: recv says so next
        return 0

    # -- relaying --------------------------------------------------------------------

    cdef bint wait_baton(self) except -1:
        # Checking ``over`` and counting this thread idle is one atomic step:
        # Link._lost sets over, then unpark()s whoever is counted.
        if self.st.over:
            return False
        self.st.idle += 1
        self.baton_acquire()                   # (the GIL is released while it waits)
        return not self.st.over

    def park(self):
        """Wait until handed the reading (the second reader thread's start);
        False once the link is over."""
        return self.wait_baton()

    def unpark(self):
        """Wake a parked reader thread (the link is over: it ends)."""
        if self.st.idle > 0:
            self.st.idle -= 1
            self.baton_release()


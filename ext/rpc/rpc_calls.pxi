# An RPC Link's hot loops in C (rdmamsg/rpc/link.py, client.py, server.py):
# a client's calls (a synchronous call that receives its own reply, and
# call_async, whose CallFuture's result() receives the replies itself:
# the Driver of rpc_future.pxi), and a server connection's requests
# (handlers inline, or relaying).  They act on the frames the codec
# covers, received into and sent from per-link buffers, and hand every
# other frame to the Link's general path (Link.dispatch), so what they do
# not do here (out-of-band buffers, errors, PINGs, malformed frames)
# happens as before.
#
# They share the Link's state and follow its rules: the turn to receive is
# taken and given under the Link's turn lock, frames go out under its send
# lock, and the keepalive times live in its LinkState.
#
# A server with a thread pool relays (``slots``): the reader that receives
# a request runs the handler itself, which saves the hand-off to a pool
# thread that both sides' spinning makes slow to schedule.  The
# connection's second reader thread, parked on a lock (the baton), watches
# meanwhile: once the handler has lasted RELAY_AFTER (seen within
# WATCH_EVERY), it takes over the reading, and the first thread parks when
# its handler is done.  A quick handler thus costs no thread switch at
# all.  The pool takes what comes while both are busy.  State shared
# between the threads changes only with the GIL held and no Python code in
# between, so each change is atomic; the watching thread reads it without
# the GIL only as a hint, and checks it again with the GIL before it acts.

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.pythread cimport PyThread_get_thread_ident

cdef extern from "Python.h":
    # (kwargs NULL: no keyword arguments, and no dict made for none)
    object call_with "PyObject_Call"(object fn, object args, PyObject* kwargs)
    Py_ssize_t PY_SSIZE_T_MAX

import os
import weakref
import threading

GENERAL = object()        #: call(): not taken; nothing was sent (use the general path)
TIMED_OUT = object()      #: call(): the timeout passed (the caller sends the CANCEL)

cdef enum:
    RECV_BUF = 65536 + 1024   # frames up to this long are received into LinkFast.rbuf
    LEND_MAX = 4096           # frames up to this long are sent from the Writer itself
    RELAY_AFTER_US = 1000     # a handler this long on a reader: the other one reads
cdef double RELAY_AFTER = RELAY_AFTER_US * 1e-6
cdef double QUIET = 0.1       # no handler on a reader for this long: stop watching
cdef enum:
    # While watching with no handler running, look this often.  (Each look
    # wakes a thread, which on a busy host delays the spinning ones: every
    # 1 ms made pool round trips slower than every 10 ms.)
    WATCH_EVERY_US = 10000


cdef class LinkState:
    """A Link's receive turn and keepalive times (link._State, with C fields,
    so that the loops below read them without a Python attribute lookup)."""
    cdef public double last_rx, last_tx, ping_tried
    cdef public object receiver
    cdef public bint asked, parked, over
    cdef public bint watched                  # a client's calls are awaited by callbacks or wait()
    cdef public bint looped                   # an asyncio loop receives (LinkFast.loop_watch)
    cdef public int idle                      # relaying: reader threads parked (0 or 1)
    cdef public unsigned long handling        # relaying: the reader running a handler (ident)


cdef class ClientPort:
    """What a Client gives its LinkFast (bind): whether its connection is
    lost, and its general path for what C does not cover.  The callables
    hold the client weakly."""
    cdef public bint lost            # set (before its calls fail) once the connection is lost
    cdef public object down          # (): the error a call raises once lost
    cdef public object timed_out     # (call_id, name, timeout): cancel the call; raises TimeoutError
    cdef public object general_call  # (name, args, kwargs, timeout): Client.call's general path
    cdef public object submit        # (name, args, kwargs, timeout): call_async's general path
    cdef public object expire_after  # (call_id, name, timeout): fail a call after timeout
    cdef public object expire_calls_at  # (when): call due_calls() then
    cdef public object expect        # (call_id): a slot for a reply the general path takes


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


cdef class LinkFast(Driver):
    """The fast paths of one rdmamsg.rpc Link (made by link.fast_path)."""
    cdef object link, send, recv, recv_into, ready
    cdef object reader                          # the link's reader thread
    cdef const EngineApi *api                   # the endpoint's engine in C, or NULL
    cdef object eng                             # (that engine)
    cdef Py_ssize_t direct_max                  # frames below this go through api.send
    cdef bytearray rbuf                         # frames are received into this (RECV_BUF)
    cdef Frame fr                               # and parsed into this
    cdef Py_ssize_t rlen                        # the last frame's length there
    cdef bytes big                              # or the last frame, when longer
    cdef Py_ssize_t lend_max                    # and sent from self.w up to this size
    cdef LinkState st
    cdef dict pending                           # a client's calls awaiting replies, or None
    cdef Completions comp                       # and their futures' (CallFuture), or None
    cdef Deadlines deadlines                    # and call_async's deadlines
    cdef Lock turn_lock, send_lock
    cdef object turn_notify
    cdef Writer w                               # the receiving thread's frames
    cdef Writer sw                              # send_request's (under the send lock)
    cdef Py_ssize_t inline_max
    cdef double keepalive
    cdef Slots slots                            # relaying (a server's pool), or None
    cdef PyThread_type_lock baton               # relaying: the parked reader waits on it
    cdef double since                           # relaying: when a reader's handler began (0: none)
    cdef double last_start                      # relaying: when the last one began
    cdef bint watching                          # relaying: the parked reader watches it
    cdef bint handed                            # relaying: and has taken over the reading
    cdef object client                          # a client's Client (a weak reference), or None
    cdef ClientPort port                        # and what it gives us
    cdef uint64_t last_id                       # a client's last call id
    cdef object loop                            # the asyncio loop that receives, or None
    cdef unsigned long loop_thread              # and its thread
    cdef bint looking                           # on_readable runs
    cdef int loop_fd                            # the fd it watches (a dup of the endpoint's)
    cdef object ep_poll                         # the endpoint's poll()

    def __init__(self, link, Py_ssize_t inline_max, dict pending=None, Slots slots=None):
        self.link, self.st, self.pending, self.slots = link, link.state, pending, slots
        self.inline_max, self.keepalive = inline_max, link.keepalive
        self.send, self.recv, self.recv_into = link.ep.send, link.ep.recv, link.ep.recv_into
        self.ep_poll, self.loop_fd = link.ep.poll, -1
        self.ready, self.reader = link.ep.pending, link.reader
        if pending is not None:
            self.comp = Completions(None, self.watch_calls, self)
            self.comp.on_loop_watch = self.loop_watch
            self.deadlines = Deadlines()
        self.find_engine(link.ep)
        self.rbuf = bytearray(RECV_BUF)
        self.fr = Frame.__new__(Frame)
        # (A frame lent at the zero-copy size would stay exported in the
        # registration cache, and the Writer could not grow.)
        self.lend_max = min(LEND_MAX, link.ep.zerocopy_min - 1)
        # Link makes them rdmamsg Locks, taken here in C.  Bound once: only
        # link._disown (in a child after fork) replaces the locks, and it ends
        # the link (st.over), which these paths check first.
        self.turn_lock, self.send_lock = link.turn_lock, link.send_lock
        self.turn_notify = link.notify_turn
        self.w = Writer()
        self.sw = Writer()
        self.baton = PyThread_allocate_lock()
        if self.baton == NULL:
            raise MemoryError()
        PyThread_acquire_lock_timed(self.baton, 0, 0)   # held: released to wake the parked reader

    def __dealloc__(self):
        if self.baton != NULL:
            PyThread_free_lock(self.baton)

    cdef int find_engine(self, ep) except -1:
        """Call the Cython engine behind ``ep`` in C, if its send and
        recv_into are the engine's own (not a subclass's)."""
        try:
            from rdmamsg.transport import _cpoller
        except ImportError:
            return 0
        eng = getattr(ep, "engine", None)
        if type(eng) is _cpoller.Engine and self.send == eng.send \
                and self.recv_into == eng.recv_into:
            self.api = <const EngineApi *>PyCapsule_GetPointer(_cpoller.API, ENGINE_API)
            self.eng = eng
            self.sleepers = self.api.gil_waiters
            # (From zerocopy_min on, a send is made from the caller's memory.)
            self.direct_max = ep.zerocopy_min if ep.zerocopy_min > 0 else PY_SSIZE_T_MAX
        return 0

    # -- shared with Link ------------------------------------------------------------

    cdef inline double ping_due(self, double now):
        return max(self.st.last_tx, self.st.ping_tried) + self.keepalive - now

    cdef double heard(self) except? -1:
        """Link._heard: a frame came.  The time."""
        cdef double now = mono()
        self.st.last_rx = now
        if self.ping_due(now) <= 0:
            self.link.ping_if_due(now)
        return now

    cdef int send_frame(self) except -1:
        """Link.send for the frame in self.w (no out-of-band buffers)."""
        self.send_lock.take()
        try:
            self.send_locked(self.w)
        finally:
            self.send_lock.give()
        return 0

    cdef int send_locked(self, Writer w) except -1:
        """Send the frame in ``w``; the send lock is held.  1 if the send may
        have handled completions (it waited for room), else 0."""
        cdef int polled = 1
        if self.api != NULL and w.n < self.direct_max:
            polled = self.api.send(<PyObject *>self.eng, <const char *>w.buf, w.n)
        else:
            self.send(w if w.n <= self.lend_max else frame_bytes(w))
        self.st.last_tx = mono()
        return polled

    def send_request(self, uint64_t call_id, str name, tuple args, dict kwargs, timeout):
        """Link.send of wire.encode_request's frame, encoded here in C, from
        any thread (Client.call_async, and callers while another receives).
        False, with nothing sent, for a request outside the codec's subset."""
        return self.send_request_c(call_id, name, args, 0, kwargs, timeout)

    cdef bint send_request_c(self, uint64_t call_id, str name, tuple args, Py_ssize_t skip,
                             dict kwargs, timeout) except -1:
        """send_request, with the request's arguments from ``args[skip:]``."""
        cdef int polled
        ms = None if timeout is None else max(0, int(timeout * 1000))
        self.send_lock.take()
        try:
            # (self.sw is used only under the send lock.)
            if not encode_request(self.sw, call_id, name, args, skip, kwargs, ms,
                                  self.inline_max):
                return False
            polled = self.send_locked(self.sw)
        finally:
            self.send_lock.give()
        if polled and self.st.looped:
            self.kick_loop()               # it may have taken arrivals the fd announced
        return True

    cdef bint take_turn(self) except -1:
        """Link.take_turn when nobody receives: become the receiver (False:
        somebody does, or the link is over; the general path waits its turn)."""
        st = self.st
        if st.over:
            return False
        self.turn_lock.take()
        try:
            if st.over or st.asked or st.receiver is not None:
                return False
            st.receiver = self
            return True
        finally:
            self.turn_lock.give()

    cdef Frame receive(self, double timeout):
        """The next frame, parsed into self.fr (raw() has its bytes).  Raises
        what recv raises.  Only the receiving thread reads self.fr, and only
        until it receives again or the other reader may take over."""
        try:
            if self.api != NULL:
                self.rlen = self.api.recv_into(<PyObject *>self.eng,
                                               PyByteArray_AS_STRING(self.rbuf), RECV_BUF, timeout)
            else:
                self.rlen = self.recv_into(self.rbuf, timeout)
        except ValueError:                     # longer than rbuf (it stays queued)
            self.big = self.recv(timeout)
            parse_into(self.fr, PyBytes_AS_STRING(self.big), PyBytes_GET_SIZE(self.big))
            return self.fr
        self.big = None
        parse_into(self.fr, PyByteArray_AS_STRING(self.rbuf), self.rlen)
        return self.fr

    cdef bytes raw(self):
        """The frame receive() parsed last, for the general path (before
        this thread receives again, or hands the reading over)."""
        if self.big is not None:
            return self.big
        return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self.rbuf), self.rlen)

    cdef int give_turn(self) except -1:
        """End this thread's turn.  The reader stays parked unless callbacks
        or wait() watch pending calls (Link.give_turn's ``park``); a thread
        asleep on a call that nobody receives for now is woken to receive."""
        st = self.st
        self.turn_lock.take()
        try:
            st.receiver = None
            st.parked = not (st.watched and self.pending)
            if st.asked or not st.parked:
                self.turn_notify()
        finally:
            self.turn_lock.give()
        if self.pending and self.comp is not None:
            self.comp.wake_one()
            if st.looped and not self.looking:
                self.kick_loop()
        return 0

    # -- the client's synchronous call ---------------------------------------------

    def bind(self, client, ClientPort port):
        """Client.call and Client.call_async in C, for ``client`` (held
        weakly: a dropped client still warns and closes; its ``timeout`` is
        read per call), with ``port``.  Their ids come from next_id()."""
        self.client, self.port = weakref.ref(client), port
        return self.client_call, self.client_call_async

    def next_id(self):
        """A new call id (for the general path too: one sequence per link)."""
        self.last_id += 1
        return self.last_id

    def client_call(self, *args, **kwargs):
        """Client.call(name, *args, **kwargs): the fast path, else the general one."""
        client = self.client()
        if client is None:
            raise ConnectionAbortedError("the RPC client was dropped without close()")
        if not args:
            raise TypeError("call() needs the method's name")
        cdef uint64_t call_id
        name, timeout = args[0], client.timeout
        if type(name) is str:
            self.last_id += 1
            call_id = self.last_id
            out = self.call_c(call_id, name, args, 1, kwargs, timeout)
            if out is TIMED_OUT:
                self.port.timed_out(call_id, name, timeout)         # raises
            if out is not GENERAL:
                return out
        return self.port.general_call(name, args[1:], kwargs, timeout)

    def call(self, uint64_t call_id, name, tuple args, dict kwargs, timeout):
        """Client._call's fast path: send the request and receive frames on
        this thread until its reply comes.  The result; or raises what the
        general path raises (RemoteError, a lost connection's error); or
        GENERAL (nothing sent) or TIMED_OUT (the request went: cancel it)."""
        if type(name) is not str:
            return GENERAL
        return self.call_c(call_id, name, args, 0, kwargs, timeout)

    cdef object call_c(self, uint64_t call_id, str name, tuple args, Py_ssize_t skip,
                       dict kwargs, timeout):
        """call(), with the request's arguments from ``args[skip:]``."""
        cdef double deadline = 0
        if self.pending is None or self.st.over:
            return GENERAL                     # (a lost or inherited client's link is over)
        ms = None
        if timeout is not None:
            deadline = mono() + <double>timeout
            ms = max(0, int(timeout * 1000))
        if self.pending or not self.take_turn():
            return self.call_beside(call_id, name, args, skip, kwargs, timeout,
                                    -1 if timeout is None else deadline)
        try:
            # Only the thread whose turn it is uses self.w and self.rbuf.
            if not encode_request(self.w, call_id, name, args, skip, kwargs, ms, self.inline_max):
                return GENERAL
            try:
                self.send_frame()
            except BaseException as exc:
                if self.port.lost:
                    raise self.port.down() from exc
                raise
            return self.await_reply(call_id, timeout is not None, deadline)
        finally:
            self.give_turn()

    cdef object call_beside(self, uint64_t call_id, str name, tuple args,
                            Py_ssize_t skip, dict kwargs, timeout, double deadline):
        """call_c while other calls are in flight: sent as call_async sends,
        then waited for as CallFuture.result waits (until ``deadline``, -1:
        none): this thread receives if nobody else does."""
        fut = self.submit(call_id, name, args, skip, kwargs, timeout)
        if fut is GENERAL:
            return GENERAL
        cdef CallFutureBase f = <CallFutureBase>fut
        self.comp.wait_for(f, deadline)
        if not f.is_done():
            self.pending.pop(call_id, None)    # (a late reply is dropped)
            return TIMED_OUT
        if f._exception is not None:
            raise f._exception
        return f._result

    # -- a client's futures -----------------------------------------------------------

    @property
    def completions(self):
        """What this client's futures share (rpc_future.pxi's Completions)."""
        return self.comp

    def new_future(self):
        """A pending CallFuture (the general path's call_async sets its call_id)."""
        return new_future(self.comp, 0)

    def client_call_async(self, *args, **kwargs):
        """Client.call_async(name, *args, **kwargs): sent here in C unless
        the codec does not cover it (the general path)."""
        client = self.client()
        if client is None:
            raise ConnectionAbortedError("the RPC client was dropped without close()")
        if not args:
            raise TypeError("call_async() needs the method's name")
        name, timeout = args[0], client.timeout
        if type(name) is str:
            fut = self.submit(0, name, args, 1, kwargs, timeout)
            if fut is not GENERAL:
                if timeout is not None:
                    self.expire_after(<CallFutureBase>fut, name, timeout)
                return fut
        return self.port.submit(name, args[1:], kwargs, timeout)

    cdef int expire_after(self, CallFutureBase fut, str name, timeout) except -1:
        """Fail ``fut`` with TimeoutError after ``timeout`` (kept in C while
        timeouts stay the same: the client looks when the first falls due)."""
        fut.method, fut.timeout = name, timeout
        if not self.deadlines.add(fut.call_id, mono() + fut.timeout, self.pending):
            self.port.expire_after(fut.call_id, name, timeout)
        elif not self.deadlines.armed:
            self.deadlines.armed = True
            self.port.expire_calls_at(mono() + fut.timeout)
        return 0

    def due_calls(self):
        """Deadlines.due, for the client's deadline thread."""
        return self.deadlines.due(self.pending)

    cdef object submit(self, uint64_t call_id, str name, tuple args, Py_ssize_t skip,
                       dict kwargs, timeout):
        """Send a request whose reply a new CallFuture receives (0: a new call
        id); GENERAL, with nothing sent, outside the codec's subset.  Nobody
        is woken: whoever waits for the future receives the reply (drive),
        or asks the reader to (watch)."""
        if call_id == 0:
            self.last_id += 1
            call_id = self.last_id
        fut = new_future(self.comp, call_id)
        # (Checked and added with the GIL held: the client sets port.lost
        # before it takes the pending calls, so a call is failed or refused.)
        if self.port.lost:
            raise self.port.down()
        self.pending[call_id] = fut
        try:
            sent = self.send_request_c(call_id, name, args, skip, kwargs, timeout)
        except BaseException as exc:
            self.pending.pop(call_id, None)
            if self.port.lost:
                raise self.port.down() from exc
            raise
        if not sent:
            self.pending.pop(call_id, None)
            return GENERAL
        return fut

    def watch_calls(self):
        """Somebody awaits a call other than through result() (a callback,
        wait(), as_completed(), done()): the reader receives while calls
        are pending."""
        st = self.st
        self.turn_lock.take()
        try:
            st.watched = True
            if st.parked:
                st.parked = False
                self.turn_notify()
        finally:
            self.turn_lock.give()

    cdef bint drive(self, CallFutureBase fut, double deadline) except -1:
        """Receive replies on this thread until ``fut`` is done or
        ``deadline`` passes, if nobody else receives, or only the reader
        (which steps aside).  False when another caller receives."""
        st = self.st
        if st.over:
            return False
        if not self.take_turn():
            # Only the reader is asked to step aside, and only when it
            # receives for orphaned replies: watched calls keep it receiving
            # anyway.  (And the reader itself, in a callback, must not ask.)
            if st.receiver is not self.reader or st.watched or \
                    self.reader.ident == PyThread_get_thread_ident():
                return False
            if not self.link.take_turn():
                return False
        try:
            self.receive_for(fut, deadline)
        finally:
            self.give_turn()
        return True

    cdef int receive_for(self, CallFutureBase fut, double deadline) except -1:
        """drive()'s loop: a lost connection is reported as the reader
        reports it (Link.lose fails every pending call, ``fut`` too)."""
        cdef Frame f
        cdef double now = mono(), wait
        link = self.link
        while not fut.is_done():
            wait = self.keepalive
            if deadline >= 0:
                wait = min(wait, deadline - now)
                if wait <= 0:
                    return 0
            try:
                f = self.receive(max(0.001, min(wait, self.ping_due(now))))
            except InterruptedError:
                return 0                       # asked to step aside (Link.take_turn)
            except TimeoutError:
                try:
                    link.check_alive()
                except BaseException as exc:
                    link.lose(exc)
                    return 0
                now = mono()
                continue
            except BaseException as exc:
                link.lose(exc)
                return 0
            self.heard()
            try:
                frame = self.take_replies(f, wait)
                if frame is not None:
                    link.dispatch(frame)
            except BaseException as exc:
                link.lose(exc)
                return 0
            now = mono()
        return 0

    cdef object take_replies(self, Frame f, double timeout):
        """Complete the calls whose replies are ``f`` and the frames already
        there behind it, then wake the threads asleep on them: one wake-up
        each per batch.  Returns the first frame the codec does not cover
        (for Link.dispatch), or None."""
        later = []
        try:
            while True:
                if f.kind != REPLY or not f.whole or f.status != OK:
                    return self.raw()
                self.complete(f, later)
                if not self.ready():
                    return None
                try:
                    f = self.receive(max(0.001, min(timeout, self.ping_due(mono()))))
                except (InterruptedError, TimeoutError):
                    return None
                self.heard()
        finally:
            self.finish_batch(later)

    cdef int finish_batch(self, list later) except -1:
        """After complete(): wake the threads asleep on the calls completed,
        then run the callbacks of those in ``later``."""
        self.comp.notify()
        for fut in later:
            (<CallFutureBase>fut).run_callbacks()
        return 0

    cdef int complete(self, Frame f, list later) except -1:
        """Complete the call whose OK reply is ``f`` (if it is still pending),
        without waking its sleeper (wake_done does) or running its callbacks
        (it joins ``later``)."""
        cdef CallFutureBase fut
        cdef bint done
        # (Popped with the GIL held, so atomic against the client's own pops:
        # each call is completed once.)
        holder = self.pending.pop(f.call_id, None)
        value, f.value = f.value, None
        if isinstance(holder, CallFutureBase):
            fut = <CallFutureBase>holder
            self.comp.take()
            try:
                done = self.comp.settle(fut, value, None)
            finally:
                self.comp.give()
            if done and fut._done_callbacks:
                later.append(fut)
        elif holder is not None:
            try:
                holder.set_result(value)
            except InvalidStateError:
                pass                           # cancelled meanwhile: dropped
        return 0

    cdef object await_reply(self, uint64_t call_id, bint timed, double deadline):
        cdef Frame f
        cdef double now = self.st.last_tx, wait     # (send_frame just read the clock)
        link = self.link
        while True:
            wait = self.keepalive
            if timed:
                wait = min(wait, deadline - now)
                if wait <= 0:
                    return TIMED_OUT
            try:
                f = self.receive(max(0.001, min(wait, self.ping_due(now))))
            except InterruptedError:
                now = mono()
                continue
            except TimeoutError:
                try:
                    link.check_alive()
                except BaseException as exc:
                    raise self.lose(exc)
                now = mono()
                continue
            except BaseException as exc:
                raise self.lose(exc)
            now = self.heard()
            if f.kind == REPLY and f.whole and f.status == OK:
                if f.call_id == call_id:
                    value, f.value = f.value, None     # (the frame is reused: not kept alive)
                    return value
                later = []                     # another call's reply (call_beside)
                self.complete(f, later)
                self.finish_batch(later)
                continue
            slot = self.port.expect(call_id) if f.kind == REPLY and f.call_id == call_id else None
            try:
                link.dispatch(self.raw())  # an error reply, buffers, a PING, another's reply
            except BaseException as exc:
                raise self.lose(exc)
            if slot is not None:
                if slot.exc is not None:
                    raise slot.exc
                return slot.result

    def wake(self):
        """Link.wake in C: unpark the reader (a reply is awaited that no
        caller receives)."""
        st = self.st
        self.turn_lock.take()
        try:
            if st.parked:
                st.parked = False
                self.turn_notify()
        finally:
            self.turn_lock.give()

    def collect(self, double timeout):
        """Link's serve() for a client's reader: receive frames and complete
        the pending calls whose replies the codec covers, waiting up to
        ``timeout`` for the first frame and then taking only those already
        there, so that a batch of replies costs one wake-up.  Parks the
        reader once no call is pending.  Returns a frame the general path
        must take (Link.dispatch), or None."""
        cdef Frame f
        try:
            f = self.receive(max(0.001, min(timeout, self.ping_due(mono()))))
        except InterruptedError:
            return None
        except TimeoutError:
            self.link.check_alive()
            return None
        self.heard()
        frame = self.take_replies(f, timeout)
        st = self.st
        if not self.pending or st.looped:
            self.turn_lock.take()
            try:
                # (Under the turn lock, as watch_calls() sets them: a call awaited
                # meanwhile is in ``pending`` already.)
                if not self.pending or st.looped:
                    st.parked, st.watched = True, False
            finally:
                self.turn_lock.give()
        return frame

    def awaited(self):
        """Calls whose replies nobody receives unless the parked reader does
        (Link.start's ``awaited``): none while a loop receives them."""
        return 0 if self.st.looped else len(self.pending)

    # -- an asyncio loop receives (AsyncClient) ------------------------------------------

    def loop_watch(self, loop):
        """Futures awaited on ``loop`` (the running one) get their replies
        from it: it watches the endpoint and receives whatever is there when
        that is readable (on_readable), so that a batch of replies costs it
        one wake-up and no thread hands it the GIL.  The reader stays parked
        but for PINGs.  False while another loop does (the caller watches as
        before)."""
        if self.loop is loop:
            return True
        if self.loop is not None or self.st.over:
            return False
        # A dup: closing the endpoint (on any thread) cannot leave the loop
        # watching a number that another file may take.
        fd = os.dup(self.link.ep.fileno())
        try:
            loop.add_reader(fd, self.on_readable)
        except BaseException:
            os.close(fd)
            raise
        self.loop, self.loop_fd, self.loop_thread = loop, fd, PyThread_get_thread_ident()
        self.st.looped = True
        self.link.after_progress(self.kick_loop)
        loop.call_soon(self.on_readable)       # replies there already
        return True

    def on_readable(self):
        """The loop's turn: receive and complete what is there, without
        waiting; a frame the codec does not cover is dispatched here (its
        buffers, if any, are received before the loop goes on)."""
        cdef Frame f
        if self.st.over:
            self.loop_unwatch()
            return
        if not self.take_turn():
            return                             # another receives; kick_loop follows
        link = self.link
        self.looking = True
        try:
            while self.ready() or self.ep_poll():
                f = self.receive(0.0)
                self.heard()
                frame = self.take_replies(f, 0.0)
                if frame is not None:
                    link.dispatch(frame)
        except (TimeoutError, InterruptedError):
            pass                               # (asked to step aside: the asker receives)
        except BaseException as exc:           # (the lost connection's error reaches the calls)
            link.lose(exc)
        finally:
            self.give_turn()
            self.looking = False
        if self.st.over:
            self.loop_unwatch()

    def kick_loop(self):
        """Have the loop look soon: a thread may have taken the fd's
        readiness (its turn to receive ended, or it sent, which can poll)."""
        loop = self.loop
        if loop is None or not (self.pending or self.st.over):
            return
        if PyThread_get_thread_ident() == self.loop_thread:
            loop.call_soon(self.on_readable)
            return
        try:
            loop.call_soon_threadsafe(self.on_readable)
        except RuntimeError:                   # the loop is closed
            self.loop_unwatch()

    def loop_unwatch(self):
        """The loop stops receiving (on its thread, or once it is closed);
        the reader receives for awaited calls again."""
        loop, self.loop = self.loop, None
        if loop is None:
            return
        self.st.looped = False
        self.link.after_progress(None)
        fd, self.loop_fd = self.loop_fd, -1
        try:
            if not loop.is_closed():
                loop.remove_reader(fd)
        finally:
            os.close(fd)
        self.wake()

    def loop_unwatch_soon(self):
        """loop_unwatch from any thread (the client closes, or its connection
        is lost)."""
        loop = self.loop
        if loop is None:
            return
        if PyThread_get_thread_ident() == self.loop_thread:
            self.loop_unwatch()
            return
        try:
            loop.call_soon_threadsafe(self.loop_unwatch)
        except RuntimeError:                   # the loop is closed
            self.loop_unwatch()

    cdef object lose(self, exc):
        """The connection is lost (as Link.receive_until reports it): the
        error the caller raises."""
        self.link.lose(exc)
        return self.port.down()

    # -- the server's inline handlers -------------------------------------------------

    def serve(self, finish, dict functions, double timeout):
        """Receive requests and answer them until a frame needs the general
        path (returned: Link.dispatch it) or none comes within ``timeout``
        (None).  Inline handlers run here; with ``slots`` (relaying), a
        handler runs here too, and if the parked reader took over the
        reading meanwhile, this thread parks in its place.  Raises what ends
        the connection, as Link._step does."""
        cdef Frame f
        cdef double now
        link = self.link
        while True:
            now = mono()
            try:
                f = self.receive(max(0.001, min(timeout, self.ping_due(now))))
            except InterruptedError:
                return None
            except TimeoutError:
                link.check_alive()
                return None
            now = self.heard()
            if not f.whole or f.kind != REQUEST:
                return self.raw()
            entry = functions.get(f.method)
            if entry is None or entry[1]:
                return self.raw()              # unknown, or runs on the event loop
            if self.slots is None:
                self.answer(finish, f, entry[0])
                continue
            # Expired on arrival, no reader to relay to, or every slot taken:
            # the pool's way (which checks deadlines and cancels).
            if f.ms == 0 or self.st.idle == 0 or not self.slots.try_take():
                return self.raw()
            # (Set before ``watching`` is read: the parked reader stops
            # watching only while no handler runs, and none began lately.)
            self.since = self.last_start = now
            if not self.watching:
                self.watching = True
                PyThread_release_lock(self.baton)      # the parked reader: watch
            self.st.handling = PyThread_get_thread_ident()
            try:
                self.answer(finish, f, entry[0])
            finally:
                self.since = 0
                self.st.handling = 0
                self.slots.give()
            if self.handed:                    # the other reader reads now: park
                self.handed = False
                if not self.park_c():
                    return None

    cdef int answer(self, finish, Frame f, fn) except -1:
        """Run a handler and send its reply (as _Connection._call does);
        ``finish(call_id, result=, exc=)`` sends what the codec does not cover."""
        # Taken from the frame first: relaying, the other reader may parse
        # the next frame into it while the handler runs.
        cdef uint64_t call_id = f.call_id
        args, kwargs = f.value, f.kwargs
        f.value = f.kwargs = None
        try:
            # (The args tuple and kwargs dict are new: the handler may have them.)
            result = call_with(fn, args, NULL if kwargs is None else <PyObject*>kwargs)
        except BaseException as exc:           # sent to the caller
            finish(call_id, exc=exc)
            return 0
        args = kwargs = None
        if not encode_reply(self.w, call_id, result, self.inline_max):
            finish(call_id, result=result)
        elif not self.link.closing:
            try:
                self.send_frame()
            except OSError:
                pass                           # the connection is gone: recv says so next
        return 0

    # -- relaying --------------------------------------------------------------------

    cdef bint park_c(self) except -1:
        """Park this reader thread until the other one's handler lasts
        RELAY_AFTER: then take over the reading (True).  False once the link
        is over."""
        cdef int why
        st = self.st
        # Checking ``over`` and counting this thread idle is one atomic step:
        # Link.lose sets over, then unpark()s whoever is counted.
        if st.over:
            return False
        st.idle += 1
        while True:
            with nogil:
                why = self.watch()
            if st.over:
                return False
            if why == 2:
                if self.since != 0 and not self.handed and mono() - self.since >= RELAY_AFTER:
                    self.handed = True
                    st.idle -= 1
                    return True
            elif why == 3:
                if self.since == 0 and mono() - self.last_start > QUIET:
                    self.watching = False

    cdef int watch(self) noexcept nogil:
        """Wait on the baton; while watching, also look every WATCH_EVERY
        for a running handler, and if there is one, look again when it would
        have lasted RELAY_AFTER.  (Only twice per WATCH_EVERY: chasing each
        new handler would wake this thread as often as quick ones come.)
        1: the baton came (the link is over, or watching begins); 2: a
        handler seems to have lasted; 3: watching seems no longer needed."""
        cdef double since, left, chasing = 0
        cdef long long us
        while True:
            us = -1
            if self.watching:
                since = self.since
                us = WATCH_EVERY_US
                if chasing != 0:
                    if since == chasing:
                        return 2               # the same handler, RELAY_AFTER on
                    chasing = 0                # it ended: look again later
                elif since != 0:
                    left = since + RELAY_AFTER - mono()
                    if left <= 0:
                        return 2
                    chasing = since
                    us = <long long>(left * 1e6) + 1
            if PyThread_acquire_lock_timed(self.baton, us, 0) == PY_LOCK_ACQUIRED:
                return 1
            if self.since == 0 and mono() - self.last_start > QUIET:
                return 3

    def park(self):
        """Park until handed the reading (the second reader thread's start);
        False once the link is over."""
        return self.park_c()

    def unpark(self):
        """Wake a parked reader thread (the link is over: it ends)."""
        if self.st.idle > 0:
            self.st.idle -= 1
            PyThread_release_lock(self.baton)

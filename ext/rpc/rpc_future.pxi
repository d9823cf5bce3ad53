# A client call's Future (Client.call_async), made and completed in C.
#
# CallFuture is a concurrent.futures.Future, so that wait(), as_completed()
# and asyncio.wrap_future take it, but it is made without Future.__init__
# (whose Condition costs more than the rest of a call under TCG) and its
# methods are C.  The futures of one client share a Completions: the
# reentrant lock that is each one's ``_condition`` (which wait() and
# as_completed() take while they install their waiters, so a completion
# holds it too), the client's Driver, and the threads asleep in result()
# or exception(), each on a lock of its own.
#
# result() receives the replies itself when no other thread does
# (Driver.drive), and else sleeps.  Whoever receives completes a batch of
# replies, then wakes the sleepers whose futures are done (one wake-up
# each, none for the others); when it stops receiving, it wakes one
# sleeper to receive in its place.  rdmamsg/rpc/link.py tells the whole
# progress model.
#
# Future's own code reads the state by these names (``_state``,
# ``_result``, ``_waiters``...), so CallFuture keeps them, with its
# states; wait() and as_completed() rely on them.
#
# Everything here runs with the GIL held, except a sleeper's wait.

from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport PyObject
from libc.stdlib cimport malloc, free

import asyncio
import concurrent.futures
from concurrent.futures import _base as _futures   # Future's states and logger

cdef object PENDING = _futures.PENDING
cdef object RUNNING = _futures.RUNNING
cdef object CANCELLED = _futures.CANCELLED
cdef object CANCELLED_AND_NOTIFIED = _futures.CANCELLED_AND_NOTIFIED
cdef object FINISHED = _futures.FINISHED
cdef object CancelledError = concurrent.futures.CancelledError
cdef object FutureTimeoutError = concurrent.futures.TimeoutError
cdef object InvalidStateError = concurrent.futures.InvalidStateError


cdef class CallFutureBase

cdef extern from *:
    """
    static inline void rdmamsg_count(int *p, int v) {
        if (p) __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL);
    }
    """
    void count_waiter "rdmamsg_count"(int *p, int v) nogil


cdef class Driver:
    """What receives replies for a client's futures on the waiting thread
    (its LinkFast): drive() receives until ``fut`` is done or ``deadline``
    (-1: none) passes, and is False, having done nothing, when another
    thread receives (the waiter sleeps: that one completes its future, or
    wakes it to receive in its place).  ``sleepers``: a count to join while
    asleep (the engine's GIL waiters, EngineApi.gil_waiters), or NULL."""
    cdef int *sleepers

    cdef bint drive(self, CallFutureBase fut, double deadline) except -1:
        return False


cdef struct Sleeper:
    PyThread_type_lock lk          # held; released to wake the thread
    PyObject *fut                  # the future it waits for (the thread holds a reference)
    Sleeper *prev
    Sleeper *next
    bint linked


cdef class Completions:
    """What the futures of one client share (see above).  ``on_cancel(call_id)``:
    a future was cancelled.  ``on_watch()``: somebody waits for a future
    other than through result() or exception() (a callback, wait(),
    as_completed(), done()): replies must be received for them.
    ``on_loop_watch(loop)``: a future is awaited on ``loop``, which may
    receive the replies itself (True) rather than have them received for it."""
    cdef PyThread_type_lock lk
    cdef unsigned long owner
    cdef Py_ssize_t depth
    cdef Sleeper *sleepers
    cdef public object on_cancel, on_watch, on_loop_watch
    cdef Driver driver
    cdef object aio_loop                    # the asyncio loop futures are completed on
    cdef unsigned long aio_thread           # and its thread
    cdef list aio_done                      # futures done whose loop is yet to hear

    def __cinit__(self):
        self.lk = PyThread_allocate_lock()
        if self.lk == NULL:
            raise MemoryError()

    def __init__(self, on_cancel=None, on_watch=None, Driver driver=None):
        self.on_cancel, self.on_watch, self.driver = on_cancel, on_watch, driver
        self.aio_done = []

    def __dealloc__(self):
        if self.lk != NULL:
            if self.depth:
                PyThread_release_lock(self.lk)
            PyThread_free_lock(self.lk)

    # -- the reentrant lock (each future's _condition) ----------------------------

    cdef bint take_within(self, double timeout) except -1:
        cdef unsigned long me = PyThread_get_thread_ident()
        if self.depth and self.owner == me:
            self.depth += 1
            return True
        if PyThread_acquire_lock_timed(self.lk, 0, 0) != PY_LOCK_ACQUIRED:
            if timeout == 0 or not acquire_within(self.lk, timeout):
                return False
        self.owner, self.depth = me, 1
        return True

    cdef inline int take(self) except -1:
        self.take_within(-1)
        return 0

    cdef inline void give(self) noexcept:
        self.depth -= 1
        if self.depth == 0:
            self.owner = 0
            PyThread_release_lock(self.lk)

    def acquire(self, bint blocking=True, double timeout=-1):
        """As threading.RLock's.  (wait() and as_completed() take each
        future's lock this way: they will wait for replies.)"""
        if self.on_watch is not None:
            self.on_watch()
        if not blocking:
            if timeout != -1:
                raise ValueError("can't specify a timeout for a non-blocking call")
            timeout = 0
        elif timeout < 0 and timeout != -1:
            raise ValueError("timeout value must be a non-negative number")
        return self.take_within(timeout)

    def release(self):
        if self.depth == 0 or self.owner != PyThread_get_thread_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self.give()

    def __enter__(self):
        return self.take_within(-1)

    def __exit__(self, *exc):
        self.release()

    # -- completing ---------------------------------------------------------------

    cdef bint settle(self, CallFutureBase fut, result, exc) except -1:
        """Complete ``fut`` with ``result`` or ``exc`` (the lock held); False
        if it was cancelled or completed before."""
        if fut._state is not PENDING and fut._state is not RUNNING:
            return False
        if exc is not None:
            fut._exception = exc
        else:
            fut._result = result
        fut._state = FINISHED
        if fut.aio is not None:
            self.aio_done.append(fut)
        if fut._waiters:                       # wait() or as_completed() watch it
            for waiter in fut._waiters:
                if exc is not None:
                    waiter.add_exception(fut)
                else:
                    waiter.add_result(fut)
        return True

    cdef int complete(self, CallFutureBase fut, result, exc) except -1:
        """Future.set_result or set_exception: InvalidStateError if it is
        done already."""
        self.take()
        try:
            if not self.settle(fut, result, exc):
                raise InvalidStateError(f"{fut._state}: {fut!r}")
        finally:
            self.give()
        self.notify()
        fut.run_callbacks()
        return 0

    cdef int notify(self) except -1:
        """Tell those who wait that their futures are done: the sleepers
        (wake_done), and the asyncio loop, once for all its futures."""
        self.wake_done()
        cdef int *count = NULL if self.driver is None else self.driver.sleepers
        if self.aio_done:
            batch, self.aio_done = self.aio_done, []
            if PyThread_get_thread_ident() == self.aio_thread:
                settle_batch(batch)            # on the loop (it receives: on_loop_watch)
                return 0
            # The loop's thread will want the GIL: until it has it, it counts
            # as a waiter (no engine spins with the GIL held meanwhile).
            count_waiter(count, 1)
            try:
                self.aio_loop.call_soon_threadsafe(settle_on_loop, batch, self)
            except RuntimeError:
                count_waiter(count, -1)        # the loop is closed: nobody awaits them
        return 0

    cdef void wake_done(self) noexcept:
        """Wake the threads whose futures are done."""
        cdef Sleeper *s = self.sleepers
        cdef Sleeper *nxt
        while s != NULL:
            nxt = s.next
            if (<CallFutureBase>s.fut)._state is FINISHED or \
                    (<CallFutureBase>s.fut)._state is CANCELLED_AND_NOTIFIED:
                self.unlink(s)
                PyThread_release_lock(s.lk)
            s = nxt

    # -- sleeping -----------------------------------------------------------------

    cdef void link(self, Sleeper *s) noexcept:
        s.prev, s.next = NULL, self.sleepers
        if self.sleepers != NULL:
            self.sleepers.prev = s
        self.sleepers = s
        s.linked = True

    cdef void unlink(self, Sleeper *s) noexcept:
        if not s.linked:
            return
        if s.prev != NULL:
            s.prev.next = s.next
        else:
            self.sleepers = s.next
        if s.next != NULL:
            s.next.prev = s.prev
        s.linked = False

    cdef void wake_one(self) noexcept:
        """Wake a thread asleep on a pending future: nobody receives for it
        now, so it does (wait_for)."""
        cdef Sleeper *s = self.sleepers
        if s != NULL:
            self.unlink(s)
            PyThread_release_lock(s.lk)

    cdef int wait_for(self, CallFutureBase fut, double deadline) except -1:
        """Until ``fut`` is done or ``deadline`` (-1: none) has passed: this
        thread receives the replies if nobody else does, else sleeps."""
        while not fut.is_done():
            if deadline >= 0 and mono() >= deadline:
                break
            if self.driver is None or not self.driver.drive(fut, deadline):
                self.sleep(fut, deadline)
        return 0

    cdef int sleep(self, CallFutureBase fut, double deadline) except -1:
        """Until ``fut`` is done, this thread is to receive for it (wake_one),
        or ``deadline`` (-1: none) has passed; the GIL released meanwhile,
        signal handlers run (and may raise)."""
        cdef Sleeper s
        cdef PyLockStatus r
        cdef PY_TIMEOUT_T us = -1
        cdef int *count = NULL if self.driver is None else self.driver.sleepers
        if deadline >= 0:
            us = <PY_TIMEOUT_T>((deadline - mono()) * 1e6)
            if us <= 0:
                return 0
        s.lk = PyThread_allocate_lock()
        if s.lk == NULL:
            raise MemoryError()
        PyThread_acquire_lock_timed(s.lk, 0, 0)          # held until a waker releases it
        s.fut, s.linked = <PyObject *>fut, False
        try:
            # (Checking the state and linking the sleeper is one step under the
            # GIL, and completions change both under it: no wake-up is lost.)
            if fut.is_done():
                return 0
            self.link(&s)
            count_waiter(count, 1)
            with nogil:
                r = PyThread_acquire_lock_timed(s.lk, us, 1)
                await_gil(WOKEN_SPIN)
            count_waiter(count, -1)
            self.unlink(&s)
            if r == PY_LOCK_INTR:
                PyErr_CheckSignals()
        finally:
            self.unlink(&s)
            PyThread_free_lock(s.lk)
        return 0


cdef class CallFutureBase:
    """The C half of CallFuture: its state and methods."""
    cdef public object _condition, _state, _result, _exception, _waiters, _done_callbacks
    cdef public uint64_t call_id
    cdef Completions comp
    cdef object aio                            # its asyncio twin (on_loop), or None
    cdef object method                         # (for a timeout's message: Deadlines)
    cdef double timeout

    cdef inline bint is_done(self):
        return self._state is FINISHED or self._state is CANCELLED_AND_NOTIFIED \
            or self._state is CANCELLED

    cdef int run_callbacks(self) except -1:
        if not self._done_callbacks:
            return 0
        for fn in self._done_callbacks:
            try:
                fn(self)
            except Exception:
                _futures.LOGGER.exception("exception calling callback for %r", self)
        return 0

    cdef int await_done(self, timeout) except -1:
        """Until done, within ``timeout`` (None: no limit): CancelledError if
        it was cancelled, TimeoutError if it is not done then."""
        if not self.is_done():
            self.comp.wait_for(self, -1 if timeout is None else mono() + max(0.0, <double>timeout))
        if self._state is CANCELLED or self._state is CANCELLED_AND_NOTIFIED:
            raise CancelledError()
        if self._state is not FINISHED:
            raise FutureTimeoutError()
        return 0

    # -- concurrent.futures.Future's methods ---------------------------------------

    def result(self, timeout=None):
        self.await_done(timeout)
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self, timeout=None):
        self.await_done(timeout)
        return self._exception

    def done(self):
        if self.is_done():
            return True
        if self.comp.on_watch is not None:
            self.comp.on_watch()               # polled: replies must come without a waiter
        return False

    def cancelled(self):
        return self._state is CANCELLED or self._state is CANCELLED_AND_NOTIFIED

    def running(self):
        return self._state is RUNNING

    def cancel(self):
        """Cancel the call (a CANCEL goes to the server); False once it is done."""
        comp = self.comp
        comp.take()
        try:
            if self._state is RUNNING or self._state is FINISHED:
                return False
            if self._state is CANCELLED or self._state is CANCELLED_AND_NOTIFIED:
                return True
            # (As an executor's future after set_running_or_notify_cancel:
            # wait() and as_completed() count it done at once.)
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            if self.aio is not None:
                comp.aio_done.append(self)
        finally:
            comp.give()
        comp.notify()
        self.run_callbacks()
        if comp.on_cancel is not None:
            comp.on_cancel(self.call_id)
        return True

    def add_done_callback(self, fn):
        comp = self.comp
        comp.take()
        try:
            if not self.is_done():
                self._done_callbacks.append(fn)
                if comp.on_watch is not None:
                    comp.on_watch()
                return
        finally:
            comp.give()
        try:
            fn(self)
        except Exception:
            _futures.LOGGER.exception("exception calling callback for %r", self)

    def on_loop(self, loop):
        """This call's result as an asyncio future of ``loop``, the running
        one (AsyncClient): the futures of a batch of replies complete with
        one wake-up of the loop.  Cancelling it does not cancel the call:
        the awaiting code does that."""
        comp = self.comp
        if comp.aio_loop is None:
            comp.aio_loop, comp.aio_thread = loop, PyThread_get_thread_ident()
        elif comp.aio_loop is not loop:       # (a client used from two loops)
            return asyncio.wrap_future(self, loop=loop)
        twin = loop.create_future()
        # (Checked and linked with the GIL held: a completion sees the twin.)
        if self.is_done():
            copy_state(self, twin)
            return twin
        self.aio = twin
        if comp.on_loop_watch is not None and comp.on_loop_watch(loop):
            return twin
        if comp.on_watch is not None:
            comp.on_watch()
        return twin

    def set_result(self, result):
        self.comp.complete(self, result, None)

    def set_exception(self, exception):
        self.comp.complete(self, None, exception)

    def set_running_or_notify_cancel(self):
        comp = self.comp
        comp.take()
        try:
            if self._state is CANCELLED or self._state is CANCELLED_AND_NOTIFIED:
                return False
            if self._state is not PENDING:
                raise RuntimeError(f"Future in unexpected state: {self._state}")
            self._state = RUNNING
            return True
        finally:
            comp.give()


class CallFuture(CallFutureBase, concurrent.futures.Future):
    """An RPC call's result (Client.call_async): a concurrent.futures.Future
    whose ``cancel()`` cancels the call.  Made by new_future()."""


cdef class Deadlines:
    """The deadlines of calls made with the same timeout, so in the order
    they fall (a FIFO, not a heap): what expires, and when next to look.
    Calls completed before their deadline leave from the front as new ones
    come (replies come in about the order calls were made), so the queue
    holds about as many entries as calls are pending."""
    cdef double *at
    cdef uint64_t *ids
    cdef Py_ssize_t head, n, cap
    cdef public bint armed                     # somebody will look at the front's deadline

    def __dealloc__(self):
        free(self.at)
        free(self.ids)

    cdef bint add(self, uint64_t call_id, double when, dict pending) except -1:
        """Queue call ``call_id``'s deadline; False if it falls before the last
        one queued (a timeout made shorter meanwhile: keep it elsewhere)."""
        cdef Py_ssize_t i
        while self.n and self.ids[self.head] not in pending:
            self.head = (self.head + 1) % self.cap
            self.n -= 1
        if self.n and when < self.at[(self.head + self.n - 1) % self.cap]:
            return False
        if self.n == self.cap:
            self.grow()
        i = (self.head + self.n) % self.cap
        self.at[i], self.ids[i] = when, call_id
        self.n += 1
        return True

    cdef int grow(self) except -1:
        cdef Py_ssize_t cap = max(64, 2 * self.cap), i, k
        cdef double *at = <double *>malloc(cap * sizeof(double))
        cdef uint64_t *ids = <uint64_t *>malloc(cap * sizeof(uint64_t))
        if at == NULL or ids == NULL:
            free(at)
            free(ids)
            raise MemoryError()
        for k in range(self.n):
            i = (self.head + k) % self.cap
            at[k], ids[k] = self.at[i], self.ids[i]
        free(self.at)
        free(self.ids)
        self.at, self.ids, self.head, self.cap = at, ids, 0, cap
        return 0

    cdef object due(self, dict pending):
        """([(call id, method, timeout)] of the calls whose deadline has
        passed and that are still pending, the next deadline or None)."""
        cdef double now = mono()
        cdef CallFutureBase fut
        expired = []
        while self.n and self.at[self.head] <= now:
            holder = pending.get(self.ids[self.head])
            if isinstance(holder, CallFutureBase):
                fut = <CallFutureBase>holder
                expired.append((fut.call_id, fut.method, fut.timeout))
            self.head = (self.head + 1) % self.cap
            self.n -= 1
        if not self.n:
            self.armed = False
            return expired, None
        return expired, self.at[self.head]


def settle_on_loop(list batch, Completions comp):
    """On the asyncio loop: complete the twins of a batch of done futures
    (Completions.notify)."""
    count_waiter(NULL if comp.driver is None else comp.driver.sleepers, -1)
    settle_batch(batch)


cdef int settle_batch(list batch) except -1:
    """Complete the twins of ``batch`` (on their loop's thread)."""
    cdef CallFutureBase fut
    for f in batch:
        fut = <CallFutureBase>f
        twin, fut.aio = fut.aio, None
        if not twin.done():
            copy_state(fut, twin)


cdef int copy_state(CallFutureBase fut, twin) except -1:
    if fut._state is CANCELLED or fut._state is CANCELLED_AND_NOTIFIED:
        twin.cancel()
    elif fut._exception is not None:
        twin.set_exception(fut._exception)
    else:
        twin.set_result(fut._result)
    return 0


cdef object new_future(Completions comp, uint64_t call_id):
    """A pending CallFuture of ``comp``'s client, for call ``call_id``."""
    cdef CallFutureBase fut = CallFutureBase.__new__(CallFuture)
    fut._condition, fut.comp, fut.call_id = comp, comp, call_id
    fut._state = PENDING
    fut._waiters, fut._done_callbacks = [], []
    return fut


def make_future(Completions comp, uint64_t call_id=0):
    """new_future, for Python (the client's general path, and tests)."""
    return new_future(comp, call_id)

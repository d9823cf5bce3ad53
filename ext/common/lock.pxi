# A lock the fast paths take and give in C, with no Python call: an RPC
# Link's send lock and its turn lock (under its Condition), a socket's read
# lock.  To Python it is a threading.Lock: acquire(blocking, timeout),
# release(), locked(), with.  Also the monotonic clock the modules time with.
# The including module cimports clock_gettime, timespec and CLOCK_MONOTONIC.

from cpython.exc cimport PyErr_CheckSignals
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_release_lock, PyLockStatus, PY_LOCK_ACQUIRED, PY_LOCK_INTR)

cdef extern from "pythread.h":
    ctypedef long long PY_TIMEOUT_T
    PyLockStatus PyThread_acquire_lock_timed(PyThread_type_lock lock, PY_TIMEOUT_T us,
                                             int intr_flag) nogil

cdef extern from "gil_peek.h":
    int *rdmamsg_gil_word()
    int rdmamsg_gil_held(int *word) nogil
    void rdmamsg_pause() nogil


cdef int *gil_word = rdmamsg_gil_word()
cdef double WOKEN_SPIN = 200e-6     # a woken sleeper's spin for the GIL (await_gil)
GIL_PEEK = gil_word != NULL         # whether await_gil can see the GIL (else it never spins)


cdef inline double mono() noexcept nogil:
    """time.monotonic(), without a Python call (the same clock)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline void await_gil(double spin) noexcept nogil:
    """Before taking the GIL back: while another thread holds it, spin up to
    ``spin`` seconds instead of sleeping in CPython's take_gil, whose wake-up
    costs more than the holder keeps it (gil_peek.h)."""
    cdef double end
    if gil_word == NULL or spin <= 0 or not rdmamsg_gil_held(gil_word):
        return
    end = mono() + spin
    while rdmamsg_gil_held(gil_word) and mono() < end:
        rdmamsg_pause()


cdef bint acquire_within(PyThread_type_lock lk, double timeout) except -1:
    """Acquire ``lk`` within ``timeout`` seconds (-1: no limit), the GIL
    released meanwhile; signal handlers run (and may raise) on EINTR."""
    cdef PyLockStatus r
    cdef PY_TIMEOUT_T us
    cdef double deadline = mono() + timeout
    while True:
        us = -1 if timeout < 0 else <PY_TIMEOUT_T>(max(0.0, deadline - mono()) * 1e6)
        with nogil:
            r = PyThread_acquire_lock_timed(lk, us, 1)
            await_gil(WOKEN_SPIN)
        if r != PY_LOCK_INTR:
            return r == PY_LOCK_ACQUIRED
        PyErr_CheckSignals()                   # raises what a handler raised


cdef class Lock:
    """A plain (non-reentrant) lock, as threading.Lock."""
    cdef PyThread_type_lock lk
    cdef bint held

    def __cinit__(self):
        self.lk = PyThread_allocate_lock()
        if self.lk == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.lk != NULL:
            if self.held:
                PyThread_release_lock(self.lk)
            PyThread_free_lock(self.lk)

    cdef inline bint take(self) except -1:
        """Acquire, waiting as long as it takes."""
        return self.take_within(-1)

    cdef inline bint take_within(self, double timeout) except -1:
        """Acquire within ``timeout`` seconds (-1: no limit, 0: only if free)."""
        if PyThread_acquire_lock_timed(self.lk, 0, 0) == PY_LOCK_ACQUIRED:
            self.held = True
            return True
        return False if timeout == 0 else self.wait(timeout)

    cdef bint wait(self, double timeout) except -1:
        if acquire_within(self.lk, timeout):
            self.held = True
            return True
        return False

    cdef inline void give(self) noexcept:
        self.held = False
        PyThread_release_lock(self.lk)

    def acquire(self, bint blocking=True, double timeout=-1):
        if not blocking:
            if timeout != -1:
                raise ValueError("can't specify a timeout for a non-blocking call")
            timeout = 0
        elif timeout < 0 and timeout != -1:
            raise ValueError("timeout value must be a non-negative number")
        return self.take_within(timeout)

    def release(self):
        if not self.held:
            raise RuntimeError("release unlocked lock")
        self.give()

    def locked(self):
        return self.held

    def __enter__(self):
        return self.take()

    def __exit__(self, *exc):
        self.release()

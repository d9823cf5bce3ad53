# cython: language_level=3
"""rdmamsg's Cython completion poller: the hot loop, on raw verbs pointers.

It takes the ibv_* pointers behind pyverbs objects (validated, rawptr.pxi),
polls CQs in batches into preallocated ibv_wc arrays with the GIL released,
and posts sends and receive refills in C.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t
from cdefs cimport *
from protocol_core cimport *

include "lock.pxi"
include "gate.pxi"
include "waiting.pxi"
include "rawptr.pxi"
include "engine.pxi"
include "onesided.pxi"
include "rsocket.pxi"
include "stream.pxi"

BACKEND = "cython"


cdef extern from "instrument.h":
    int rdmamsg_callgrind(int on) nogil


def callgrind(bint on):
    """Start (after zeroing its counts) or stop callgrind's instrumentation,
    under valgrind --tool=callgrind --instr-atstart=no (ci/bench
    --instructions).  False if built without valgrind's header."""
    return bool(rdmamsg_callgrind(on))


# -- for ext/rpc/_rpcfast: an engine's send and recv_into as C calls -------------------------

from cpython.pycapsule cimport PyCapsule_New

include "engine_api.pxi"


cdef int _api_send(PyObject *engine, const char *ptr, size_t n) except -1:
    cdef uint64_t before = (<Engine>engine).w.changes
    (<Engine>engine)._send_mem(<char *>ptr, n, -1.0, None, False)
    return (<Engine>engine).w.changes != before


cdef Py_ssize_t _api_recv_into(PyObject *engine, char *buf, size_t cap,
                               double timeout) except -1:
    return (<Engine>engine)._recv_into_mem(buf, cap, mono() + timeout)


cdef EngineApi _api
_api.send = _api_send
_api.recv_into = _api_recv_into
_api.gil_waiters = &gil_waiters
#: Engine.send (without a time limit, copied) and Engine.recv_into, for C callers.
API = PyCapsule_New(&_api, ENGINE_API, NULL)

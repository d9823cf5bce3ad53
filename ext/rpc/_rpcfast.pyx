# cython: language_level=3
"""rdmamsg.rpc's C fast path: the common frames encoded and decoded in C
(rpc_codec.pxi, no I/O), and the two hot loops that use them
(rpc_calls.pxi).  rdmamsg/rpc/wire.py and link.py stay the reference and
serve everything these do not; with the pure-pyverbs poller they serve all.
"""

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

include "rpc_codec.pxi"
include "lock.pxi"
include "rpc_future.pxi"
include "engine_api.pxi"
include "rpc_calls.pxi"


# -- for tests: the codec from Python ------------------------------------------------


def request(uint64_t call_id, str method, tuple args, dict kwargs, ms=None,
            Py_ssize_t inline_max=65536):
    """wire.encode_request's frame, or None outside the subset."""
    w = Writer()
    return frame_bytes(w) if encode_request(w, call_id, method, args, 0, kwargs, ms, inline_max) \
        else None


def reply(uint64_t call_id, result, Py_ssize_t inline_max=65536):
    """wire.encode_reply's frame, or None outside the subset."""
    w = Writer()
    return frame_bytes(w) if encode_reply(w, call_id, result, inline_max) else None


def decode(bytes frame):
    """(kind, id, method or status, value, kwargs, whole); kind -1 outside the subset."""
    cdef Frame f = parse(PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame))
    if f.kind == REQUEST and f.whole:          # as wire.request_parts gives them
        return f.kind, f.call_id, f.method, list(f.value), f.kwargs or {}, True
    return (f.kind, f.call_id, f.method if f.kind == REQUEST else f.status, f.value, f.kwargs,
            f.whole)

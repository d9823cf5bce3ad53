# cython: language_level=3
"""rdmamsg.rpc's C fast path: the common frames encoded and decoded in C
(rpc_codec.pxi, no I/O), and the two hot loops that use them
(rpc_calls.pxi).  rdmamsg/rpc/wire.py and link.py stay the reference and
serve everything these do not; with the pure-pyverbs poller they serve all.
"""

include "rpc_codec.pxi"
include "rpc_calls.pxi"


# -- for tests: the codec from Python ------------------------------------------------


def request(uint64_t call_id, str method, tuple args, dict kwargs, ms=None,
            Py_ssize_t inline_max=65536):
    """wire.encode_request's frame, or None outside the subset."""
    out = encode_request(Writer(), call_id, method, args, kwargs, ms, inline_max)
    return None if out is UNFIT else out


def reply(uint64_t call_id, result, Py_ssize_t inline_max=65536):
    """wire.encode_reply's frame, or None outside the subset."""
    out = encode_reply(Writer(), call_id, result, inline_max)
    return None if out is UNFIT else out


def decode(bytes frame):
    """(kind, id, method or status, value, kwargs, whole); kind -1 outside the subset."""
    cdef Frame f = parse(frame)
    return (f.kind, f.call_id, f.method if f.kind == REQUEST else f.status, f.value, f.kwargs,
            f.whole)

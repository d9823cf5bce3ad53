# The C calls that _cpoller's API capsule offers (ext/rpc/_rpcfast uses them on
# the engine behind an Endpoint, skipping a Python call and a buffer export).

from cpython.ref cimport PyObject

ctypedef struct EngineApi:
    # Engine.send(data) of ``n`` bytes at ``ptr``, copied (below zerocopy_min):
    # 1 if it handled completions meanwhile (it waited for room), else 0
    int (*send)(PyObject *engine, const char *ptr, size_t n) except -1
    # Engine.recv_into(buf, timeout): the length
    Py_ssize_t (*recv_into)(PyObject *engine, char *buf, size_t cap, double timeout) except -1
    # The count of _cpoller's threads waiting without the GIL: while it is not
    # 0 no engine spins with the GIL held.  A caller's thread that sleeps
    # until another hands it a reply adds itself.
    int *gil_waiters

cdef const char *ENGINE_API = "rdmamsg.transport._cpoller.API"

# cython: language_level=3
"""rdmamsg's Cython completion poller: the hot loop, on raw verbs pointers.

It takes the ibv_* pointers behind pyverbs objects (validated, rawptr.pxi),
polls CQs in batches into preallocated ibv_wc arrays with the GIL released,
and posts sends and receive refills in C.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t
from cdefs cimport *

include "rawptr.pxi"
include "credits.pxi"
include "ring.pxi"
include "engine.pxi"
include "onesided.pxi"
include "stream.pxi"

BACKEND = "cython"

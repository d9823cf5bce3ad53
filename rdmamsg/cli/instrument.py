"""Only a benchmark's loop under callgrind (ci/bench --instructions).

The bench client runs under ``valgrind --tool=callgrind --instr-atstart=no``
with RDMAMSG_CALLGRIND=1: it starts Python and connects uninstrumented
(still slow under TCG, but some hundred times less so), and ``counted()``
turns instrumentation on around the loop.  Anywhere else it does nothing.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def counted() -> Iterator[None]:
    if os.environ.get("RDMAMSG_CALLGRIND") != "1":
        yield
        return
    from ..transport import _cpoller
    if not _cpoller.callgrind(True):
        raise RuntimeError("rdmamsg's poller was built without valgrind/callgrind.h: "
                           "install valgrind and rebuild ext/")
    try:
        yield
    finally:
        _cpoller.callgrind(False)

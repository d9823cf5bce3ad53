"""Functions that multiprocessing workers run in the device tests (importable,
so that spawned workers find them too)."""
from __future__ import annotations

import hashlib
import os

import rdmamsg


def connect_and_echo(address: tuple[str, int], n: int) -> str:
    """Connect from this worker process, send ``n`` messages, and return the
    sha256 of what came back (the server echoes)."""
    h = hashlib.sha256()
    with rdmamsg.connect(tuple(address), timeout=60) as ep:
        for i in range(n):
            msg = os.urandom(100 + 37 * i)
            ep.send(msg)
            back = ep.recv(timeout=60)
            assert back == msg
            h.update(back)
    return h.hexdigest()

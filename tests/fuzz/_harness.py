"""Shared set-up of the atheris targets in this folder.

Each target is a script: ``python tests/fuzz/fuzz_X.py [libFuzzer flags]``
fuzzes one decoder of what a peer sends, with coverage from rdmamsg's own
Python code.  ``seeds()`` gives well-formed inputs for the corpus; a target's
``check(data)`` raises AssertionError (or anything but the expected error
type) when it finds a bug, which atheris reports as a crash.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import atheris

with atheris.instrument_imports(include=["rdmamsg"]):
    # Every decoder of peer input, imported here so that coverage reaches it.
    import rdmamsg.channel.remote  # noqa: F401
    import rdmamsg.protocol.credits  # noqa: F401
    import rdmamsg.protocol.frames  # noqa: F401
    import rdmamsg.protocol.handshake  # noqa: F401
    import rdmamsg.protocol.ring  # noqa: F401
    import rdmamsg.rpc.wire  # noqa: F401


def main(check: Callable[[bytes], None], seeds: Callable[[], list[bytes]]) -> None:
    """Run the fuzzer on ``check`` with the libFuzzer flags in sys.argv, or
    with ``--write-seeds DIR``, write the seed corpus there and stop."""
    if sys.argv[1:2] == ["--write-seeds"]:
        os.makedirs(sys.argv[2], exist_ok=True)
        for i, seed in enumerate(seeds()):
            with open(os.path.join(sys.argv[2], f"seed-{i}"), "wb") as f:
                f.write(seed)
        return
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


def split(data: bytes) -> list[bytes]:
    """The stream after ``data``'s first byte, cut into reads of (that byte + 1)
    bytes, as TCP may deliver it.  A seed is ``b"\\xff" + frames``."""
    if not data:
        return []
    n, stream = data[0] + 1, data[1:]
    return [stream[i:i + n] for i in range(0, len(stream), n)]

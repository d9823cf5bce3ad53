"""How one Dask message travels as rdmamsg messages (no I/O).

A Dask message is a list of frames (``distributed.protocol.dumps``).  The
first rdmamsg message is the head: the frame count, each frame's length with
a flag saying whether it follows in the head or as its own message, then the
bytes of the frames that travel in the head.  Small serialized frames ride
in the head, so a small Dask message is one RDMA send.  Buffers (numpy and
the like) and large frames travel as messages of their own, sent from their
memory and received into buffers of their own, so that an array never keeps
the head (or another array) alive.
"""
from __future__ import annotations

import struct
from typing import Sequence

from ..verbs.regcache import byte_view

VERSION = 1
_COUNT = struct.Struct("<BI")          # version, frame count
_LEN = struct.Struct("<Q")
SEPARATE = 1 << 63                     #: flag in a length: the frame is its own message
SMALL_BUFFER = 2048                    #: buffers shorter than this may ride in the head
MAX_FRAMES = 1 << 20


def plan(frames: Sequence, head_limit: int) -> tuple[bytes, list[memoryview]]:
    """The head message for ``frames``, and the frames that follow it as
    messages of their own, in order.  The head stays within ``head_limit``
    bytes when it can (it always holds at least the lengths)."""
    if len(frames) > MAX_FRAMES:
        raise ValueError(f"a message of {len(frames)} frames; at most {MAX_FRAMES}")
    lengths, inline, separate = [], [], []
    size = _COUNT.size + _LEN.size * len(frames)
    for frame in frames:
        # an empty array's shape may have zeros, which cast() refuses
        view = byte_view(frame) if memoryview(frame).nbytes else memoryview(b"")
        n = view.nbytes
        small = isinstance(view.obj, bytes) or n < SMALL_BUFFER
        if small and size + n <= head_limit:
            lengths.append(n)
            inline.append(view)
            size += n
        else:
            lengths.append(n | SEPARATE)
            separate.append(view)
    head = b"".join([_COUNT.pack(VERSION, len(frames)), *map(_LEN.pack, lengths), *inline])
    return head, separate


def parse(head) -> tuple[list, list[tuple[int, int]]]:
    """The frames of a head: a list with the inline frames filled in (views
    of ``head``) and None where a separate frame goes, and the (index,
    length) of each separate frame, in the order they arrive.  ValueError
    if the head is malformed."""
    view = memoryview(head).cast("B")
    if view.nbytes < _COUNT.size:
        raise ValueError(f"a head of {view.nbytes} bytes is too short")
    version, count = _COUNT.unpack_from(view)
    if version != VERSION:
        raise ValueError(f"head version {version}; this side speaks {VERSION}")
    at = _COUNT.size + _LEN.size * count
    if count > MAX_FRAMES or at > view.nbytes:
        raise ValueError(f"a head announcing {count} frames is only {view.nbytes} bytes")
    frames: list = []
    separate = []
    for i in range(count):
        (n,) = _LEN.unpack_from(view, _COUNT.size + _LEN.size * i)
        if n & SEPARATE:
            frames.append(None)
            separate.append((i, n & ~SEPARATE))
            continue
        if at + n > view.nbytes:
            raise ValueError(f"frame {i} ({n} bytes) runs past the end of the head")
        frames.append(view[at:at + n])
        at += n
    if at != view.nbytes:
        raise ValueError(f"{view.nbytes - at} bytes left over after the head's frames")
    return frames, separate

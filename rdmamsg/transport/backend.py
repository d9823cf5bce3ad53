"""The poller backends and the contract both keep.

An engine drives one connected RC QP: it posts sends and receive refills,
polls the CQ in batches, applies credit flow control, and blocks (spin, then
sleep on an fd) when it must wait.  Two engines keep the same contract:

  cython   rdmamsg.transport._cpoller.Engine, built from ext/: the hot loop on
           raw verbs pointers, the GIL released while polling and waiting.
  python   rdmamsg.transport._pyengine.Engine: pure pyverbs, the fallback.

``RDMAMSG_POLLER`` chooses: ``python``, ``cython`` (and fail if it cannot
run), or ``auto`` (the default: cython, else python with a warning).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from ..errors import PollerUnavailableError
from ..verbs.inherit import owner

#: What an engine offers; both backends implement all of it.
ENGINE_API = (
    "post_receives",   # () -> None: post every receive buffer
    "send",            # (data, timeout) -> None: one whole message, fragmented as needed
    "recv",            # (timeout) -> bytes: the next whole message
    "recv_into",       # (buffer, timeout) -> int: the next message into a caller's buffer
    "recv_view",       # (timeout) -> MessageView: the next message lent without a copy
    "poll",            # () -> int: progress without blocking; whole messages ready
                       #   (1 once nothing more can arrive: recv then says why)
    "wait",            # (timeout) -> bool: block until there may be progress
    "fileno",          # () -> int: readable when there may be progress (for selectors)
    "pending",         # () -> int: whole messages ready now, without polling
    "signal",          # (on) -> None: hold fileno() readable, or stop (data waits above us)
    "interrupt",       # () -> None: the receive waiting in another thread (or the next to
                       #   wait) raises InterruptedError: a thread taking over receiving
    "progress_count",  # () -> int: moves whenever completions are handled
    "shutdown",        # (timeout) -> None: orderly CLOSE, then wait for our sends to complete
    "close",           # () -> None: stop; the caller then destroys the QP and CQ
    "stats",           # () -> dict: counters (see STAT_KEYS)
)

#: What a one-sided poster offers (ext/onesided.pxi, _pyonesided.py); the caller
#: holds the endpoint's one-sided lock.  Sequence numbers start at 1; 0 means
#: the queue had no room in time.
POSTER_API = (
    "address",         # (obj) -> int: the address of a C-contiguous buffer
    "set_staging",     # (region, addr, lkey, slot_size) -> None: memory post_copy copies into
    "post",            # (read, laddr, length, lkey, raddr, rkey, timeout) -> seq
    "post_copy",       # (obj, raddr, rkey, timeout) -> seq: inline or staged; obj free at return
    "write_copy",      # (descriptor, data, offset, timeout) -> seq, or -1: take the general path
    "wait",            # (seq, timeout) -> bool: seq and all before it completed in time
    "failure",         # () -> (status, vendor error) of the first failed completion, or None
)

STAT_KEYS = ("messages_sent", "messages_received", "bytes_sent", "bytes_received",
             "credit_updates_sent", "credit_stalls", "sleeps", "inline_sends", "zerocopy_sends")


@dataclass(frozen=True)
class EngineConfig:
    peer_depth: int          #: receives the peer keeps posted: our initial credits
    fragment: int            #: bytes per copied fragment: min(our buffer, the peer's buffer
                             #: or, on the write channel, its longest ring write)
    send_max: int            #: largest message the peer accepts
    recv_max: int            #: largest message we accept
    max_inline: int          #: inline sends up to this size (0: never)
    zc_fragment: int = 0     #: fragment size of zero-copy sends: the peer's buffer
    zerocopy_min: int = 0    #: send from the caller's memory at this size (0: never)
    spin_us: int = 1000      #: busy-poll up to this long before sleeping (while busy)
    credit_threshold: int | None = None   #: return credits once this many are owed
    ring: object = None      #: write channel: our Region, which the peer writes into
    ring_cells: int = 0      #: its cells
    peer_ring: object = None #: write channel: the peer's ring (handshake.RingInfo)


_choice: str | None = None


def poller_mode() -> str:
    mode = os.environ.get("RDMAMSG_POLLER", "auto").lower()
    if mode not in ("auto", "cython", "python"):
        raise ValueError(f"RDMAMSG_POLLER={mode!r}: use auto, cython or python")
    return mode


def make_engine(*, cq, qp, recv_bufs, send_bufs, liveness, config: EngineConfig, regcache=None):
    """An engine for a connected QP: the Cython one unless told otherwise or it
    cannot run, in which case the pure-pyverbs one, with the same contract."""
    global _choice
    mode = poller_mode()
    if mode != "python":
        try:
            from ._cpoller import Engine as CEngine

            eng = CEngine(cq, qp, recv_bufs, send_bufs, liveness, config, regcache)
            _choice = "cython"
            return owner(eng)
        except (ImportError, PollerUnavailableError) as exc:
            if mode == "cython":
                raise PollerUnavailableError(f"RDMAMSG_POLLER=cython but: {exc}") from exc
            warnings.warn(f"rdmamsg: the Cython poller cannot run ({exc}); using the "
                          "pure-pyverbs poller, which is slower ('python -m rdmamsg doctor' "
                          "says how to fix it)", RuntimeWarning, stacklevel=3)
    from ._pyengine import Engine as PyEngine

    _choice = "python"
    return owner(PyEngine(cq, qp, recv_bufs, send_bufs, liveness, config, regcache))


def make_one_sided_poster(ctx, pd, cq, qp, depth: int, max_inline: int):
    """The poster of one-sided RDMA operations for this QP: the Cython one
    (ext/onesided.pxi) or its pure-pyverbs twin (_pyonesided.py), by the same
    choice as make_engine's."""
    mode = poller_mode()
    if mode != "python":
        try:
            from ._cpoller import OneSidedPoster

            return OneSidedPoster(ctx, pd, cq, qp, depth, max_inline)
        except (ImportError, PollerUnavailableError) as exc:
            if mode == "cython":
                raise PollerUnavailableError(f"RDMAMSG_POLLER=cython but: {exc}") from exc
            # make_engine has warned already
    from ._pyonesided import OneSidedPoster as PyPoster

    return PyPoster(ctx, pd, cq, qp, depth, max_inline)


def make_stream_fast(engine, sock, chunk: int):
    """The C fast path of a blocking RdmaSocket on ``engine`` (ext/stream.pxi),
    or None on the pure-pyverbs engine, where the socket's own general path
    serves every call."""
    if getattr(engine, "name", None) != "cython":
        return None
    from ._cpoller import StreamFast

    return StreamFast(engine, sock, chunk)


def poller_in_use() -> str | None:
    """The backend of the last engine made: ``cython``, ``python``, or None."""
    return _choice

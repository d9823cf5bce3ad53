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
from typing import Any, Protocol

from ..errors import PollerUnavailableError
from ..verbs.inherit import owner

class Engine(Protocol):
    """What an engine offers; both backends implement all of it."""

    name: str

    def post_receives(self) -> None:
        """Post every receive buffer (before the peer may send)."""

    def send(self, data: Any, timeout: float | None = None) -> None:
        """One whole message (any C-contiguous buffer), fragmented as needed."""

    def recv(self, timeout: float | None = None) -> bytes:
        """The next whole message."""

    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        """The next message into a caller's writable buffer; its length."""

    def recv_view(self, timeout: float | None = None) -> Any:
        """The next message lent without a copy (a MessageView)."""

    def poll(self) -> int:
        """Progress without blocking; whole messages ready (1 once nothing
        more can arrive: recv then says why)."""

    def wait(self, timeout: float | None = None) -> bool:
        """Block until there may be progress; False on time-out."""

    def fileno(self) -> int:
        """Readable when there may be progress (for selectors)."""

    def pending(self) -> int:
        """Whole messages ready now, without polling."""

    def signal(self, on: bool) -> None:
        """Hold fileno() readable, or stop (data waits above us)."""

    def interrupt(self) -> None:
        """The receive waiting in another thread (or the next to wait) raises
        InterruptedError: a thread taking over receiving."""

    def progress_count(self) -> int:
        """Moves whenever completions are handled."""

    def shutdown(self, timeout: float | None = 2.0) -> None:
        """Orderly CLOSE, then wait for our sends to complete."""

    def close(self) -> None:
        """Stop, once no thread is inside; the caller then destroys the QP and CQ."""

    def stats(self) -> dict[str, Any]:
        """Counters (STAT_KEYS) and the poller's name."""


class OneSidedPoster(Protocol):
    """What a one-sided poster offers (ext/transport/onesided.pxi, _pyonesided.py); the
    caller holds the endpoint's one-sided lock.  Sequence numbers start at 1;
    0 means the queue had no room in time."""

    posted: int

    def address(self, obj: Any) -> int:
        """The address of a C-contiguous buffer."""

    def set_staging(self, region: Any, addr: int, lkey: int, slot_size: int) -> None:
        """Memory post_copy copies into."""

    def post(self, read: bool, laddr: int, length: int, lkey: int, raddr: int, rkey: int,
             timeout: float) -> int:
        """An RDMA READ or WRITE; its sequence number."""

    def post_copy(self, obj: Any, raddr: int, rkey: int, timeout: float) -> int:
        """A WRITE of ``obj``, inline or staged: ``obj`` is free at return."""

    def write_copy(self, descriptor: Any, data: Any, offset: int, timeout: float) -> int:
        """post_copy into a grant, or -1: take the general path."""

    def wait(self, seq: int, timeout: float) -> bool:
        """Whether ``seq`` and all before it completed in time."""

    def failure(self) -> tuple[int, int] | None:
        """(status, vendor error) of the first failed completion, or None."""


def _api(proto: type) -> tuple[str, ...]:
    return tuple(n for n, v in vars(proto).items() if callable(v) and not n.startswith("_"))


#: The methods of each contract (tests/unit/test_layout.py checks both twins).
ENGINE_API = _api(Engine)
POSTER_API = _api(OneSidedPoster)

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


def make_engine(*, cq, qp, recv_bufs, send_bufs, liveness, config: EngineConfig,
                regcache=None) -> Engine:
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


def make_one_sided_poster(ctx, pd, cq, qp, depth: int, max_inline: int) -> OneSidedPoster:
    """The poster of one-sided RDMA operations for this QP: the Cython one
    (ext/transport/onesided.pxi) or its pure-pyverbs twin (_pyonesided.py), by the same
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


def make_stream_fast(engine, sock, chunk: int, on_eof):
    """The C fast path of a blocking RdmaSocket on ``engine`` (ext/transport/stream.pxi),
    or None on the pure-pyverbs engine, where the socket's own general path
    serves every call.  ``on_eof()`` returns what to call when the fast path
    reads the end of the stream (None once the socket is gone)."""
    if getattr(engine, "name", None) != "cython":
        return None
    from ._cpoller import StreamFast

    return StreamFast(engine, sock, chunk, on_eof)


def poller_in_use() -> str | None:
    """The backend of the last engine made: ``cython``, ``python``, or None."""
    return _choice

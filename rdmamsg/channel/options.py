"""Per-connection settings."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..protocol import ring
from ..protocol.credits import MIN_DEPTH


@dataclass(frozen=True)
class Options:
    """Settings for one connection; each side chooses its own.

    Memory per connection is about ``(recv_depth + send_depth) * buffer_size``
    of registered pool memory (2 MiB with the defaults); on the write channel
    ``send_depth * buffer_size`` of pool memory and a ``ring_size`` ring.
    """

    channel: str = "send"             #: "send": send/recv into posted buffers; "write": RDMA
                                      #: writes into a ring the receiver advertises (the
                                      #: connecting side chooses; a listener serves both)

    recv_depth: int = 32              #: receives kept posted: the peer's credits
    send_depth: int = 32              #: send buffers (messages in flight)
    buffer_size: int = 32768          #: bytes per buffer; longer messages are fragmented
    max_message: int = 64 << 20       #: largest message this side accepts
    max_inline: int = 256             #: messages up to this size are sent inline
    zerocopy_min: int = 65536         #: messages this long are sent from the caller's memory
                                      #: (registered, cached) instead of copied; 0: never
    spin_us: int = 1000               #: busy-poll up to this long before sleeping on the
                                      #: fd, while traffic flows (50 us after idling)
    linger: float = 2.0               #: close() waits this long for sends to complete; 0 aborts
    handshake_timeout: float = 10.0   #: limit for one bootstrap handshake (on both sides;
                                      #: a connect timeout can only shorten it)
    remote_buffers: bool = True       #: a second QP for expose()/write()/read() (the
                                      #: connecting side chooses; a listener follows)
    ring_size: int = 2 << 20          #: write channel: bytes of the ring the peer writes into
    ring_cells: int = 512             #: write channel: the ring's cells (each message takes
                                      #: whole cells, and at most this many are in flight)

    def __post_init__(self) -> None:
        if not MIN_DEPTH <= self.recv_depth <= 1 << 15:
            raise ValueError(f"recv_depth must be {MIN_DEPTH}..32768")
        if not 1 <= self.send_depth <= 1 << 15:
            raise ValueError("send_depth must be 1..32768")
        if self.buffer_size < 64 or self.buffer_size & (self.buffer_size - 1):
            raise ValueError("buffer_size must be a power of two, at least 64")
        if self.max_message < 0:
            raise ValueError("max_message must be non-negative")
        if min(self.max_inline, self.spin_us, self.linger, self.zerocopy_min) < 0:
            raise ValueError("max_inline, zerocopy_min, spin_us and linger must be non-negative")
        if self.channel not in ("send", "write"):
            raise ValueError("channel must be 'send' or 'write'")
        ring.check_geometry(self.ring_size, self.ring_cells)
        if self.handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")

    @classmethod
    def from_kwargs(cls, options: "Options | None", kwargs: dict) -> "Options":
        """``options`` with ``kwargs`` applied; unknown names are a TypeError."""
        known = {f.name for f in fields(cls)}
        bad = set(kwargs) - known
        if bad:
            raise TypeError(f"unknown option(s): {', '.join(sorted(bad))}")
        base = options or cls()
        if not kwargs:
            return base
        return cls(**{**{f.name: getattr(base, f.name) for f in fields(cls)}, **kwargs})

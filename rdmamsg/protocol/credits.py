"""Credit flow control for send/recv: never send without a receive posted.

How this works.  Each side starts with as many credits as the peer has
receives posted (its ``depth``); a send spends one.  When the receiver reposts
a consumed buffer it owes the sender a credit ("unreturned"), and every
fragment it sends carries all it owes in its immediate.  A side that has
nothing to send returns credits with a CREDIT fragment once it owes
``threshold`` (at most depth - 1) of them.

No deadlock: the last credit may only be spent on a fragment that returns
credits.  So whoever sent last either kept a credit or handed the peer some,
and a side whose peer has run dry owes it at least ``threshold`` and can pay.
A FIRST fragment carries a length instead of credits, so it needs two.

No livelock: ``threshold`` is at least 2.  A CREDIT fragment takes one of
the peer's receives, which it reposts at once; were one repost enough to make
an update due, two sides would bounce CREDIT fragments back and forth, each
taking the last credit before a waiting data fragment could (seen on the
device with a depth of 2).  Hence a depth of at least 3.
"""
from __future__ import annotations

from ..errors import ProtocolError


MIN_DEPTH = 3


def default_threshold(peer_depth: int) -> int:
    return max(2, peer_depth // 2)


class CreditWindow:
    def __init__(self, peer_depth: int, threshold: int | None = None) -> None:
        if peer_depth < MIN_DEPTH:
            raise ValueError(f"the peer must post at least {MIN_DEPTH} receives")
        self.limit = peer_depth
        self.credits = peer_depth
        self.unreturned = 0
        self.threshold = threshold if threshold is not None else default_threshold(peer_depth)
        if not 2 <= self.threshold <= peer_depth - 1:
            raise ValueError(f"threshold must be in 2..{peer_depth - 1}")

    def can_send(self, returning: bool = True) -> bool:
        """Whether a fragment may be sent now; ``returning``: it carries credits."""
        return self.credits >= 2 or (self.credits == 1 and returning and self.unreturned > 0)

    def update_due(self) -> bool:
        """Whether a standalone CREDIT fragment should be sent now."""
        return self.unreturned >= self.threshold and self.credits >= 1

    def spend(self, returning: bool = True) -> int:
        """Spend a credit on a fragment; returns the credits it carries back
        (none if it is not ``returning``)."""
        if self.credits < 1:
            raise RuntimeError("no credit to spend")
        self.credits -= 1
        if not returning:
            return 0
        owed, self.unreturned = self.unreturned, 0
        return owed

    def returned(self, n: int) -> None:
        """The peer returned ``n`` credits."""
        if n < 0 or self.credits + n > self.limit:
            raise ProtocolError(f"peer returned {n} credits; that would make {self.credits + n}, "
                                f"more than its {self.limit} receives")
        self.credits += n

    def reposted(self, n: int = 1) -> None:
        """We reposted ``n`` receive buffers: the peer may use them again."""
        self.unreturned += n

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

The rules are C (ext/protocol/protocol_core.pxd), which both engines run.
"""

from __future__ import annotations

from ._core import NUMBERS, CreditWindow, default_threshold

__all__ = ["MIN_DEPTH", "CreditWindow", "default_threshold"]

MIN_DEPTH = NUMBERS["MIN_DEPTH"]

"""Whole messages on an Endpoint, from an asyncio loop.

Who waits where:

- Messages that fit in one fragment are sent and received on the loop
  itself, without blocking (``timeout=0``).  When they cannot go or have not
  come, the caller awaits the endpoint's fd (``add_reader``): arrivals and
  returning credits both make it readable.  Nothing spins while idle.
- Longer messages are sent from their own memory and received straight into
  the caller's buffer by a blocking call in a worker thread, so the loop
  stays free and no fragment is copied twice.  Such a thread takes the
  completion events itself, so while one runs, waiters on the loop also
  look again every few milliseconds instead of trusting the fd alone.
- After a wake-up that found nothing (the bootstrap link's end, credits
  only), the next wait also looks again after a quarter of a second: the
  engine notices a vanished peer a grace period after its link ends, and
  nothing makes the fd readable at that moment.
"""
from __future__ import annotations

import asyncio
import concurrent.futures

from ..channel.endpoint import Endpoint
from ..errors import closed_error

#: Worker threads for long transfers, shared by every LoopIO of the process.
#: Generous on purpose: a transfer waits on its peer, so a small pool could
#: fill with senders whose receivers queue behind them.
_threads = concurrent.futures.ThreadPoolExecutor(256, thread_name_prefix="rdmamsg-loopio")

THREAD_RECHECK = 0.005       #: seconds between looks while a worker thread runs
GRACE_RECHECK = 0.25         #: after an empty wake-up (the engine's EOF grace is 0.2 s)


class LoopIO:
    """Send and receive whole messages on ``ep`` from ``loop``.  One sender
    and one receiver at a time (the caller serialises each side)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ep: Endpoint) -> None:
        self._loop, self._ep = loop, ep
        self._fd = ep.fileno()
        self.small = ep.fragment          #: messages up to this go on the loop
        self._waiters: list[asyncio.Future] = []
        self._watching = False
        self._in_threads = 0
        self._empty_wake = False
        self.closed = False

    # -- sending ------------------------------------------------------------------

    async def send(self, data) -> None:
        if memoryview(data).nbytes > self.small:
            await self._in_thread(self._ep.send, data, None)
            return
        while True:
            self._check()
            try:
                self._ep.send(data, 0)
                self._empty_wake = False
                return
            except TimeoutError:          # no credit now: a whole small message or nothing
                await self._ready()

    # -- receiving ----------------------------------------------------------------

    async def recv(self) -> bytes:
        """The next message (expected to be small)."""
        while True:
            self._check()
            try:
                msg = self._ep.recv(0)
                self._empty_wake = False
                return msg
            except TimeoutError:
                await self._ready()

    async def recv_into(self, buffer) -> int:
        """The next message into ``buffer``, which it must fill exactly."""
        n = memoryview(buffer).nbytes
        if n > self.small:
            got = await self._in_thread(self._ep.recv_into, buffer, None)
        else:
            while True:
                self._check()
                try:
                    got = self._ep.recv_into(buffer, 0)
                    self._empty_wake = False
                    break
                except TimeoutError:
                    await self._ready()
        if got != n:
            raise ValueError(f"expected a message of {n} bytes, got {got}")
        return got

    # -- waiting ------------------------------------------------------------------

    def _check(self) -> None:
        if self.closed:
            raise closed_error("connection")

    async def _in_thread(self, fn, *args):
        self._check()
        self._in_threads += 1
        try:
            return await asyncio.wrap_future(_threads.submit(fn, *args))
        finally:
            self._in_threads -= 1
            self._wake_all()          # it may have taken events meant for the loop

    async def _ready(self) -> None:
        """Until the fd may have news (or a recheck is due)."""
        timeout = None
        if self._in_threads:
            timeout = THREAD_RECHECK
        elif self._empty_wake:
            timeout = GRACE_RECHECK
        fut = self._loop.create_future()
        self._waiters.append(fut)
        if not self._watching:
            self._loop.add_reader(self._fd, self._on_readable)
            self._watching = True
        try:
            done, _ = await asyncio.wait((fut,), timeout=timeout)
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)
                if not self._waiters:
                    self._unwatch()
        self._empty_wake = bool(done) and timeout is None

    def _on_readable(self) -> None:
        self._unwatch()
        self._wake_all()

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            try:
                self._loop.remove_reader(self._fd)
            except (ValueError, OSError):   # the fd is already closed
                pass

    def close(self) -> None:
        """Stop watching and wake every waiter (each then raises); the caller
        closes the endpoint."""
        self.closed = True
        self._unwatch()
        self._wake_all()

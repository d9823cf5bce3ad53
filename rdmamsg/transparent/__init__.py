"""The transparent mode: unmodified programs' TCP connections to matching
addresses go over RDMA (``rdmamsg.patch``, ``python -m rdmamsg.run``).

    with rdmamsg.patch(match=["10.88.0.0/24"]):
        urllib.request.urlopen("http://10.88.0.1:8000/big").read()

It replaces ``socket.socket`` (connect, accept and listen paths, and so
socket.create_connection, socketserver, http.server/http.client, urllib) and
asyncio's loop.create_connection/create_server (asyncio streams and
protocols).  Everything else stays on the kernel.  Both ends must run
rdmamsg: the peer of a matching address must be an RDMA server or client.
"""
from __future__ import annotations

import socket
import threading
from typing import Any, Iterable

from ..channel.tcp import KernelSocket
from ..verbs.device import rdma_networks
from . import loop
from .rules import Matcher, Rule
from .sockets import TransparentSocket

_lock = threading.Lock()


class Patch:
    """What patch() returns: ``matcher``, ``undo()``, and ``with`` use."""

    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher

    def undo(self) -> None:
        unpatch()

    def __enter__(self) -> "Patch":
        return self

    def __exit__(self, *exc) -> None:
        self.undo()

    def __repr__(self) -> str:
        return f"<rdmamsg.Patch over RDMA: {self.matcher}>"


def patch(match: Iterable[str] | str | None = None, **options: Any) -> Patch:
    """Carry TCP connections to addresses that ``match`` names over RDMA.

    ``match``: rules as ``HOST[:PORT]``, ``CIDR[:PORT]`` or ``*:PORT``; by
    default the networks of the interfaces behind active RoCE ports.
    ``options`` are RdmaSocket options for every such connection: rdmamsg.Options
    fields, or ``protocol="rsocket"`` to speak librdmacm's rsockets (then a C
    program under librspreload.so is the other end).  Sockets made before the
    call stay kernel sockets.
    """
    if isinstance(match, str):
        match = [match]
    matcher = (Matcher.parse(match) if match is not None
               else Matcher(Rule((net,), None) for net in rdma_networks()))
    with _lock:
        if socket.socket is not KernelSocket and socket.socket is not TransparentSocket:
            raise RuntimeError(f"socket.socket was replaced by someone else ({socket.socket!r})")
        TransparentSocket.matcher, TransparentSocket.options = matcher, dict(options)
        socket.socket = TransparentSocket
        loop.install(matcher, dict(options))
    return Patch(matcher)


def unpatch() -> None:
    """Undo patch(): new sockets are kernel sockets again (open ones stay as they are)."""
    with _lock:
        if socket.socket is TransparentSocket:
            socket.socket = KernelSocket
        loop.uninstall()


__all__ = ["patch", "unpatch", "Patch", "Matcher", "Rule", "TransparentSocket"]

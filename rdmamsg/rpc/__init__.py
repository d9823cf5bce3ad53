"""msgpack RPC between hosts over rdmamsg endpoints.

    server = rdmamsg.rpc.Server(("10.88.0.1", 7480))

    @server.register
    def add(a, b):
        return a + b

    server.serve_forever()

    with rdmamsg.rpc.Client(("10.88.0.1", 7480), timeout=5) as client:
        assert client.call("add", 1, 2) == 3

Layers: ``wire`` (frames and payloads, no I/O), ``link`` (one connection's
I/O and keepalive), then ``server`` and ``client``.
"""
from __future__ import annotations

from ..errors import ProtocolError, RemoteError, UnknownMethodError
from .client import AsyncClient, Client
from .server import Server

__all__ = ["Server", "Client", "AsyncClient", "RemoteError", "UnknownMethodError", "ProtocolError"]

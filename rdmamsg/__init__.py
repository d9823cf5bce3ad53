"""rdmamsg: kernel-bypass, zero-copy messaging over RDMA verbs for Python.

    import rdmamsg
    with rdmamsg.listen(("10.88.0.1", 7471)) as ln, ln.accept() as ep:
        print(ep.recv())

    with rdmamsg.connect(("10.88.0.1", 7471)) as ep:
        ep.send(b"hello")

The layers, bottom up: ``verbs`` (devices, memory pool, CQ, QP), ``protocol``
(framing, credits, handshake; no I/O), ``transport`` (the pollers), and
``channel`` (endpoints, listen/connect), and ``stream`` (the socket facade:
``RdmaSocket``, ``create_connection``, ``create_server``), with
``transparent`` (``patch``, ``python -m rdmamsg.run``) above it; and ``rpc``
(msgpack RPC: ``rdmamsg.rpc.Server``, ``Client``, ``AsyncClient``).
"""
from __future__ import annotations

from .errors import (
    AuthenticationError,
    HandshakeError,
    InheritedError,
    NoDeviceError,
    PeerClosedError,
    PollerUnavailableError,
    PoolExhaustedError,
    PoolTimeoutError,
    ProtocolError,
    RdmaError,
    RemoteAccessError,
    RemoteError,
    UnknownMethodError,
    WorkCompletionError,
)

try:
    from .channel.bootstrap import Listener, connect, listen
    from .channel.endpoint import Endpoint
    from .channel.options import Options
    from .channel.remote import Grant, RemoteBuffer
    from .stream.socket import RdmaSocket, create_connection, create_server
    from .transparent import patch, unpatch
    from .transport.backend import poller_in_use
    from .verbs.context import configure_pool
    from .verbs.device import (DeviceInfo, GidEntry, LocalAddress, PortInfo, list_devices,
                               resolve_local)
    from .verbs.pool import Buffer, MemoryPool
    from .verbs.qp import QueuePair, RemoteQP, Timing
except NoDeviceError as _missing:
    # pyverbs does not import.  The package still imports, so that the errors
    # and ``python -m rdmamsg doctor`` work; using anything else says why.
    _why = _missing

    def __getattr__(name: str):
        if name in __all__:
            raise _why
        raise AttributeError(f"module 'rdmamsg' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "listen", "connect", "Listener", "RdmaSocket", "create_connection", "create_server", "patch", "unpatch", "Endpoint", "Options", "Grant", "RemoteBuffer",
    "list_devices", "resolve_local", "DeviceInfo", "PortInfo", "GidEntry", "LocalAddress",
    "MemoryPool", "Buffer", "QueuePair", "RemoteQP", "Timing", "configure_pool", "poller_in_use",
    "RdmaError", "WorkCompletionError", "RemoteAccessError", "ProtocolError", "HandshakeError", "AuthenticationError",
    "PeerClosedError", "PoolExhaustedError", "PoolTimeoutError", "NoDeviceError",
    "PollerUnavailableError", "RemoteError", "UnknownMethodError", "InheritedError",
]

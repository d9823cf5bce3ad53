"""The two sides of a two-host test: host 0 is the server, host 1 the client.

Both VMs collect the same tests in the same order; each test gets its own
TCP port (from its node id) for a rendezvous and small exchanges.
"""
from __future__ import annotations

import socket
import struct
import time
import zlib

import msgpack

CONNECT_WAIT = 180.0   # the peer may still be booting or behind by a test


class Pair:
    def __init__(self, index: int, self_ip: str, peer_ip: str, nodeid: str):
        self.index = index
        self.role = "server" if index == 0 else "client"
        self.self_ip, self.peer_ip = self_ip, peer_ip
        self.port = 30000 + zlib.crc32(nodeid.encode()) % 20000
        self.data_port = self.port + 1   # for the code under test
        self._sock: socket.socket | None = None
        self._listener: socket.socket | None = None

    @property
    def is_server(self) -> bool:
        return self.index == 0

    def _conn(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if self.is_server:
            ls = socket.create_server((self.self_ip, self.port), reuse_port=True)
            ls.settimeout(CONNECT_WAIT)
            self._listener = ls
            self._sock, _ = ls.accept()
        else:
            deadline = time.monotonic() + CONNECT_WAIT
            while True:
                try:
                    self._sock = socket.create_connection((self.peer_ip, self.port), timeout=5)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        self._sock.settimeout(CONNECT_WAIT)
        return self._sock

    def exchange(self, obj, timeout: float | None = None):
        """Send obj to the peer and return what the peer sent (a barrier too);
        ``timeout``: how long to wait for it, if not CONNECT_WAIT."""
        s = self._conn()
        s.settimeout(timeout or CONNECT_WAIT)
        data = msgpack.packb(obj, use_bin_type=True)
        s.sendall(struct.pack("!I", len(data)) + data)
        (n,) = struct.unpack("!I", self._recvn(s, 4))
        return msgpack.unpackb(self._recvn(s, n), raw=False)

    def barrier(self, timeout: float | None = None) -> None:
        self.exchange(None, timeout)

    @staticmethod
    def _recvn(s: socket.socket, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the peer host left the test")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        for s in (self._sock, self._listener):
            if s is not None:
                s.close()
        self._sock = self._listener = None


def connected(pair: Pair, **kw):
    """This host's endpoint: host 0 accepts, host 1 connects."""
    import rdmamsg

    if pair.is_server:
        with rdmamsg.listen((pair.self_ip, pair.data_port), **kw) as ln:
            pair.barrier()                              # listening
            return ln.accept(timeout=120)
    pair.barrier()
    return rdmamsg.connect((pair.peer_ip, pair.data_port), timeout=120, **kw)

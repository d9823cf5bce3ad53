"""The bootstrap's kernel TCP sockets.

They are made from the socket class as it was when rdmamsg was imported, so
the transparent mode (rdmamsg.patch, which replaces socket.socket) never
reroutes rdmamsg's own set-up connections over RDMA.
"""
from __future__ import annotations

import socket

KernelSocket = socket.socket


def dial(address: tuple[str, int], timeout: float | None,
         source_address: tuple[str, int] | None = None) -> socket.socket:
    """A connected TCP socket to ``address`` (each resolved address in turn)."""
    host, port = address
    last: OSError | None = None
    for family, type_, proto, _, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = KernelSocket(family, type_, proto)
        try:
            sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"no address found for {host!r}")


def serve(address: tuple[str, int], backlog: int) -> socket.socket:
    """A listening TCP socket on ``address`` (SO_REUSEADDR, as socket.create_server)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = KernelSocket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock

"""The socket class that patch() installs as socket.socket.

It is the kernel's socket until it connects to, or listens on, an address the
rules match.  From then on an RdmaSocket does the work: the kernel socket is
closed and every socket method goes to the RdmaSocket, so the object stays a
socket.socket for the program (isinstance, makefile, selectors via fileno).
"""
from __future__ import annotations

import errno
import logging
import socket
from typing import Any, Callable

from ..channel.tcp import KernelSocket
from ..stream.socket import RdmaSocket
from .rules import Matcher

log = logging.getLogger("rdmamsg.transparent")

#: Methods an RDMA-backed socket hands to its RdmaSocket.
_DELEGATED = ("send", "sendall", "sendmsg", "recv", "recv_into", "shutdown", "fileno",
              "getpeername", "getsockname", "setsockopt", "getsockopt", "settimeout",
              "gettimeout", "setblocking", "getblocking", "detach")


class TransparentSocket(KernelSocket):
    """socket.socket while patch() is in force (see the module's docstring)."""

    __slots__ = ("_rdma",)
    matcher: Matcher = Matcher(())
    options: dict[str, Any] = {}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._rdma: RdmaSocket | None = None

    def _eligible(self) -> bool:
        return (self._rdma is None and self.family == socket.AF_INET
                and self.type == socket.SOCK_STREAM)

    def _switch(self, rdma: RdmaSocket) -> None:
        """From now on ``rdma`` is this socket.  The kernel socket's fd is
        closed, which frees its port, but the object stays open."""
        _kernel_close(self)
        self._rdma = rdma

    # -- the paths that choose -------------------------------------------------------

    def connect(self, address) -> None:
        if not self._eligible():
            return super().connect(address)
        ip, port = _resolve(address)
        if not self.matcher.connects(ip, port):
            return super().connect(address)
        rdma = self._rdma_like_me()
        bound = KernelSocket.getsockname(self)
        self._switch(rdma)
        if bound[1]:
            rdma.bind(bound)
        rdma.connect((ip, port))     # a non-blocking connect completes here, before returning
        log.info("rdmamsg: connected to %s:%d over RDMA", ip, port)

    def connect_ex(self, address) -> int:
        try:
            self.connect(address)
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    def listen(self, backlog: int = 128) -> None:
        if not self._eligible():
            return super().listen(backlog)
        ip, port = KernelSocket.getsockname(self)
        if not self.matcher.listens(ip, port):
            return super().listen(backlog)
        rdma = self._rdma_like_me()
        self._switch(rdma)
        rdma.bind((ip, port))
        rdma.listen(backlog)
        log.info("rdmamsg: listening on %s:%d over RDMA", ip, port)

    def _rdma_like_me(self) -> RdmaSocket:
        rdma = RdmaSocket(**self.options)
        rdma.settimeout(KernelSocket.gettimeout(self))
        return rdma

    def accept(self):
        if self._rdma is None:
            return super().accept()
        conn, addr = self._rdma.accept()
        return adopt(conn, self.family), addr

    # -- the rest ---------------------------------------------------------------------

    def _real_close(self) -> None:
        if self._rdma is not None:
            self._rdma.close()
        _kernel_close(self)

    def sendfile(self, file, offset: int = 0, count: int | None = None) -> int:
        if self._rdma is None:
            return super().sendfile(file, offset, count)
        return self._sendfile_use_send(file, offset, count)   # no kernel fd to sendfile to

    def dup(self):
        if self._rdma is not None:
            raise OSError(errno.EOPNOTSUPP, "an RDMA-backed socket cannot be duplicated")
        return super().dup()

    @property
    def timeout(self) -> float | None:
        return self.gettimeout()

    @property
    def rdma(self) -> RdmaSocket | None:
        """The RdmaSocket doing the work, or None while this is a kernel socket."""
        return self._rdma

    def __repr__(self) -> str:
        if self._rdma is None:
            return super().__repr__()
        return f"<socket over {self._rdma!r}>"


def _delegate(name: str) -> Callable:
    kernel = getattr(KernelSocket, name)

    def method(self, *args, **kwargs):
        rdma = self._rdma
        if rdma is None:
            return kernel(self, *args, **kwargs)
        return getattr(rdma, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = kernel.__doc__
    return method


for _name in _DELEGATED:
    setattr(TransparentSocket, _name, _delegate(_name))


def adopt(rdma: RdmaSocket, family: int = socket.AF_INET) -> TransparentSocket:
    """A socket.socket object whose work ``rdma`` does (an accepted connection)."""
    sock = TransparentSocket(family, socket.SOCK_STREAM)
    sock._switch(rdma)
    return sock


def _kernel_close(sock: KernelSocket) -> None:
    socket._socket.socket.close(sock)      # noqa: SLF001 (the fd only: the object stays open)


def _resolve(address) -> tuple[str, int]:
    host, port = address[0], address[1]
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return host, port                  # the kernel's connect gives its own error
    return infos[0][4][0], port

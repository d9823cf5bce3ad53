"""asyncio under patch(): loop.create_connection and loop.create_server go
over RDMA (rdmamsg.aio) for matching addresses, so asyncio.open_connection,
asyncio.start_server and protocol code follow without change."""
from __future__ import annotations

import asyncio
import logging
import socket

from .. import aio
from .rules import Matcher

log = logging.getLogger("rdmamsg.transparent")

_Loop = asyncio.base_events.BaseEventLoop
_originals = {"create_connection": _Loop.create_connection, "create_server": _Loop.create_server}


def install(matcher: Matcher, options: dict) -> None:
    kernel_connect, kernel_serve = _originals["create_connection"], _originals["create_server"]

    async def create_connection(self, protocol_factory, host=None, port=None, *args, **kwargs):
        if host is not None and port is not None and not args and _plain(kwargs):
            infos = await self.getaddrinfo(host, port, family=socket.AF_INET,
                                           type=socket.SOCK_STREAM)
            ip = infos[0][4][0] if infos else host
            if matcher.connects(ip, int(port)):
                result = await aio.connect(self, protocol_factory, ip, int(port), **options)
                log.info("rdmamsg: asyncio connected to %s:%s over RDMA", ip, port)
                return result
        return await kernel_connect(self, protocol_factory, host, port, *args, **kwargs)

    async def create_server(self, protocol_factory, host=None, port=None, *args, **kwargs):
        if (host is None or isinstance(host, str)) and port is not None and not args and _plain(kwargs):
            ip = host or "0.0.0.0"
            if matcher.listens(ip, int(port)):
                server = aio.serve(self, protocol_factory, ip, int(port),
                                   backlog=kwargs.get("backlog", 100), **options)
                log.info("rdmamsg: asyncio listening on %s:%s over RDMA", ip, port)
                return server
        return await kernel_serve(self, protocol_factory, host, port, *args, **kwargs)

    _Loop.create_connection = create_connection
    _Loop.create_server = create_server


def uninstall() -> None:
    for name, fn in _originals.items():
        setattr(_Loop, name, fn)


def _plain(kwargs: dict) -> bool:
    """No TLS, no given socket, no family other than IPv4: what RDMA carries."""
    return (kwargs.get("ssl") is None and kwargs.get("sock") is None
            and kwargs.get("family", 0) in (0, socket.AF_INET))

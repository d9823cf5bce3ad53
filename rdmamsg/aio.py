"""asyncio streams over RDMA: the counterparts of asyncio.open_connection and
asyncio.start_server, giving asyncio's own StreamReader and StreamWriter.

    reader, writer = await rdmamsg.aio.open_connection("10.88.0.1", 7471)
    writer.write(b"ping\\n"); await writer.drain()
    print(await reader.readline())

Both ends must be rdmamsg (an RdmaSocket or these streams).  Options
(``channel="write"``, ``buffer_size``...) are rdmamsg.Options fields.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import Any, Awaitable, Callable

from .stream.socket import RdmaSocket, create_connection, create_server
from .stream.transport import RdmaTransport

LIMIT = 2 ** 16       # asyncio's default StreamReader limit

ClientCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "Awaitable[None] | None"]


async def open_connection(host: str, port: int, *, limit: int = LIMIT,
                          timeout: float | None = 60.0, **options: Any
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to an rdmamsg stream server; (reader, writer) as asyncio's.
    The handshake runs in the loop's executor, so the loop keeps running."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    transport, protocol = await connect(
        loop, lambda: asyncio.StreamReaderProtocol(reader, loop=loop), host, port,
        timeout=timeout, **options)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class Server(asyncio.AbstractServer):
    """What start_server returns (asyncio.Server's API): close(),
    wait_closed(), serve_forever(), ``sockets``, and ``async with``.  Each
    accepted connection gets an RdmaTransport and a ``protocol_factory()``."""

    def __init__(self, loop, sock: RdmaSocket,
                 protocol_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._loop, self._sock, self._factory = loop, sock, protocol_factory
        self._closed = loop.create_future()
        # Its own thread: on the loop's executor, clients of this same loop that
        # are connecting could take every worker and starve the accepts.
        self._acceptor = concurrent.futures.ThreadPoolExecutor(1, "rdmamsg-accept")
        self._accepting = loop.create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        # accept() runs the handshake, which may wait on a slow client, so it
        # runs in the executor; only once the listening fd is readable, and
        # with a time limit, so that close() never strands a thread in it.
        while self._sock.fileno() >= 0:
            await wait_readable(self._loop, self._sock.fileno())
            try:
                conn, _ = await self._loop.run_in_executor(self._acceptor, self._sock.accept)
            except OSError:                    # refused, timed out, or closed under us
                continue
            try:
                RdmaTransport(self._loop, conn, self._factory())
            except OSError:
                conn.close()

    @property
    def sockets(self) -> tuple[RdmaSocket, ...]:
        return () if self._sock.fileno() < 0 else (self._sock,)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._closed.done()

    def close(self) -> None:
        if not self._closed.done():
            self._sock.close()
            self._accepting.cancel()
            self._acceptor.shutdown(wait=False)
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def serve_forever(self) -> None:
        try:
            await asyncio.shield(self._closed)
        except asyncio.CancelledError:
            self.close()
            raise

    async def start_serving(self) -> None:
        pass                                  # serving from the start

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
        await self.wait_closed()


async def wait_readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Until ``fd`` is readable (a listener's, say: a client waits)."""
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def start_server(client_connected_cb: ClientCallback, host: str, port: int, *,
                       limit: int = LIMIT, backlog: int = 128, **options: Any) -> Server:
    """Serve rdmamsg streams on (host, port): ``client_connected_cb(reader,
    writer)`` (a coroutine function or a plain one) for each connection."""
    loop = asyncio.get_running_loop()

    def protocol() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return serve(loop, protocol, host, port, backlog=backlog, **options)


def serve(loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], asyncio.BaseProtocol],
          host: str | None, port: int, *, backlog: int = 128, **options: Any) -> Server:
    """A Server on (host, port) giving each connection ``protocol_factory()``
    (the counterpart of loop.create_server)."""
    sock = create_server((host or "0.0.0.0", port), backlog=backlog, **options)
    sock.settimeout(1.0)            # accepts in the acceptor thread never outlive close()
    return Server(loop, sock, protocol_factory)


async def connect(loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], asyncio.BaseProtocol],
                  host: str, port: int, *, timeout: float | None = 60.0, **options: Any
                  ) -> tuple[RdmaTransport, asyncio.BaseProtocol]:
    """(transport, protocol) connected to (host, port) (the counterpart of
    loop.create_connection); the handshake runs in the loop's executor."""
    sock = await loop.run_in_executor(
        None, functools.partial(create_connection, (host, port), timeout, **options))
    try:
        protocol = protocol_factory()
        return RdmaTransport(loop, sock, protocol), protocol
    except BaseException:
        sock.close()
        raise


__all__ = ["open_connection", "start_server", "Server", "serve", "connect", "wait_readable"]

"""The Comm, Connector and Listener of the ``rdma://`` backend.

A Comm owns one Endpoint.  Its messages travel as framing.py lays them out,
through a LoopIO on the running loop.  Connecting and accepting run the
rdmamsg handshake in a worker thread; a cancelled connect closes the
endpoint that thread goes on to make.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from typing import Any, Callable

import dask
from distributed.comm.addressing import parse_host_port, unparse_host_port
from distributed.comm.core import (BaseListener, Comm, CommClosedError, Connector,
                                   FatalCommClosedError)
from distributed.comm.utils import ensure_concrete_host, from_frames, to_frames
from distributed.protocol.utils import host_array

from ..aio import wait_readable
from ..channel.bootstrap import Listener as RdmaListenerSocket
from ..channel.bootstrap import connect as rdma_connect
from ..channel.endpoint import Endpoint
from ..errors import AuthenticationError
from . import framing
from .loopio import LoopIO
from .settings import connection_settings, default_host

log = logging.getLogger("rdmamsg.dask")
PREFIX = "rdma://"

#: The handshakes (connect, accept) and orderly closes, each a blocking call
#: of up to handshake_timeout (or linger), in threads of their own so that
#: none waits on another.
_handshakes = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="rdmamsg-dask-hs")


def _address(sockaddr) -> str:
    return PREFIX + unparse_host_port(*sockaddr[:2])


class RdmaComm(Comm):
    """One rdmamsg connection carrying Dask messages."""

    def __init__(self, ep: Endpoint, deserialize: bool = True) -> None:
        super().__init__(deserialize=deserialize)
        self._ep = ep
        self._io = LoopIO(asyncio.get_running_loop(), ep)
        self._local_addr = _address(ep.laddr)
        self._peer_addr = _address(ep.raddr)
        self._closed = False
        self._write_lock = asyncio.Lock()
        self.max_frame = min(dask.utils.parse_bytes(dask.config.get("distributed.comm.shard")),
                             ep.max_message)

    @property
    def local_address(self) -> str:
        return self._local_addr

    @property
    def peer_address(self) -> str:
        return self._peer_addr

    @property
    def extra_info(self) -> dict[str, Any]:
        return {"poller": self._ep.poller, "device": self._ep.local.device}

    def closed(self) -> bool:
        return self._closed

    # -- messages --------------------------------------------------------------------

    async def read(self, deserializers=None):
        if self._closed:
            raise CommClosedError(f"{self!r} is closed")
        try:
            frames, separate = framing.parse(await self._io.recv())
            for index, n in separate:
                buf = host_array(n)
                await self._io.recv_into(buf)
                frames[index] = buf
        except ValueError as exc:
            self.abort()
            raise CommClosedError(f"in {self!r}: the peer sent a malformed message: {exc}") \
                from exc
        except (OSError, EOFError) as exc:
            self._lost(exc)
        except BaseException:
            self.abort()       # cancelled part-way: what follows on the wire is unknown
            raise
        try:
            return await from_frames(frames, deserialize=self.deserialize,
                                     deserializers=deserializers,
                                     allow_offload=self.allow_offload)
        except EOFError as exc:
            self.abort()
            raise CommClosedError(f"in {self!r}: a truncated message") from exc

    async def write(self, msg, serializers=None, on_error: str = "message") -> int:
        if self._closed:
            raise CommClosedError(f"{self!r} is closed")
        frames = await to_frames(
            msg, allow_offload=self.allow_offload, serializers=serializers, on_error=on_error,
            context={"sender": self.local_info, "recipient": self.remote_info,
                     **self.handshake_options},
            frame_split_size=self.max_frame)
        head, separate = framing.plan(frames, self._io.small)
        async with self._write_lock:
            try:
                await self._io.send(head)
                for view in separate:
                    await self._io.send(view)
            except (OSError, EOFError) as exc:
                self._lost(exc)
            except BaseException:
                self.abort()   # part of a message may be on the wire
                raise
        return len(head) + sum(v.nbytes for v in separate)

    def _lost(self, exc: BaseException):
        closed_here = self._closed
        self.abort()
        if closed_here:
            raise CommClosedError(f"{self!r} was closed") from exc
        raise CommClosedError(f"in {self!r}: {type(exc).__name__}: {exc}") from exc

    # -- ending ----------------------------------------------------------------------

    async def close(self) -> None:
        """Close after what was written has reached the peer (up to the
        endpoint's linger)."""
        if self._closed:
            return
        self._closed = True
        self._io.close()
        loop = asyncio.get_running_loop()
        await asyncio.shield(loop.run_in_executor(_handshakes, self._ep.close))

    def abort(self) -> None:
        if self._closed and self._ep.closed:
            return
        self._closed = True
        self._io.close()
        self._ep.close(linger=0)


class RdmaConnector(Connector):
    prefix = PREFIX

    async def connect(self, address: str, deserialize: bool = True,
                      **connection_args) -> RdmaComm:
        host, port = parse_host_port(address)
        token, options = connection_settings(address, connection_args)
        timeout = dask.utils.parse_timedelta(
            dask.config.get("distributed.comm.timeouts.connect"), "seconds")
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(
            _handshakes, functools.partial(rdma_connect, (host, port), timeout, token, **options))
        try:
            ep = await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(_close_unclaimed)
            raise
        except AuthenticationError as exc:
            raise FatalCommClosedError(
                f"{PREFIX}{address} refused our token (distributed.comm.rdma.token): {exc}") \
                from exc
        return RdmaComm(ep, deserialize)


def _close_unclaimed(job: asyncio.Future) -> None:
    if not job.cancelled() and job.exception() is None:
        job.result().close(linger=0)


class RdmaListener(BaseListener):
    prefix = PREFIX

    def __init__(self, loc: str, handle_comm: Callable, deserialize: bool = True,
                 allow_offload: bool = True, default_host: str | None = None,
                 default_port: int = 0, **connection_args) -> None:
        super().__init__()
        self.ip, self.port = parse_host_port(loc, default_port)
        self.handle_comm = handle_comm
        self.deserialize = deserialize
        self.allow_offload = allow_offload
        self.default_host = default_host
        self._token, self._options = connection_settings(loc, connection_args)
        self._listener: RdmaListenerSocket | None = None
        self._accepting: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        backlog = int(dask.config.get("distributed.comm.socket-backlog"))
        self._listener = RdmaListenerSocket((self.ip or "0.0.0.0", self.port), self._token,
                                            backlog=backlog, **self._options)
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        listener = self._listener
        while not listener.closed:
            await wait_readable(loop, listener.fileno())
            job = loop.run_in_executor(_handshakes, listener.accept, 0)
            try:
                ep = await asyncio.shield(job)
            except asyncio.CancelledError:
                job.add_done_callback(_close_unclaimed)
                raise
            except (TimeoutError, OSError):    # taken by a refusal, or closed under us
                continue
            task = loop.create_task(self._serve(ep))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, ep: Endpoint) -> None:
        comm = RdmaComm(ep, self.deserialize)
        comm.allow_offload = self.allow_offload
        try:
            await self.on_connection(comm)
        except CommClosedError:
            log.info("connection from %s closed before the handshake completed",
                     comm.peer_address)
            return
        await self.handle_comm(comm)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            if self._accepting is not None:
                self._accepting.cancel()
            listener.close()
        self.abort_handshaking_comms()

    def get_host_port(self) -> tuple[str, int]:
        if self._listener is None:
            raise ValueError("invalid operation on a listener that is not started")
        return self._listener.address

    @property
    def listen_address(self) -> str:
        return self.prefix + unparse_host_port(*self.get_host_port())

    @property
    def contact_address(self) -> str:
        host, port = self.get_host_port()
        host = ensure_concrete_host(host, default_host=self.default_host or default_host())
        return self.prefix + unparse_host_port(host, port)

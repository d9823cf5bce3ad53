"""The server side of ``python -m rdmamsg bench``: one connection per test.

The client's first message names the test (msgpack ``{"test", "size", ...}``);
each test ends on a signal from the client, so that either side may run by
count or by duration:

  send_bw, write_bw   count what arrives until an empty message; reply with
                      the count and the time from the first message to the last.
  send_lat, write_lat echo until an empty message.
  rma_bw, rma_lat     expose a buffer; on rma_lat also write back each time
                      the client's write lands; until the client says done.
  stream_*            on the socket facade: read ``batch`` writes, send them
                      back, until the client closes.
  rpc_*               start an rdmamsg.rpc.Server (bench_rpc.py).
"""
from __future__ import annotations

import sys
import time

import msgpack

from ..channel.bootstrap import listen
from ..stream.socket import RdmaSocket
from .bench_rpc import serve_rpc


def count_messages(ep) -> dict:
    """Receive messages until an empty one: their count, bytes, and the seconds
    from the first to the last."""
    n = nbytes = 0
    first = last = 0.0
    while True:
        view = ep.recv_view(timeout=60)       # no copy
        got = len(view)
        view.release()
        if got == 0:
            break
        last = time.perf_counter()
        if n == 0:
            first = last
        n += 1
        nbytes += got
    return {"messages": n, "bytes": nbytes, "seconds": last - first}


def echo_messages(ep) -> None:
    """Send every message back, until an empty one."""
    while True:
        with ep.recv_view(timeout=60) as data:
            if not len(data):
                return
            ep.send(data)


def _stream(ep, size: int, batch: int) -> None:
    with RdmaSocket.from_endpoint(ep) as sock:
        buf = memoryview(bytearray(size))
        if batch == 1:
            _echo_stream(sock, buf)
            return
        while True:
            for i in range(batch):
                if not recv_exactly(sock, buf, eof_ok=i == 0):
                    return
            for _ in range(batch):
                sock.sendall(buf)


def _echo_stream(sock: RdmaSocket, buf: memoryview) -> None:
    """stream_lat's side: echo each ``buf``-sized write, as a tight socket
    loop would (methods bound once), until the client closes."""
    sendall, recv_into = sock.sendall, sock.recv_into
    size = buf.nbytes
    while True:
        n = recv_into(buf)
        if n != size:
            if not n:
                return
            recv_exactly(sock, buf[n:])
        sendall(buf)


def recv_exactly(sock: RdmaSocket, buf: memoryview, eof_ok: bool = False) -> bool:
    """Fill ``buf``; False at a clean end of stream before any byte (if ``eof_ok``)."""
    got = 0
    while got < buf.nbytes:
        n = sock.recv_into(buf[got:] if got else buf)
        if not n:
            if eof_ok and got == 0:
                return False
            raise EOFError("the stream ended early")
        got += n
    return True


def spin_until(buf: bytearray, tag: int, stop=None, timeout: float = 60.0) -> bool:
    """Spin until the last byte of ``buf`` is ``tag`` (True), or ``stop()``
    says to give up (False), checked every 10,000 spins."""
    deadline = time.monotonic() + timeout
    spins = 0
    while buf[-1] != tag:
        spins += 1
        if spins % 10_000 == 0:
            if stop is not None and stop():
                return False
            if time.monotonic() > deadline:
                raise TimeoutError("the peer's write did not arrive")
    return True


def _rma(ep, spec: dict) -> None:
    mine = bytearray(max(spec["size"], 1))
    with ep.expose(mine, "write") as grant:
        ep.send(grant.descriptor)
        if spec["test"] == "rma_lat":
            theirs = ep.recv(timeout=60)
            reply = bytearray(len(mine))
            i = 0
            while spin_until(mine, i % 255 + 1, ep.poll):
                reply[-1] = i % 255 + 1
                ep.write(theirs, reply, wait=False)
                i += 1
        ep.recv(timeout=3600)                     # the client is done


def serve_one(ep, bind: str, opts: dict) -> None:
    spec = msgpack.unpackb(ep.recv(timeout=60))
    test = spec.get("test")
    if test in ("rpc_lat", "rpc_rate", "rpc_rate_aio", "rpc_rate_threads"):
        serve_rpc(ep, bind, spec.get("handlers", "threads"), **opts)
    elif test in ("send_bw", "write_bw"):
        ep.send(msgpack.packb(count_messages(ep)))
    elif test in ("send_lat", "write_lat"):
        echo_messages(ep)
    elif test in ("rma_bw", "rma_lat"):
        _rma(ep, spec)
    elif test in ("stream_bw", "stream_lat"):
        _stream(ep, spec["size"], spec["batch"])
    else:
        ep.send(msgpack.packb({"error": f"unknown test {test!r}"}))


def serve(bind: str, port: int, count: int | None = None, **opts) -> None:
    """Serve tests, one connection each; stop after ``count`` of them (None: never)."""
    with listen((bind, port), **opts) as ln:
        print(f"rdmamsg bench server on {ln.address[0]}:{ln.address[1]}", flush=True)
        served = 0
        while count is None or served < count:
            with ln.accept() as ep:
                try:
                    serve_one(ep, bind, opts)
                except (ConnectionError, EOFError, TimeoutError) as exc:
                    print(f"bench server: client went away: {exc}", file=sys.stderr)
            served += 1

"""The client side of ``python -m rdmamsg bench``: one function per test
shape, each returning a result row (a dict).  See bench_serve.py for the
server's half of each.

  send_bw   ``size``-byte messages, back to back; the server's count and time.
  send_lat  ping-pong; one-way latency is half the round trip (as ib_send_lat).
  write_bw, write_lat   the same on the write channel; write_bw with a
            ring of WRITE_RING bytes so that a 1 MiB message is one write,
            write_lat with the default ring (on rxe under TCG, 64 B round
            trips through the 8 MiB ring took about 10 us longer).
  rma_bw    ep.write(wait=False) into a buffer the server exposes, back to
            back, then ep.flush(); timed by the client.  (Writes of more than
            8 KiB wait for each other: they are not copied.)
  rma_lat   ping-pong of ep.write(wait=False) into buffers both sides expose;
            each side spins on the last byte of its own buffer, as
            ib_write_lat does.
  stream_bw the socket facade as rsockets' rstream measures it: writes of
            ``size`` bytes, sent and then echoed back in batches; both
            directions' bytes over the whole time.
  stream_lat  ping-pong of ``size`` bytes on the facade; the mean one-way
            time (rstream's usec/xfer) and the median.
  send_lat_thread, send_bw_thread   send_lat and send_bw with the other end
            on a thread of this process (no bench server): what a client and
            a server in one process cost each other.
"""
from __future__ import annotations

import contextlib
import statistics
import threading
import time
from typing import Any, Callable, Iterator

import msgpack

from ..channel.bootstrap import connect, listen
from ..stream.socket import RdmaSocket
from .bench_serve import count_messages, echo_messages, recv_exactly, spin_until
from .budget import Budget
from .instrument import counted

WRITE_RING = 8 << 20
STREAM_BATCH = 64        #: stream_bw by duration: writes each way per round


def _channel(test: str, opts: dict) -> dict:
    if test == "write_bw":
        return {"channel": "write", "ring_size": WRITE_RING, **opts}
    if test == "write_lat":
        return {"channel": "write", **opts}
    return opts


def open_test(addr, test: str, spec: dict, opts: dict):
    ep = connect(addr, timeout=60, **_channel(test, opts))
    ep.send(msgpack.packb({"test": test, **spec}))
    return ep


def _rate(test: str, size: int, n: int, nbytes: int, secs: float, poller: str) -> dict:
    secs = secs or float("nan")
    return {"test": test, "size": size, "messages": n, "seconds": secs,
            "MB_per_s": nbytes / secs / 1e6, "msg_per_s": n / secs, "poller": poller}


def latency_row(test: str, size: int, samples: list[int], poller: str) -> dict:
    """Half-round-trip statistics of ``samples`` (ns), without the warm-up tenth."""
    one_way = sorted(s / 2000 for s in samples[len(samples) // 10:])
    return {"test": test, "size": size, "iters": len(samples),
            "median_us": statistics.median(one_way), "mean_us": statistics.fmean(one_way),
            "min_us": one_way[0],
            "p99_us": one_way[max(int(len(one_way) * 0.99) - 1, 0)], "poller": poller}


def _batches(budget: Budget, send, *args) -> int:
    """Call ``send(*args)`` 64 times between looks at the budget; how many calls."""
    budget.start()
    sent = 0
    while True:
        batch = 64 if budget.iters is None else min(64, budget.iters - sent)
        for _ in range(batch):
            send(*args)
        sent += batch
        if not budget.more(sent):
            return sent


def send_bw(addr, size: int, budget: Budget, test: str = "send_bw", **opts) -> dict:
    payload = bytes(size)
    with open_test(addr, test, {"size": size}, opts) as ep:
        _batches(budget, ep.send, payload)
        ep.send(b"")
        r = msgpack.unpackb(ep.recv(timeout=120))
        return _rate(test, size, r["messages"], r["bytes"], r["seconds"], ep.poller)


def send_lat(addr, size: int, budget: Budget, test: str = "send_lat", **opts) -> dict:
    with open_test(addr, test, {"size": size}, opts) as ep:
        return latency_row(test, size, _echoed(ep, size, budget), ep.poller)


def _echoed(ep, size: int, budget: Budget) -> list[int]:
    """Round trips of ``size`` bytes to an echoing peer (ns each), then the
    empty message that ends its echo."""
    payload = bytes(size)
    buf = bytearray(size)
    samples = []
    clock = time.perf_counter_ns
    budget.start()
    with counted():
        while budget.more(len(samples)):
            t0 = clock()
            ep.send(payload)
            ep.recv_into(buf, timeout=60)
            samples.append(clock() - t0)
    ep.send(b"")
    return samples


@contextlib.contextmanager
def _peer_thread(host: str, serve: Callable[[Any], Any], opts: dict) -> Iterator[tuple]:
    """(endpoint, outcome): an endpoint to a thread of this process that runs
    ``serve(its endpoint)``; once the block is left, outcome[0] is what it
    returned (or it raised)."""
    outcome: list = []

    def run(ln) -> None:
        try:
            with ln.accept(60) as peer:
                outcome.append(serve(peer))
        except BaseException as exc:        # noqa: BLE001 (raised by the caller)
            outcome.append(exc)

    with listen((host, 0), **opts) as ln:
        thread = threading.Thread(target=run, args=(ln,), name="rdmamsg-bench-peer")
        thread.start()
        try:
            with connect((host, ln.address[1]), timeout=60, **opts) as ep:
                yield ep, outcome
        finally:
            thread.join(120)
    if thread.is_alive():
        raise TimeoutError("the bench's peer thread did not finish")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]


def send_lat_thread(host: str, size: int, budget: Budget, **opts) -> dict:
    with _peer_thread(host, echo_messages, opts) as (ep, _):
        samples, poller = _echoed(ep, size, budget), ep.poller
    return latency_row("send_lat_thread", size, samples, poller)


def send_bw_thread(host: str, size: int, budget: Budget, **opts) -> dict:
    payload = bytes(size)
    with _peer_thread(host, count_messages, opts) as (ep, outcome):
        _batches(budget, ep.send, payload)
        ep.send(b"")
        poller = ep.poller
    r = outcome[0]
    return _rate("send_bw_thread", size, r["messages"], r["bytes"], r["seconds"], poller)


def rma_bw(addr, size: int, budget: Budget, **opts) -> dict:
    payload = bytes(size)
    with open_test(addr, "rma_bw", {"size": size}, opts) as ep:
        desc = ep.recv(timeout=60)
        t0 = time.perf_counter()
        n = _batches(budget, ep.write, desc, payload, 0, None, False)   # wait=False
        ep.flush()
        secs = time.perf_counter() - t0
        ep.send(b"done")
        return _rate("rma_bw", size, n, n * size, secs, ep.poller)


def rma_lat(addr, size: int, budget: Budget, **opts) -> dict:
    mine = bytearray(size)
    payload = bytearray(size)
    samples = []
    clock = time.perf_counter_ns
    with open_test(addr, "rma_lat", {"size": size}, opts) as ep:
        theirs = ep.recv(timeout=60)
        with ep.expose(mine, "write") as grant:
            ep.send(grant.descriptor)
            budget.start()
            while budget.more(len(samples)):
                tag = len(samples) % 255 + 1
                payload[-1] = tag
                t0 = clock()
                ep.write(theirs, payload, wait=False)
                spin_until(mine, tag)
                samples.append(clock() - t0)
            ep.send(b"done")
        return latency_row("rma_lat", size, samples, ep.poller)


def stream(addr, size: int, budget: Budget, test: str, **opts) -> dict:
    """stream_bw or stream_lat, in rstream's shape (see the module's docstring)."""
    if test == "stream_lat":
        batch = 1
    else:   # by count: all writes in one round, as rstream -C N -I 1
        batch = budget.iters if budget.iters is not None else STREAM_BATCH
    payload = bytes(size)
    buf = memoryview(bytearray(size))
    ep = open_test(addr, test, {"size": size, "batch": batch}, opts)
    with RdmaSocket.from_endpoint(ep) as sock:
        if test == "stream_lat":
            samples, secs = _ping_pong(sock, payload, buf, budget)
            r = latency_row(test, size, samples, ep.poller)
            r["mean_us"] = secs * 1e6 / len(samples) / 2   # the whole run, as rstream's
            return r
        budget.start()
        t0 = time.perf_counter()
        done = 0
        while budget.more(done * batch):
            for _ in range(batch):
                sock.sendall(payload)
            for _ in range(batch):
                recv_exactly(sock, buf)
            done += 1
            if budget.iters is not None:
                break
        secs = time.perf_counter() - t0
        n = 2 * batch * done
        return _rate(test, size, n, n * size, secs, ep.poller)


def _ping_pong(sock: RdmaSocket, payload: bytes, buf: memoryview,
               budget: Budget) -> tuple[list[int], float]:
    """stream_lat's loop, written as a tight socket loop would be (methods
    bound once, the budget looked at every 64 round trips), so that it
    measures the facade rather than the harness; (samples in ns, seconds)."""
    sendall, recv_into = sock.sendall, sock.recv_into
    size = buf.nbytes
    samples: list[int] = []
    add, clock = samples.append, time.perf_counter_ns
    budget.start()
    t0 = clock()
    while budget.more(len(samples)):
        for _ in range(64 if budget.iters is None else min(64, budget.iters - len(samples))):
            t = clock()
            sendall(payload)
            n = recv_into(buf)
            if n != size:
                recv_exactly(sock, buf[n:])
            add(clock() - t)
    return samples, (clock() - t0) / 1e9

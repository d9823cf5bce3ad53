"""The RPC rows of ``python -m rdmamsg bench``.

  rpc_lat   calls of a ``size``-byte echo, one at a time; the round trip
            (call to result), median and p99.
  rpc_rate  echo calls of ``size`` bytes with ``OUTSTANDING`` in flight
            (Client.call_async); calls per second.
  rpc_rate_aio      the same through AsyncClient: OUTSTANDING tasks, each
            awaiting one call after another.
  rpc_rate_threads  THREADS threads, each calling Client.call one call after
            another, on one shared client.
  rpc_lat_inproc    rpc_lat with the Server in the client's own process (on
            its own threads); it needs no bench server.

The bench server answers either by starting an rdmamsg.rpc.Server (in the
handlers mode the client asks for: ``bench --rpc-handlers``) on a port of
its own, which it names to the client over the control endpoint, and stops
it when the client says it is done.
"""
from __future__ import annotations

import asyncio
import collections
import statistics
import threading
import time

import msgpack

from ..rpc import AsyncClient, Client, Server
from ..transport.backend import poller_in_use
from .budget import Budget
from .instrument import counted

OUTSTANDING = 32
THREADS = 8


def serve_rpc(ep, bind: str, handlers: str, **opts) -> None:
    """The server's side of either RPC test, on control endpoint ``ep``;
    ``handlers`` is the Server's mode, as the client asked."""
    with Server((bind, 0), handlers=handlers, **opts) as server:
        server.register("echo", lambda data: data)
        server.start()
        ep.send(msgpack.packb({"port": server.address[1]}))
        ep.recv(timeout=3600)                     # the client is done


def _client(ep, host: str, **opts) -> Client:
    port = msgpack.unpackb(ep.recv(timeout=60))["port"]
    return Client((host, port), timeout=60, **opts)


def rpc_lat(ep, host: str, size: int, budget: Budget, **opts) -> dict:
    """The client's side of rpc_lat, on control endpoint ``ep`` (the test named)."""
    with _client(ep, host, **opts) as client:
        row = _round_trips(client, "rpc_lat", size, budget, ep.poller)
    ep.send(b"done")
    return row


def rpc_lat_inproc(host: str, size: int, budget: Budget, handlers: str, **opts) -> dict:
    """rpc_lat against a Server in this process, listening on ``host``."""
    with Server((host, 0), handlers=handlers, **opts) as server:
        server.register("echo", lambda data: data)
        server.start()
        with Client((host, server.address[1]), timeout=60, **opts) as client:
            return _round_trips(client, "rpc_lat_inproc", size, budget, poller_in_use())


def _round_trips(client: Client, test: str, size: int, budget: Budget, poller: str) -> dict:
    payload = bytes(size)
    clock = time.perf_counter_ns
    samples = []
    budget.start()
    with counted():
        while budget.more(len(samples)):
            t0 = clock()
            client.call("echo", payload)
            samples.append(clock() - t0)
    rtt = sorted(s / 1000 for s in samples[len(samples) // 10:])   # skip the warm-up tenth
    return {"test": test, "size": size, "iters": len(samples),
            "rtt_median_us": statistics.median(rtt), "rtt_min_us": rtt[0],
            "rtt_p99_us": rtt[max(int(len(rtt) * 0.99) - 1, 0)], "poller": poller}


def rpc_rate(ep, host: str, size: int, budget: Budget, **opts) -> dict:
    """The client's side of rpc_rate, on control endpoint ``ep`` (the test named)."""
    payload = bytes(size)
    with _client(ep, host, **opts) as client:
        budget.start()
        t0 = time.perf_counter()
        window = collections.deque(client.call_async("echo", payload) for _ in range(OUTSTANDING))
        done = 0
        while True:
            window.popleft().result()
            done += 1
            if not budget.more(done + len(window)):
                break
            window.append(client.call_async("echo", payload))
        secs = time.perf_counter() - t0
        for fut in window:
            fut.result()
    ep.send(b"done")
    return _rate_row("rpc_rate", size, OUTSTANDING, done, secs, ep.poller)


def rpc_rate_aio(ep, host: str, size: int, budget: Budget, **opts) -> dict:
    """The client's side of rpc_rate_aio: OUTSTANDING tasks on one AsyncClient."""
    port = msgpack.unpackb(ep.recv(timeout=60))["port"]
    done, secs = asyncio.run(_aio_calls((host, port), bytes(size), budget, opts))
    ep.send(b"done")
    return _rate_row("rpc_rate_aio", size, OUTSTANDING, done, secs, ep.poller)


async def _aio_calls(address, payload: bytes, budget: Budget, opts: dict) -> tuple[int, float]:
    done = 0

    async def caller() -> None:
        nonlocal done
        while budget.more(done):
            await client.call("echo", payload)
            done += 1

    async with AsyncClient(address, timeout=60, **opts) as client:
        budget.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(OUTSTANDING)))
        return done, time.perf_counter() - t0


def rpc_rate_threads(ep, host: str, size: int, budget: Budget, **opts) -> dict:
    """The client's side of rpc_rate_threads: THREADS threads share one Client."""
    payload = bytes(size)
    lock = threading.Lock()
    done = 0
    errors: list[BaseException] = []

    def caller() -> None:
        nonlocal done
        try:
            while True:
                with lock:
                    if not budget.more(done):
                        return
                client.call("echo", payload)
                with lock:
                    done += 1
        except BaseException as exc:         # noqa: BLE001 (raised by the main thread)
            errors.append(exc)

    with _client(ep, host, **opts) as client:
        threads = [threading.Thread(target=caller) for _ in range(THREADS)]
        budget.start()
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        secs = time.perf_counter() - t0
    ep.send(b"done")
    if errors:
        raise errors[0]
    return _rate_row("rpc_rate_threads", size, THREADS, done, secs, ep.poller)


def _rate_row(test: str, size: int, outstanding: int, done: int, secs: float,
              poller: str) -> dict:
    return {"test": test, "size": size, "outstanding": outstanding, "calls": done,
            "seconds": secs, "calls_per_s": done / secs, "poller": poller}

"""The RPC rows of ``python -m rdmamsg bench``.

  rpc_lat   calls of a ``size``-byte echo, one at a time; the round trip
            (call to result), median and p99.
  rpc_rate  echo calls of ``size`` bytes with ``OUTSTANDING`` in flight;
            calls per second.

The bench server answers either by starting an rdmamsg.rpc.Server (in the
handlers mode the client asks for: ``bench --rpc-handlers``) on a port of
its own, which it names to the client over the control endpoint, and stops
it when the client says it is done.
"""
from __future__ import annotations

import collections
import statistics
import time

import msgpack

from ..rpc import Client, Server
from .budget import Budget

OUTSTANDING = 32


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
    payload = bytes(size)
    clock = time.perf_counter_ns
    samples = []
    with _client(ep, host, **opts) as client:
        budget.start()
        while budget.more(len(samples)):
            t0 = clock()
            client.call("echo", payload)
            samples.append(clock() - t0)
    ep.send(b"done")
    rtt = sorted(s / 1000 for s in samples[len(samples) // 10:])   # skip the warm-up tenth
    return {"test": "rpc_lat", "size": size, "iters": len(samples),
            "rtt_median_us": statistics.median(rtt), "rtt_min_us": rtt[0],
            "rtt_p99_us": rtt[max(int(len(rtt) * 0.99) - 1, 0)], "poller": ep.poller}


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
    return {"test": "rpc_rate", "size": size, "outstanding": OUTSTANDING, "calls": done,
            "seconds": secs, "calls_per_s": done / secs, "poller": ep.poller}

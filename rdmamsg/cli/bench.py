"""``python -m rdmamsg bench``: a perftest for rdmamsg itself.

    python -m rdmamsg bench --server [--bind IP] [--port N]
    python -m rdmamsg bench --client HOST [--port N] [--test send_bw,send_lat,write_bw,...]
                            [--size 64,4096,...] [--duration S | --iters N] [--json]

The server runs every test a client asks for, one connection per test.  The
client's first message names the test (msgpack); then:

  send_bw   the client sends ``size``-byte messages for the duration; an empty
            message ends the run; the server replies with what it counted, timed
            from the first message to the last as it received them.
  send_lat  ping-pong of ``size``-byte messages; one-way latency is half the
            round trip (as perftest's ib_send_lat reports it).
  write_bw, write_lat   the same on the write channel (channel="write"), with
            a ring of WRITE_RING bytes so that a 1 MiB message is one write.
  rma_bw    ep.write() into a buffer the server exposes, one write after
            another for the duration, timed by the client (each write returns
            once the server's device has it).
  rma_lat   ping-pong of ep.write() into buffers both sides expose; each side
            spins on the last byte of its own buffer, as ib_write_lat does.
  stream_bw the socket facade (RdmaSocket) as rsockets' rstream measures it:
            the client sends ``iters`` writes of ``size`` bytes, the server
            sends them back; both directions' bytes over the whole time.
  stream_lat  ping-pong of ``size`` bytes on the facade, ``iters`` times; the
            mean one-way time (as rstream's usec/xfer) and the median.
  rpc_lat, rpc_rate   rdmamsg.rpc echo calls (see bench_rpc.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import msgpack

from ..channel.bootstrap import connect, listen
from ..stream.socket import RdmaSocket
from .bench_rpc import rpc_lat, rpc_rate, serve_rpc

TESTS = ("send_bw", "send_lat", "write_bw", "write_lat", "rma_bw", "rma_lat", "stream_bw",
         "stream_lat", "rpc_lat", "rpc_rate")
WRITE_RING = 8 << 20
DEFAULT_PORT = 18515 + 1   # beside perftest's default port


def _serve_one(ep, bind: str, opts: dict) -> None:
    spec = msgpack.unpackb(ep.recv(timeout=60))
    if spec["test"] in ("rpc_lat", "rpc_rate"):
        serve_rpc(ep, bind, **opts)
    elif spec["test"] in ("send_bw", "write_bw"):
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
        ep.send(msgpack.packb({"messages": n, "bytes": nbytes, "seconds": last - first}))
    elif spec["test"] in ("send_lat", "write_lat"):
        for _ in range(spec["iters"]):
            with ep.recv_view(timeout=60) as data:
                ep.send(data)
    elif spec["test"] in ("rma_bw", "rma_lat"):
        mine = bytearray(max(spec["size"], 1))
        with ep.expose(mine, "write") as grant:
            ep.send(grant.descriptor)
            if spec["test"] == "rma_lat":
                _ping_pong(ep, ep.recv(timeout=60), mine, spec["size"], spec["iters"], False)
            ep.recv(timeout=600)                  # the client is done
    elif spec["test"] in ("stream_bw", "stream_lat"):
        with RdmaSocket.from_endpoint(ep) as sock:
            buf = memoryview(bytearray(spec["size"]))
            rounds, count = (1, spec["iters"]) if spec["test"] == "stream_bw" else (spec["iters"], 1)
            for _ in range(rounds):
                for _ in range(count):
                    _recv_exactly(sock, buf)
                for _ in range(count):
                    sock.sendall(buf)
    else:
        ep.send(msgpack.packb({"error": f"unknown test {spec['test']!r}"}))


def _recv_exactly(sock: RdmaSocket, buf: memoryview) -> None:
    got = 0
    while got < buf.nbytes:
        n = sock.recv_into(buf[got:])
        if not n:
            raise EOFError("the stream ended early")
        got += n


def _ping_pong(ep, theirs: bytes, mine: bytearray, size: int, iters: int, first: bool,
               clock=None) -> list[int]:
    """``iters`` round trips of ep.write; each side waits for the last byte of
    its own buffer to turn to the round's tag.  The client (``first``) writes
    first and, given ``clock``, returns the round-trip times."""
    payload = bytearray(max(size, 1))
    samples = []
    for i in range(iters):
        tag = i % 255 + 1
        payload[-1] = tag
        t0 = clock() if clock else 0
        if first:
            ep.write(theirs, payload)
        _spin_until(mine, tag)
        if not first:
            ep.write(theirs, payload)
        elif clock:
            samples.append(clock() - t0)
    return samples


def _spin_until(buf: bytearray, tag: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    spins = 0
    while buf[-1] != tag:
        spins += 1
        if spins % 10_000 == 0 and time.monotonic() > deadline:
            raise TimeoutError("the peer's write did not arrive")


def serve(bind: str, port: int, once: bool = False, **opts) -> None:
    with listen((bind, port), **opts) as ln:
        print(f"rdmamsg bench server on {ln.address[0]}:{ln.address[1]}", flush=True)
        while True:
            with ln.accept() as ep:
                try:
                    _serve_one(ep, bind, opts)
                except (ConnectionError, EOFError, TimeoutError) as exc:
                    print(f"bench server: client went away: {exc}", file=sys.stderr)
            if once:
                return


def _channel(test: str, opts: dict) -> dict:
    if test.startswith("write"):
        return {"channel": "write", "ring_size": WRITE_RING, **opts}
    return opts


def send_bw(host: str, port: int, size: int, duration: float, test: str = "send_bw",
            **opts) -> dict:
    payload = bytes(size)
    with connect((host, port), timeout=60, **_channel(test, opts)) as ep:
        ep.send(msgpack.packb({"test": test, "size": size}))
        end = time.perf_counter() + duration
        sent = 0
        while True:
            for _ in range(64):
                ep.send(payload)
            sent += 64
            if time.perf_counter() >= end:
                break
        ep.send(b"")
        r = msgpack.unpackb(ep.recv(timeout=120))
        poller = ep.poller
    secs = r["seconds"] or float("nan")
    return {"test": test, "size": size, "messages": r["messages"], "seconds": secs,
            "MB_per_s": r["bytes"] / secs / 1e6, "msg_per_s": r["messages"] / secs,
            "poller": poller}


def send_lat(host: str, port: int, size: int, iters: int, test: str = "send_lat",
             **opts) -> dict:
    payload = bytes(size)
    buf = bytearray(max(size, 1))
    samples = []
    with connect((host, port), timeout=60, **_channel(test, opts)) as ep:
        ep.send(msgpack.packb({"test": test, "size": size, "iters": iters}))
        clock = time.perf_counter_ns
        for _ in range(iters):
            t0 = clock()
            ep.send(payload)
            ep.recv_into(buf, timeout=60)
            samples.append(clock() - t0)
        poller = ep.poller
    return _latency(test, size, iters, samples, poller)


def rma_bw(host: str, port: int, size: int, duration: float, **opts) -> dict:
    payload = bytes(size)
    with connect((host, port), timeout=60, **opts) as ep:
        ep.send(msgpack.packb({"test": "rma_bw", "size": size}))
        desc = ep.recv(timeout=60)
        n = 0
        t0 = time.perf_counter()
        end = t0 + duration
        while True:
            for _ in range(64):
                ep.write(desc, payload)
            n += 64
            now = time.perf_counter()
            if now >= end:
                break
        ep.send(b"done")
        poller = ep.poller
    secs = now - t0
    return {"test": "rma_bw", "size": size, "messages": n, "seconds": secs,
            "MB_per_s": n * size / secs / 1e6, "msg_per_s": n / secs, "poller": poller}


def rma_lat(host: str, port: int, size: int, iters: int, **opts) -> dict:
    mine = bytearray(max(size, 1))
    with connect((host, port), timeout=60, **opts) as ep:
        ep.send(msgpack.packb({"test": "rma_lat", "size": size, "iters": iters}))
        theirs = ep.recv(timeout=60)
        with ep.expose(mine, "write") as grant:
            ep.send(grant.descriptor)
            samples = _ping_pong(ep, theirs, mine, size, iters, True, time.perf_counter_ns)
            ep.send(b"done")
        poller = ep.poller
    return _latency("rma_lat", size, iters, samples, poller)


def stream(host: str, port: int, size: int, iters: int, test: str, **opts) -> dict:
    """stream_bw or stream_lat, in rstream's shape (see the module's docstring)."""
    payload = bytes(size)
    buf = memoryview(bytearray(size))
    rounds, count = (1, iters) if test == "stream_bw" else (iters, 1)
    samples = []
    clock = time.perf_counter_ns
    ep = connect((host, port), timeout=60, **opts)
    ep.send(msgpack.packb({"test": test, "size": size, "iters": iters}))
    with RdmaSocket.from_endpoint(ep) as sock:
        t0 = clock()
        for _ in range(rounds):
            t = clock()
            for _ in range(count):
                sock.sendall(payload)
            for _ in range(count):
                _recv_exactly(sock, buf)
            samples.append(clock() - t)
        secs = (clock() - t0) / 1e9
        poller = ep.poller
    if test == "stream_bw":
        return {"test": test, "size": size, "messages": 2 * count, "seconds": secs,
                "MB_per_s": 2 * count * size / secs / 1e6, "msg_per_s": 2 * count / secs,
                "poller": poller}
    r = _latency(test, size, iters, samples, poller)
    r["mean_us"] = secs * 1e6 / iters / 2
    return r


def _latency(test: str, size: int, iters: int, samples: list[int], poller: str) -> dict:
    one_way = sorted(s / 2000 for s in samples[iters // 10:])   # skip the warm-up tenth
    return {"test": test, "size": size, "iters": iters,
            "median_us": statistics.median(one_way), "min_us": one_way[0],
            "p99_us": one_way[int(len(one_way) * 0.99) - 1], "poller": poller}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rdmamsg bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    role = ap.add_mutually_exclusive_group(required=True)
    role.add_argument("--server", action="store_true")
    role.add_argument("--client", metavar="HOST")
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--once", action="store_true", help="server: serve one test, then exit")
    ap.add_argument("--test", default="send_bw,send_lat")
    ap.add_argument("--size", default="64,4096,65536,1048576")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per bandwidth test")
    ap.add_argument("--iters", type=int, default=5000, help="round trips per latency test; writes each way in stream_bw")
    ap.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE",
                    help="an endpoint option (rdmamsg.Options), e.g. spin_us=200; repeatable")
    ap.add_argument("--json", action="store_true", help="print JSON lines, not a table")
    args = ap.parse_args(argv)
    try:
        opts = {k: float(v) if "." in v else int(v)
                for k, v in (o.split("=", 1) for o in args.opt)}
    except ValueError:
        ap.error("--opt takes NAME=NUMBER")
    if args.server:
        serve(args.bind, args.port, args.once, **opts)
        return 0
    tests = args.test.split(",")
    bad = set(tests) - set(TESTS)
    if bad:
        ap.error(f"unknown test(s) {', '.join(sorted(bad))}; choose from {', '.join(TESTS)}")
    rows = []
    for test in tests:
        for size in (int(s) for s in args.size.split(",")):
            if test.startswith("rpc"):
                with connect((args.client, args.port), timeout=60) as ep:
                    r = (rpc_lat(ep, args.client, size, args.iters, **opts) if test == "rpc_lat"
                         else rpc_rate(ep, args.client, size, args.duration, **opts))
            elif test == "rma_bw":
                r = rma_bw(args.client, args.port, size, args.duration, **opts)
            elif test == "rma_lat":
                r = rma_lat(args.client, args.port, size, args.iters, **opts)
            elif test.startswith("stream"):
                r = stream(args.client, args.port, size, args.iters, test, **opts)
            elif test.endswith("_bw"):
                r = send_bw(args.client, args.port, size, args.duration, test, **opts)
            else:
                r = send_lat(args.client, args.port, size, args.iters, test, **opts)
            rows.append(r)
            if args.json:
                print(json.dumps(r), flush=True)
            elif test == "rpc_lat":
                print(f"{test:<9} {size:>9} B  round trip median {r['rtt_median_us']:8.1f} us  "
                      f"p99 {r['rtt_p99_us']:8.1f} us  ({r['poller']})", flush=True)
            elif test == "rpc_rate":
                print(f"{test:<9} {size:>9} B  {r['calls_per_s']:10.0f} calls/s with "
                      f"{r['outstanding']} outstanding  ({r['poller']})", flush=True)
            elif test.endswith("_bw"):
                print(f"{test:<9} {size:>9} B  {r['MB_per_s']:10.2f} MB/s  "
                      f"{r['msg_per_s']:10.0f} msg/s  ({r['poller']})", flush=True)
            else:
                print(f"{test:<9} {size:>9} B  median {r['median_us']:8.1f} us  "
                      f"p99 {r['p99_us']:8.1f} us  ({r['poller']})", flush=True)
    return 0

"""``python -m rdmamsg bench``: a perftest for rdmamsg itself.

    python -m rdmamsg bench --server [--bind IP] [--port N] [--count N]
    python -m rdmamsg bench --client HOST [--port N] [--test send_bw,send_lat,...]
                            [--size 64,4096,... | --sweep] [--duration S | --iters N]
                            [--json] [--plot OUT.png [--compare FILE ...]]

The server runs every test a client asks for, one connection per test.  Each
test runs at each size, for ``--iters`` messages (round trips for latency
tests) or for ``--duration`` seconds; by default, bandwidth tests run 5 s
and latency tests 5000 round trips.  Latency is one-way (half the round
trip, as perftest reports it), except rpc_lat's, which is the call's round
trip.  ``--plot`` draws throughput and latency against message size;
``--compare`` adds perftest's or rstream's output (their text, as printed)
or rows of JSON to the plot.

Tests (see bench_client.py): send_bw, send_lat, write_bw, write_lat,
rma_bw, rma_lat (ep.write), stream_bw, stream_lat (the socket facade),
rpc_lat, rpc_rate, rpc_rate_aio, rpc_rate_threads (rdmamsg.rpc); and, with
both ends in this process (no server needed): send_lat_thread,
send_bw_thread, rpc_lat_inproc.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import bench_client as bc
from . import bench_rpc
from .bench_serve import serve
from .budget import Budget, Progress

TESTS = ("send_bw", "send_lat", "write_bw", "write_lat", "rma_bw", "rma_lat", "stream_bw",
         "stream_lat", "rpc_lat", "rpc_rate", "rpc_rate_aio", "rpc_rate_threads",
         "send_lat_thread", "send_bw_thread", "rpc_lat_inproc")
BANDWIDTH = ("send_bw", "write_bw", "rma_bw", "stream_bw", "rpc_rate", "rpc_rate_aio",
             "rpc_rate_threads", "send_bw_thread")
RPC_SERVED = ("rpc_lat", "rpc_rate", "rpc_rate_aio", "rpc_rate_threads")
DEFAULT_PORT = 18515 + 1   # beside perftest's default port
SWEEP = tuple(1 << k for k in range(1, 24, 2))   # 2 B .. 8 MiB, as perftest -a steps


def run_test(test: str, host: str, port: int, size: int, budget: Budget, opts: dict,
             handlers: str = "threads") -> dict:
    addr = (host, port)
    if test in RPC_SERVED:
        with bc.open_test(addr, test, {"size": size, "handlers": handlers}, {}) as ep:
            fn = getattr(bench_rpc, test)
            return {**fn(ep, host, size, budget, **opts), "handlers": handlers}
    if test == "rpc_lat_inproc":
        return {**bench_rpc.rpc_lat_inproc(host, size, budget, handlers, **opts),
                "handlers": handlers}
    if test == "send_lat_thread":
        return bc.send_lat_thread(host, size, budget, **opts)
    if test == "send_bw_thread":
        return bc.send_bw_thread(host, size, budget, **opts)
    if test == "rma_bw":
        return bc.rma_bw(addr, size, budget, **opts)
    if test == "rma_lat":
        return bc.rma_lat(addr, size, budget, **opts)
    if test.startswith("stream"):
        return bc.stream(addr, size, budget, test, **opts)
    if test.endswith("_bw"):
        return bc.send_bw(addr, size, budget, test, **opts)
    return bc.send_lat(addr, size, budget, test, **opts)


def row_text(r: dict) -> str:
    """One result as a line of the table."""
    head = f"{r['test']:<16} {r['size']:>9}  "
    if r["test"].startswith("rpc_lat"):
        return head + (f"{'round trip':>12} {r['rtt_median_us']:10.1f} us median "
                       f"{r['rtt_p99_us']:10.1f} us p99  {r['poller']}, {r['handlers']} handlers")
    if r["test"].startswith("rpc_rate"):
        return head + (f"{r['calls_per_s']:12.0f} calls/s ({r['outstanding']} outstanding)"
                       f"{'':>12}  {r['poller']}, {r['handlers']} handlers")
    if "MB_per_s" in r:
        return head + (f"{r['MB_per_s']:12.2f} MB/s   {r['msg_per_s']:12.0f} msg/s    "
                       f"{r['poller']}")
    return head + (f"{'one-way':>12} {r['median_us']:10.1f} us median {r['p99_us']:10.1f} us p99  "
                   f"{r['poller']}")


def _budget(test: str, iters: int | None, duration: float | None, progress: Progress) -> Budget:
    """Given both, bandwidth tests run by time and latency tests by count."""
    bandwidth = test in BANDWIDTH
    if duration is not None and (bandwidth or iters is None):
        return Budget(None, duration, progress)
    if iters is not None:
        return Budget(iters, None, progress)
    return Budget(None, 5.0, progress) if bandwidth else Budget(5000, None, progress)


def _options(pairs: list[str]) -> dict:
    opts = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(pair)
        opts[name] = float(value) if "." in value else int(value)
    return opts


def _sizes(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",")]
    if min(sizes) < 1:
        raise ValueError(text)
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rdmamsg bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    role = ap.add_mutually_exclusive_group(required=True)
    role.add_argument("--server", action="store_true")
    role.add_argument("--client", metavar="HOST")
    ap.add_argument("--bind", default="0.0.0.0", help="server: the address to listen on")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--count", type=int, help="server: serve this many tests, then exit")
    ap.add_argument("--once", action="store_true", help="server: the same as --count 1")
    ap.add_argument("--test", default="send_bw,send_lat",
                    help=f"comma-separated, from: {', '.join(TESTS)}")
    sizes = ap.add_mutually_exclusive_group()
    sizes.add_argument("--size", default="64,4096,65536,1048576", help="bytes, comma-separated")
    sizes.add_argument("--sweep", action="store_true", help="sizes 2 B to 8 MiB, x4 each step")
    ap.add_argument("--duration", type=float, help="seconds per test (default: 5 for "
                                                   "bandwidth tests)")
    ap.add_argument("--iters", type=int, help="messages (bandwidth) or round trips (latency) "
                                              "per test (default: 5000 for latency tests)")
    ap.add_argument("--opt", action="append", default=[], metavar="NAME=VALUE",
                    help="an endpoint option (rdmamsg.Options), e.g. spin_us=200; repeatable")
    ap.add_argument("--rpc-handlers", default="threads", choices=("threads", "inline", "asyncio"),
                    help="rpc_*: where the server runs its handlers (rdmamsg.rpc.Server's "
                         "handlers=)")
    ap.add_argument("--json", action="store_true", help="print JSON lines, not a table")
    ap.add_argument("--progress", action="store_true",
                    help="draw the progress bar even when stderr is not a terminal")
    ap.add_argument("--plot", metavar="OUT.png", help="draw throughput and latency against size")
    ap.add_argument("--compare", action="append", default=[], metavar="FILE",
                    help="with --plot: perftest or rstream output, or JSON rows, to draw beside "
                         "ours; repeatable")
    args = ap.parse_args(argv)
    try:
        opts = _options(args.opt)
    except ValueError:
        ap.error("--opt takes NAME=NUMBER")
    if args.server:
        serve(args.bind, args.port, 1 if args.once else args.count, **opts)
        return 0
    tests = args.test.split(",")
    bad = set(tests) - set(TESTS)
    if bad:
        ap.error(f"unknown test(s) {', '.join(sorted(bad))}; choose from {', '.join(TESTS)}")
    try:
        size_list = list(SWEEP) if args.sweep else _sizes(args.size)
    except ValueError:
        ap.error("--size takes positive byte counts, comma-separated")
    if (args.iters is not None and args.iters < 1) or (args.duration is not None
                                                       and args.duration <= 0):
        ap.error("--iters and --duration must be positive")
    baselines = []
    if args.compare:
        if not args.plot:
            ap.error("--compare goes with --plot")
        from .plot import load_baseline

        try:
            baselines = [row for f in args.compare for row in load_baseline(f)]
        except (OSError, ValueError) as exc:
            ap.error(f"--compare: {exc}")
    progress = Progress(len(tests) * len(size_list), True if args.progress else None)
    if not args.json:
        print(f"{'test':<16} {'bytes':>9}  result", flush=True)
    rows = []
    for test in tests:
        for size in size_list:
            progress.next(f"{test} {size} B")
            r = run_test(test, args.client, args.port, size,
                         _budget(test, args.iters, args.duration, progress), opts,
                         args.rpc_handlers)
            progress.finish()
            rows.append(r)
            print(json.dumps(r) if args.json else row_text(r), flush=True)
    if args.plot:
        from .plot import plot_rows

        plot_rows(rows, baselines, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0

#!/usr/bin/env python3
"""Benchmark rdmamsg against perftest on the same device, in the same boot:
the send/recv channel against ib_send_*, the write channel and ep.write
(remote buffers; rows rma_*) against ib_write_*, and the socket facade
(stream_*) against rsockets' rstream, with rstream -T s (kernel TCP over the
same interface) as a reference row, and rdmamsg.rpc (rpc_*) against
perftest's round trip (2 x ib_send_lat) and ib_send_bw's 64 B message rate.

Run by ci/bench inside the soft-RoCE VM (or on a host with an ACTIVE port).
For each shape it alternates perftest and rdmamsg (python -m rdmamsg bench,
Cython poller) for several rounds and compares the medians, so that drift
within the boot (easily 10% under TCG) falls on both alike; the pure-pyverbs
poller gets one round, for reference.  Throughput ratios compare message
rates at the same size (so units cannot differ); latency compares median
one-way times (perftest's t_typical).  It reports and never fails on numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time

import rdmamsg
from rdmamsg.cli.plot import MIB, plot

PERFTEST_PORT = 18600
BENCH_PORT = {"cython": 18700, "python": 18701}


def human(size: int) -> str:
    for unit, n in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= n and size % n == 0:
            return f"{size // n} {unit}"
    return f"{size} B"


def perftest(tool: str, size: int, addr, ip: str, extra: list[str],
             port: int | None = None) -> dict:
    """One perftest run's figures; run again (twice at most) if it printed
    inf or nan, which ib_send_lat did once under TCG.  With ``port``, the
    server is already running on the peer ``ip`` (the two-host bench)."""
    for _ in range(2):
        got = _perftest_once(tool, size, addr, ip, extra, port)
        if all(math.isfinite(v) for v in got.values()):
            break
    return got


def _perftest_args(tool: str, size: int, addr, port: int, extra: list[str]) -> list[str]:
    return [tool, "-d", addr.device, "-i", str(addr.port), "-x", str(addr.gid_index),
            "-s", str(size), "-p", str(port), "-F", *extra]


def _perftest_once(tool: str, size: int, addr, ip: str, extra: list[str],
                   port: int | None) -> dict:
    global PERFTEST_PORT
    if port is None:
        PERFTEST_PORT += 1
        base = _perftest_args(tool, size, addr, PERFTEST_PORT, extra)
        srv = subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(3)   # under TCG the server needs a few seconds before the client
        try:
            cli = subprocess.run(base + [ip], capture_output=True, text=True, timeout=180)
        finally:
            try:
                srv.wait(timeout=60)
            except subprocess.TimeoutExpired:
                srv.kill()
    else:
        # The peer restarts its server after each run: a refused client waits
        # for the restart and tries again.
        for _ in range(15):
            cli = subprocess.run(_perftest_args(tool, size, addr, port, extra) + [ip],
                                 capture_output=True, text=True, timeout=180)
            if cli.returncode == 0:
                break
            time.sleep(2)
    for line in cli.stdout.splitlines():
        cols = line.split()
        if cols and cols[0] == str(size) and len(cols) >= 5:
            if "lat" in tool:   # #bytes #iter t_min t_max t_typical t_avg t_stdev 99% ...
                out = {"typical_us": float(cols[4]), "avg_us": float(cols[5])}
                if len(cols) >= 8:
                    out["p99_us"] = float(cols[7])
                return out
            # #bytes #iterations BW-peak BW-average[MB/s, 2^20] MsgRate[Mpps]
            return {"MiB_per_s": float(cols[3]), "msg_per_s": float(cols[4]) * 1e6}
    raise RuntimeError(f"{tool} -s {size} printed no result:\n{cli.stdout}\n{cli.stderr}")


RSTREAM_PORT = 18800


def rstream(size: int, count: int, iters: int, ip: str, tcp: bool = False,
            ours: str | None = None) -> dict:
    """rstream in its custom mode: ``iters`` rounds of ``count`` transfers of
    ``size`` bytes each way; its Gb/sec (both directions) and usec/xfer.
    ``ours="client"`` or ``"server"``: that end is rdmamsg's rstream twin
    (python -m rdmamsg rstream, over rsockets), the other the C program."""
    global RSTREAM_PORT
    RSTREAM_PORT += 1
    args = ["-p", str(RSTREAM_PORT), "-S", str(size), "-C", str(count), "-I", str(iters),
            *(["-T", "s"] if tcp else [])]
    c, py = ["rstream", *args], [sys.executable, "-m", "rdmamsg", "rstream", *args]
    server, client = (py if ours == "server" else c), (py if ours == "client" else c)
    srv = subprocess.Popen(server + ["-b", ip], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        # Under TCG the server may take several seconds to listen: a refused
        # client is tried again, up to 20 s.
        for _ in range(10):
            time.sleep(2)
            cli = subprocess.run(client + ["-s", ip], capture_output=True, text=True, timeout=600)
            if ("Connection refused" not in cli.stderr + cli.stdout
                    and "rpoll" not in cli.stderr + cli.stdout) or srv.poll() is not None:
                break
    finally:
        try:
            srv.wait(timeout=60)
        except subprocess.TimeoutExpired:
            srv.kill()
    last = cli.stdout.strip().splitlines()[-1:] or [""]
    cols = last[0].split()
    if cli.returncode or len(cols) < 8:
        raise RuntimeError(f"rstream -S {size} printed no result:\n{cli.stdout}\n{cli.stderr}")
    return {"MB_per_s": float(cols[-2]) * 1e3 / 8, "usec_per_xfer": float(cols[-1])}


def rsocket_rows(args, ip: str, row, point) -> None:
    """rdmamsg's rsockets (protocol="rsocket") replacing one end of rstream,
    against rstream C to C in the same boot: 64 KiB transfers, 64 B ping-pong."""
    count = max(args.iters // 5, 200)
    iters = max(args.iters // 2, 500)
    for ours_is in ("client", "server"):
        base, mine, lbase, lmine = [], [], [], []
        for r in range(args.rounds):
            base.append(rstream(65536, count, 1, ip)["MB_per_s"])
            mine.append(rstream(65536, count, 1, ip, ours=ours_is)["MB_per_s"])
            lbase.append(rstream(64, 1, iters, ip)["usec_per_xfer"])
            lmine.append(rstream(64, 1, iters, ip, ours=ours_is)["usec_per_xfer"])
        m = statistics.median(mine) * 1e6 / MIB
        point(f"rdmamsg rsocket ({ours_is})", "bw", 65536, m)
        row(f"rsocket_bw 64 KiB, ours as {ours_is}", "MiB/s", m,
            statistics.median(base) * 1e6 / MIB, ">= 0.9", "rstream C-C")
        row(f"rsocket_lat 64 B one-way, ours as {ours_is}", "us", statistics.median(lmine),
            statistics.median(lbase), "<= 1.5", "rstream C-C")


def ours(test: str, size: int, ip: str, poller: str, duration: float, iters: int,
         *extra: str) -> dict:
    """One rdmamsg bench row; bandwidth tests run ``duration`` s, latency tests
    ``iters`` round trips (0: not given)."""
    cmd = [sys.executable, "-m", "rdmamsg", "bench", "--client", ip, "--port",
           str(BENCH_PORT[poller]), "--test", test, "--size", str(size), "--json"]
    cmd += ["--duration", str(duration)] if duration else []
    cmd += ["--iters", str(iters)] if iters else []
    cmd += list(extra)
    env = dict(os.environ, RDMAMSG_POLLER=poller)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    if out.returncode:
        raise RuntimeError(f"rdmamsg bench failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class Table:
    """Rows of rdmamsg against a baseline, each with its ratio and target."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.targets: dict[str, str] = {}

    def row(self, name: str, unit: str, mine: float, theirs: float, target: str,
            tool: str) -> None:
        # A baseline of 0 (perftest printed no rate) gives no ratio, not a crash.
        ratio = round(mine / theirs, 3) if theirs else math.nan
        self.rows.append({"name": name, "unit": unit, "rdmamsg": round(mine, 3),
                          "baseline": round(theirs, 3), "ratio": ratio, "against": tool})
        if target:
            self.targets[name] = target
        print(f"  {name}: {mine:.2f} vs {tool} {theirs:.2f} {unit}", flush=True)

    def report(self, json_path: str | None,
               title: str = "benchmark (rdmamsg / perftest, same boot, medians)") -> None:
        """The ratio table, and the rows as JSON if asked."""
        print()
        print(f"{title:<56} {'unit':>7} "
              f"{'rdmamsg':>10} {'perftest':>10} {'against':>13} {'ratio':>7}  target")
        for r in self.rows:
            print(f"{r['name']:<56} {r['unit']:>7} {r['rdmamsg']:>10.2f} "
                  f"{r['baseline']:>10.2f} {r['against']:>13} {r['ratio']:>7.2f}  "
                  f"{self.targets.get(r['name'], '')}")
        if json_path:
            with open(json_path, "w") as f:
                json.dump(self.rows, f, indent=1)
            print(f"\nrows written to {json_path}")


def _ours_this_round(tests, pollers: list[str], r: int):
    """(test, poller) runs for round ``r``: every round on the first poller,
    the others in the first round only."""
    for test in tests:
        for p in pollers if r == 0 else pollers[:1]:
            yield test, p


def threads(args, ip: str, poller: str, row) -> None:
    """Both ends in one process, one thread each, against the same shape
    across two processes, in the same rounds."""
    twins = (("send_lat_thread", "send_lat", "median_us", args.iters, 0, "us"),
             ("send_bw_thread", "send_bw", "msg_per_s", 0, args.duration, "Kmsg/s"),
             ("rpc_lat_inproc", "rpc_lat", "rtt_median_us", args.iters, 0, "us"))
    got = {t: [] for twin in twins for t in twin[:2]}
    for _ in range(args.rounds):
        for one, other, key, iters, duration, _unit in twins:
            for test in (other, one):
                got[test].append(ours(test, 64, ip, poller, duration, iters)[key])
    for one, other, key, _iters, _duration, unit in twins:
        scale = 1e-3 if unit == "Kmsg/s" else 1
        # Throughput: ours / theirs, so within 1.3x is >= 0.77.
        row(f"{one} 64 B [against {other} across processes]", unit,
            statistics.median(got[one]) * scale, statistics.median(got[other]) * scale,
            ">= 0.77" if unit == "Kmsg/s" else "<= 1.3", other)


def busy(args, addr, ip: str, poller: str, row) -> None:
    """send_lat and ib_send_lat, each with a CPU-bound process beside it."""
    base, p99, mine, mine99 = [], [], [], []
    for _ in range(args.rounds):
        with _busy_loop():
            lat = perftest("ib_send_lat", 64, addr, ip, ["-n", str(args.iters)])
            base.append(lat["typical_us"])
            p99.append(lat.get("p99_us", math.nan))
            got = ours("send_lat", 64, ip, poller, 0, args.iters)
            mine.append(got["median_us"])
            mine99.append(got["p99_us"])
    row("send_lat_busy 64 B one-way median, a busy process beside", "us",
        statistics.median(mine), statistics.median(base), "<= 3.0", "ib_send_lat")
    row("send_lat_busy 64 B one-way p99 [reported]", "us", statistics.median(mine99),
        statistics.median(p99), "", "ib_send_lat")


@contextlib.contextmanager
def _busy_loop():
    """A Python busy loop in its own process while the block runs."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--plot", help="draw ours and the baselines against message size here")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--iters", type=int, default=5000)
    ap.add_argument("--pollers", default="cython,python")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per shape")
    ap.add_argument("--only", default="perftest,stream,rsocket,rpc,threads,busy",
                    help="which groups to run: perftest (channels, ep.write), stream (facade), "
                         "rsocket (the facade speaking rsockets against rstream), rpc, threads (both ends in one process), busy (send_lat beside a "
                         "CPU-bound process); dask (the rdma:// comm backend, "
                         "ci/lib/bench_dask.py) runs only when named")
    ap.add_argument("--instructions", action="store_true",
                    help="instead of timings: callgrind's instructions per round trip "
                         "(ci/lib/instructions.py)")
    args = ap.parse_args()
    ip = os.environ.get("RDMAMSG_SELF")
    addr = rdmamsg.resolve_local(ip, device=os.environ.get("RDMAMSG_DEVICE"))
    pollers = args.pollers.split(",")
    only = set(args.only.split(","))
    servers = []
    for p in pollers:
        env = dict(os.environ, RDMAMSG_POLLER=p)
        servers.append(subprocess.Popen(
            [sys.executable, "-m", "rdmamsg", "bench", "--server", "--bind", ip, "--port",
             str(BENCH_PORT[p])], env=env, stdout=subprocess.DEVNULL))
    time.sleep(2)
    table = Table()
    row = table.row
    points = []     # for the plot: {"label", "kind", "size", "value"} (MiB/s, one-way us)

    def point(label, kind, size, value):
        points.append({"label": label, "kind": kind, "size": size, "value": value})

    try:
        if args.instructions:
            import instructions

            instructions.run(addr, ip, row)
            only = set()
        if "perftest" in only:
            # Each perftest baseline is shared by the rdmamsg tests compared with it.
            for tool, tests in (("ib_send_bw", ("send_bw",)), ("ib_write_bw", ("write_bw", "rma_bw"))):
                for size in (64, 4096, 65536, 1 << 20):
                    base, mine = [], {(t, p): [] for t in tests for p in pollers}
                    for r in range(args.rounds):
                        base.append(perftest(tool, size, addr, ip,
                                             ["-D", str(int(args.duration))])["msg_per_s"])
                        for test, p in _ours_this_round(tests, pollers, r):
                            mine[test, p].append(ours(test, size, ip, p, args.duration,
                                                      args.iters)["msg_per_s"])
                    theirs = statistics.median(base)
                    point(tool, "bw", size, theirs * size / MIB)
                    for (test, p), got in mine.items():
                        if not got:
                            continue
                        tag = "" if p == "cython" else " [python poller, 1 round]"
                        point(f"rdmamsg {test}" + (f" ({p})" if tag else ""), "bw", size,
                              statistics.median(got) * size / MIB)
                        top = ">= 0.95" if tool == "ib_write_bw" and size == 1 << 20 else ">= 0.9"
                        m = statistics.median(got)
                        if size == 64:
                            row(f"{test} {human(size)} message rate{tag}", "Kmsg/s", m / 1e3,
                                theirs / 1e3, ">= 0.5" if not tag else "", tool)
                        else:
                            row(f"{test} {human(size)}{tag}", "MiB/s", m * size / MIB,
                                theirs * size / MIB,
                                top if size >= 65536 and not tag else "", tool)
            for tool, tests in (("ib_send_lat", ("send_lat",)),
                                ("ib_write_lat", ("write_lat", "rma_lat"))):
                base, mine = [], {(t, p): [] for t in tests for p in pollers}
                for r in range(args.rounds):
                    base.append(perftest(tool, 64, addr, ip, ["-n", str(args.iters)])["typical_us"])
                    for test, p in _ours_this_round(tests, pollers, r):
                        mine[test, p].append(ours(test, 64, ip, p, args.duration,
                                                  args.iters)["median_us"])
                point(tool, "lat", 64, statistics.median(base))
                for (test, p), got in mine.items():
                    if got:
                        tag = "" if p == "cython" else " [python poller, 1 round]"
                        point(f"rdmamsg {test}" + (f" ({p})" if tag else ""), "lat", 64,
                              statistics.median(got))
                        row(f"{test} 64 B one-way median{tag}", "us", statistics.median(got),
                            statistics.median(base), "<= 2.0" if not tag else "", tool)
        if "stream" in only:
            # The socket facade, in rstream's shapes: 64 KiB writes (each way), 64 B ping-pong.
            count = max(args.iters // 2, 200)
            base, tcp, mine = [], [], []
            for r in range(args.rounds):
                base.append(rstream(65536, count, 1, ip)["MB_per_s"])
                tcp.append(rstream(65536, count, 1, ip, tcp=True)["MB_per_s"])
                mine.append(ours("stream_bw", 65536, ip, pollers[0], 0, count)["MB_per_s"])
            m = statistics.median(mine) * 1e6 / MIB
            point("rdmamsg stream_bw", "bw", 65536, m)
            point("rstream", "bw", 65536, statistics.median(base) * 1e6 / MIB)
            row("stream_bw 64 KiB writes", "MiB/s", m,
                statistics.median(base) * 1e6 / MIB, ">= 1.0", "rstream")
            row("stream_bw 64 KiB writes [TCP reference]", "MiB/s", m,
                statistics.median(tcp) * 1e6 / MIB, "", "rstream -T s")
            base, tcp, mine = [], [], []
            for r in range(args.rounds):
                base.append(rstream(64, 1, args.iters, ip)["usec_per_xfer"])
                tcp.append(rstream(64, 1, args.iters, ip, tcp=True)["usec_per_xfer"])
                mine.append(ours("stream_lat", 64, ip, pollers[0], 0, args.iters)["mean_us"])
            m = statistics.median(mine)
            point("rdmamsg stream_lat", "lat", 64, m)
            point("rstream", "lat", 64, statistics.median(base))
            row("stream_lat 64 B one-way mean", "us", m, statistics.median(base), "<= 1.5", "rstream")
            row("stream_lat 64 B one-way mean [TCP reference]", "us", m, statistics.median(tcp), "",
                "rstream -T s")
        if "rsocket" in only:
            rsocket_rows(args, ip, row, point)
        if "rpc" in only:
            # Handlers on the server's thread pool (the default: the reader that
            # receives a request runs it, relaying), and inline on its reader.
            base, mine, inline = [], [], []
            for r in range(args.rounds):
                base.append(2 * perftest("ib_send_lat", 64, addr, ip,
                                         ["-n", str(args.iters)])["typical_us"])
                mine.append(ours("rpc_lat", 64, ip, pollers[0], 0, args.iters)["rtt_median_us"])
                inline.append(ours("rpc_lat", 64, ip, pollers[0], 0, args.iters,
                                   "--rpc-handlers", "inline")["rtt_median_us"])
            rtt = mine
            point("rdmamsg rpc_lat (half the round trip)", "lat", 64, statistics.median(mine) / 2)
            # The target, for both handler modes.
            row("rpc_lat 64 B echo round trip median", "us", statistics.median(mine),
                statistics.median(base), "<= 2.5", "2x ib_send_lat")
            row("rpc_lat 64 B echo round trip median [inline handlers]", "us",
                statistics.median(inline), statistics.median(base), "<= 2.5", "2x ib_send_lat")
            # Pipelined calls, three ways, against ib_send_bw's 64 B message
            # rate; and against one sequential caller (rpc_lat's median).
            shapes = {"rpc_rate": ("32 outstanding (call_async)", ">= 0.25"),
                      "rpc_rate_aio": ("AsyncClient, 32 tasks", ">= 0.2"),
                      "rpc_rate_threads": ("8 threads, one Client", ">= 0.2")}
            base, mine = [], {test: [] for test in shapes}
            for r in range(args.rounds):
                base.append(perftest("ib_send_bw", 64, addr, ip,
                                     ["-D", str(int(args.duration))])["msg_per_s"])
                for test in shapes:
                    mine[test].append(ours(test, 64, ip, pollers[0], args.duration,
                                           0)["calls_per_s"])
            sequential = 1e6 / statistics.median(rtt)
            for test, (what, target) in shapes.items():
                row(f"{test} 64 B echo, {what}", "Kcall/s", statistics.median(mine[test]) / 1e3,
                    statistics.median(base) / 1e3, target, "ib_send_bw msgs")
            for test, (what, _) in shapes.items():
                row(f"{test} [against one sequential caller]", "Kcall/s",
                    statistics.median(mine[test]) / 1e3, sequential / 1e3, "> 1.0", "rpc_lat")
        if "threads" in only:
            threads(args, ip, pollers[0], row)
        if "busy" in only:
            busy(args, addr, ip, pollers[0], row)
        if "dask" in only:
            import bench_dask

            bench_dask.run(args, addr, ip, row, perftest, human)
    finally:
        for s in servers:
            s.terminate()
            s.wait()
    table.report(args.json, "instructions (rdmamsg / perftest, same boot)" if args.instructions
                 else "benchmark (rdmamsg / perftest, same boot, medians)")
    if args.plot and points:
        plot(points, args.plot, "rdmamsg against perftest and rstream (same device, same boot)")
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The two-host bench (``ci/bench --hosts 2``): rdmamsg against perftest
between the two VMs of ``ci/rxe-vm --hosts 2``, in the same boot, with the
kernel's TCP round trip over the same link as a reference line.

Host 0 serves: rdmamsg's bench server, perftest servers that restart after
each run, and a TCP echo server.  Host 1 runs the rounds, alternating
perftest and rdmamsg as ci/lib/bench.py does, prints the table, and then
tells host 0 to stop.  Rows: send_lat 64 B, send_bw 64 KiB and rpc_lat 64 B.
It also prints rxe's retransmission counters over the whole run, since
duplicate requests are what made this link slow before (issue 28).
"""
from __future__ import annotations

import argparse
import glob
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import rdmamsg
from bench import BENCH_PORT, Table, _perftest_args, ours, perftest

PERFTEST_PORTS = {"ib_send_lat": 18611, "ib_send_bw": 18612}
ECHO_PORT = 18620     # TCP echo for the reference round trip; "stop" ends host 0
COUNTERS = ("duplicate_request", "completer_retry_err", "rcvd_seq_err", "retry_exceeded_err")


def counters() -> dict[str, int]:
    got = {}
    for path in glob.glob("/sys/class/infiniband/*/ports/1/hw_counters"):
        for name in COUNTERS:
            try:
                with open(os.path.join(path, name)) as f:
                    got[name] = got.get(name, 0) + int(f.read())
            except OSError:
                pass
    return got


def serve(addr, ip: str, args) -> int:
    """Host 0: keep every server up until host 1 says stop."""
    stop = threading.Event()
    procs = [subprocess.Popen([sys.executable, "-m", "rdmamsg", "bench", "--server", "--bind", ip,
                               "--port", str(BENCH_PORT["cython"])],
                              env=dict(os.environ, RDMAMSG_POLLER="cython"),
                              stdout=subprocess.DEVNULL)]

    def perftest_server(tool: str, size: int, extra: list[str]) -> None:
        while not stop.is_set():
            p = subprocess.Popen(_perftest_args(tool, size, addr, PERFTEST_PORTS[tool], extra),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            p.wait()

    for tool, size, extra in (("ib_send_lat", 64, ["-n", str(args.iters)]),
                              ("ib_send_bw", 65536, ["-D", str(int(args.duration))])):
        threading.Thread(target=perftest_server, args=(tool, size, extra), daemon=True).start()
    with socket.create_server((ip, ECHO_PORT)) as lsock:
        while not stop.is_set():
            conn, _ = lsock.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while data := conn.recv(65536):
                    if data == b"stop":
                        stop.set()
                        break
                    conn.sendall(data)
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
    return 0


def tcp_rtt_us(peer: str, iters: int) -> float:
    """Median round trip of a 64 B TCP ping-pong (TCP_NODELAY) to host 0."""
    with socket.create_connection((peer, ECHO_PORT), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg, times = b"x" * 64, []
        for _ in range(iters):
            t = time.perf_counter()
            s.sendall(msg)
            got = 0
            while got < len(msg):
                got += len(s.recv(len(msg) - got))
            times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def connect_echo(peer: str) -> None:
    """Wait until host 0's servers are up (its echo server answers)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection((peer, ECHO_PORT), timeout=5).close()
            time.sleep(3)     # the perftest servers start beside it
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def measure(addr, peer: str, args) -> Table:
    """Host 1: the rounds, and the table."""
    connect_echo(peer)
    before = counters()
    table = Table()
    lat = {"ib": [], "ours": [], "rpc": [], "tcp": []}
    bw = {"ib": [], "ours": []}
    for _ in range(args.rounds):
        lat["tcp"].append(tcp_rtt_us(peer, args.iters))
        lat["ib"].append(perftest("ib_send_lat", 64, addr, peer, ["-n", str(args.iters)],
                                  port=PERFTEST_PORTS["ib_send_lat"])["typical_us"])
        lat["ours"].append(ours("send_lat", 64, peer, "cython", 0, args.iters)["median_us"])
        lat["rpc"].append(ours("rpc_lat", 64, peer, "cython", 0, args.iters)["rtt_median_us"])
        bw["ib"].append(perftest("ib_send_bw", 65536, addr, peer,
                                 ["-D", str(int(args.duration))],
                                 port=PERFTEST_PORTS["ib_send_bw"])["msg_per_s"])
        bw["ours"].append(ours("send_bw", 65536, peer, "cython", args.duration, 0)["msg_per_s"])
    med = {k: statistics.median(v) for k, v in lat.items()}
    table.row("two hosts: send_lat 64 B one-way median", "us", med["ours"], med["ib"], "<= 2.0",
              "ib_send_lat")
    table.row("two hosts: send_bw 64 KiB", "MiB/s", statistics.median(bw["ours"]) / 16,
              statistics.median(bw["ib"]) / 16, "", "ib_send_bw")
    table.row("two hosts: rpc_lat 64 B echo round trip median", "us", med["rpc"], 2 * med["ib"],
              "<= 2.5", "2x ib_send_lat")
    after = counters()
    table.notes = [
        f"reference: kernel TCP 64 B round trip {med['tcp']:.0f} us on the same link; "
        f"ib_send_lat one-way is {med['ib'] / (med['tcp'] / 2):.2f}x half of it",
        "rxe counters on host 1 over the run: " +
        ", ".join(f"{k} +{after.get(k, 0) - before.get(k, 0)}" for k in COUNTERS)]
    return table


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="host 1 writes the rows here")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.environ.get("RDMAMSG_HOSTS") != "2":
        ap.error("run under ci/rxe-vm --hosts 2 (ci/bench --hosts 2)")
    me, peer = os.environ["RDMAMSG_SELF"], os.environ["RDMAMSG_PEER"]
    addr = rdmamsg.resolve_local(me)
    if os.environ["RDMAMSG_HOST_INDEX"] == "0":
        return serve(addr, me, args)
    try:
        table = measure(addr, peer, args)
    finally:
        with socket.create_connection((peer, ECHO_PORT), timeout=30) as s:
            s.sendall(b"stop")
    table.report(args.json, "two-host bench (rdmamsg / perftest, same boot, medians)")
    print("\n".join(table.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

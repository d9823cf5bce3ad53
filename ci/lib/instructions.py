"""``ci/bench --instructions``: user-space instructions per 64 B round trip,
counted by callgrind inside the VM, for the client side of:

  send_lat   against ib_send_lat -e
  rpc_lat    against 2 x ib_send_lat -e

Both wait on completion events (perftest's -e; rdmamsg with spin_us=0), so
that no spinning inflates the count.  Each client runs at two iteration
counts and the difference is divided by the difference in round trips, so
that start-up and teardown cancel out.  Unlike a timing, the figure repeats
from boot to boot: use it to guide work on the hot path.

Under TCG a Python client under callgrind runs some thousand times slower
than natively, so ours start uninstrumented (--instr-atstart=no) and count
only their loop (RDMAMSG_CALLGRIND=1: rdmamsg.cli.instrument); perftest,
in C, is counted whole.  The VM needs 4 GiB (ci/bench gives it that).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

ITERS = (200, 1200)
PORT = 18650
BENCH_PORT = 18750
# A client under callgrind, under TCG, runs some thousand times slower than
# natively: the bench server waits that long for its handshake.
SLOW = ["--opt", "handshake_timeout=900.0"]


def _callgrind(argv: list[str], env: dict | None = None, loop_only: bool = False) -> int:
    """Run ``argv`` under callgrind; the instructions it executed (only in
    its loop, with ``loop_only``)."""
    flags = ["--instr-atstart=no"] if loop_only else []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        run = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                              *flags, *argv], capture_output=True, text=True, timeout=1800,
                             env=env)
        if run.returncode:
            raise RuntimeError(f"{argv[0]} under callgrind failed:\n{run.stdout}\n{run.stderr}")
        with open(out) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
    raise RuntimeError(f"callgrind wrote no total for {argv[0]}")


def _perftest_client(addr, ip: str, iters: int) -> int:
    global PORT
    PORT += 1
    base = ["ib_send_lat", "-d", addr.device, "-i", str(addr.port), "-x", str(addr.gid_index),
            "-s", "64", "-p", str(PORT), "-F", "-e", "-n", str(iters)]
    srv = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(3)      # under TCG the server needs a few seconds before the client
    try:
        return _callgrind(base + [ip])
    finally:
        try:
            srv.wait(timeout=60)
        except subprocess.TimeoutExpired:
            srv.kill()


def _ours_client(test: str, ip: str, iters: int) -> int:
    env = dict(os.environ, RDMAMSG_POLLER="cython", RDMAMSG_CALLGRIND="1")
    return _callgrind([sys.executable, "-m", "rdmamsg", "bench", "--client", ip, "--port",
                       str(BENCH_PORT), "--test", test, "--size", "64", "--iters", str(iters),
                       "--opt", "spin_us=0", *SLOW, "--json"], env, loop_only=True)


def per_round_trip(count) -> float:
    """(count(ITERS[1]) - count(ITERS[0])) / the round trips between them."""
    return (count(ITERS[1]) - count(ITERS[0])) / (ITERS[1] - ITERS[0])


def run(addr, ip: str, row) -> None:
    """The two rows (``row`` as bench.Table.row)."""
    server = subprocess.Popen([sys.executable, "-m", "rdmamsg", "bench", "--server", "--bind", ip,
                               "--port", str(BENCH_PORT), *SLOW],
                              env=dict(os.environ, RDMAMSG_POLLER="cython"),
                              stdout=subprocess.DEVNULL)
    try:
        perftest = per_round_trip(lambda n: _perftest_client(addr, ip, n))
        send_lat = per_round_trip(lambda n: _ours_client("send_lat", ip, n))
        rpc_lat = per_round_trip(lambda n: _ours_client("rpc_lat", ip, n))
    finally:
        server.terminate()
        server.wait()
    row("send_lat 64 B round trip, client, events", "instr", send_lat, perftest, "<= 1.4",
        "ib_send_lat -e")
    row("rpc_lat 64 B round trip, client, events", "instr", rpc_lat, 2 * perftest, "",
        "2x ib_send_lat -e")

"""The ``dask`` group of ci/bench: distributed's comms over rdma:// against
tcp:// on the same interface and against perftest, in one boot.

First, a 64 B message's round trip through the comm alone (``comm.write``,
``comm.read``, Dask's framing and msgpack included), between this process
and an echo server in another, against the same over tcp:// and against
2 x ib_send_lat.  Then two shapes between the two worker processes of a
LocalCluster (so through everything Dask puts around a comm: its RPC, the
connection pool, serialization):

- a small message's round trip: a worker calls a handler on the other
  worker that returns its 64 B argument (``rpc``, pooled comms), against
  the same over tcp:// and against 2 x ib_send_lat;
- a numpy array moving between workers: ``get_data_from_worker``, as a
  task's dependency is fetched, for 64 KiB, 1 MiB and 64 MiB,
  against tcp:// and ib_send_bw at the same size.

Each cluster lives for all its rounds (starting one costs most of a minute
under TCG); perftest runs between them.
"""
from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time

import cloudpickle
import numpy as np

SIZES = (64 << 10, 1 << 20, 64 << 20)
COMM_TRIPS = 500
PERFTEST_N = {1 << 20: 200, 64 << 20: 10}
PULLS = {64 << 10: 40, 1 << 20: 20, 64 << 20: 3}
CALLS = 300


def _echo(comm, data=None):
    return data


def _install(dask_worker) -> None:
    dask_worker.handlers["bench_echo"] = _echo


async def _rtt(address: str, calls: int, dask_worker) -> float:
    """Median round trip (us) of a 64 B call to ``address``."""
    remote = dask_worker.rpc(address)
    payload = b"x" * 64
    await remote.bench_echo(data=payload)        # connect outside the timing
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        assert await remote.bench_echo(data=payload) == payload
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


async def _pull(address: str, key: str, pulls: int, dask_worker) -> float:
    """Median seconds to fetch ``key`` from ``address``, as a dependency is."""
    from distributed.worker import get_data_from_worker

    times = []
    for _ in range(pulls + 1):
        t0 = time.perf_counter()
        got = await get_data_from_worker(dask_worker.rpc, [key], address, who=dask_worker.address)
        times.append(time.perf_counter() - t0)
        assert got["status"] == "OK" and got["data"][key].nbytes > 0
        del got
    return statistics.median(times[1:])


async def _echo_server(protocol: str, ip: str) -> None:
    from distributed.comm import listen
    from distributed.comm.core import CommClosedError

    async def echo(comm):
        try:
            while True:
                await comm.write(await comm.read())
        except CommClosedError:
            pass

    async with listen(f"{protocol}{ip}:0", echo) as listener:
        print(listener.contact_address, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)   # until EOF


async def _comm_trips(address: str) -> float:
    from distributed.comm import connect

    comm = await connect(address)
    payload = b"x" * 64
    times = []
    for _ in range(COMM_TRIPS + 10):
        t0 = time.perf_counter()
        await comm.write(payload)
        assert await comm.read() == payload
        times.append(time.perf_counter() - t0)
    await comm.close()
    return statistics.median(times[10:]) * 1e6


def _comm_rtt(protocol: str, ip: str) -> float:
    """Median round trip (us) through one comm to an echo server in another process."""
    server = subprocess.Popen([sys.executable, __file__, "--serve", protocol, ip],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address = server.stdout.readline().strip()
        return asyncio.run(_comm_trips(address))
    finally:
        server.stdin.close()
        server.wait(60)


def _measure(protocol: str, ip: str, rounds: int) -> dict:
    """{"rtt_us": [...], size: [seconds per pull, ...]} over ``rounds`` rounds."""
    from distributed import Client, LocalCluster

    out: dict = {"rtt_us": [], **{size: [] for size in SIZES}}
    with LocalCluster(protocol=protocol, host=ip, n_workers=2, threads_per_worker=1,
                      processes=True, dashboard_address=":0", memory_limit="1GiB") as cluster, \
            Client(cluster) as client:
        w0, w1 = sorted(client.scheduler_info()["workers"])
        client.run(_install, workers=[w0])
        held = {size: client.scatter(np.ones(size // 8), workers=[w0]) for size in SIZES}
        for _ in range(rounds):
            out["rtt_us"].append(client.run(_rtt, w0, CALLS, workers=[w1])[w1])
            for size in SIZES:
                out[size].append(client.run(_pull, w0, held[size].key, PULLS[size],
                                            workers=[w1])[w1])
    return out


def run(args, addr, ip: str, row, perftest, human) -> None:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    trips = {"rdma://": [], "tcp://": []}
    for _ in range(args.rounds):
        for protocol in trips:
            trips[protocol].append(_comm_rtt(protocol, ip))
    ours = _measure("rdma://", ip, args.rounds)
    tcp = _measure("tcp://", ip, args.rounds)
    lat, bw = [], {size: [] for size in SIZES}
    for _ in range(args.rounds):
        lat.append(2 * perftest("ib_send_lat", 64, addr, ip, ["-n", str(args.iters)])["typical_us"])
        for size in SIZES:
            # Iterations, not a duration, for long messages: ib_send_bw -D at 64 MiB
            # printed a rate of 0 under TCG, and at 1 MiB a fraction of -n's.
            how = ["-D", str(int(args.duration))] if size < 1 << 20 else ["-n", str(PERFTEST_N[size])]
            bw[size].append(perftest("ib_send_bw", size, addr, ip, how)["msg_per_s"] * size)
    rtt = statistics.median(trips["rdma://"])
    row("dask comm 64 B round trip", "us", rtt, statistics.median(lat), "<= 4.0", "2x ib_send_lat")
    row("dask comm 64 B round trip [tcp:// reference]", "us", rtt,
        statistics.median(trips["tcp://"]), "", "tcp://")
    rtt = statistics.median(ours["rtt_us"])
    row("dask rpc 64 B round trip, worker to worker", "us", rtt, statistics.median(lat),
        "", "2x ib_send_lat")
    row("dask rpc 64 B round trip [tcp:// reference]", "us", rtt,
        statistics.median(tcp["rtt_us"]), "", "tcp://")
    mib = 1 << 20
    for size in SIZES:
        mine = size / statistics.median(ours[size]) / mib
        row(f"dask get_data {human(size)} numpy, worker to worker", "MiB/s", mine,
            statistics.median(bw[size]) / mib, ">= 0.7" if size == 64 << 20 else "",
            "ib_send_bw")
        row(f"dask get_data {human(size)} [tcp:// reference]", "MiB/s", mine,
            size / statistics.median(tcp[size]) / mib, "", "tcp://")


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    asyncio.run(_echo_server(sys.argv[2], sys.argv[3]))

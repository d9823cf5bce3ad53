"""Dask across the two VMs on rdma://: the scheduler and one worker on host 0,
one worker on host 1 (a ``dask worker`` process, started with --interface)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from multiprocessing import resource_tracker
from support.bed import resource_counts

resource_tracker.ensure_running()      # multiprocessing's own, kept for the process's life

WORKER_START = 300        # seconds: a worker process imports distributed on one vCPU
WAIT = 900                # host 1's wait for host 0 to finish a step


def start_worker(address: str) -> subprocess.Popen:
    """A worker on this host's RDMA interface, as a user starts one."""
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                             "--interface", os.environ["RDMAMSG_NIC"], "--nthreads", "2",
                             "--no-nanny", "--no-dashboard", "--memory-limit", "600MiB"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def no_leaks():
    """Dask closes some comms in the background after the cluster has
    closed (ConnectionPool.remove schedules comm.close): allow them a few
    seconds, then everything must be back."""
    before = resource_counts()
    yield
    deadline = time.monotonic() + 10
    while (after := resource_counts()) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after == before, f"verbs resources or fds leaked: before {before}, after {after}"


@pytest.fixture
def cluster(pair):
    """Host 0: the scheduler, one worker process and a Client (yielded);
    host 1: nothing (yields None).  The scheduler's address goes to host 1."""
    if not pair.is_server:
        address = pair.exchange(None, timeout=WAIT)
        yield address
        return
    from distributed import Client, LocalCluster

    with LocalCluster(protocol="rdma://", host=pair.self_ip, n_workers=1, threads_per_worker=2,
                      processes=True, dashboard_address=":0", memory_limit="600MiB") as lc:
        with Client(lc) as client:
            pair.exchange(lc.scheduler_address)
            yield client


def workers_on(client, ip: str) -> list[str]:
    return [w for w in client.scheduler_info()["workers"] if w.startswith(f"rdma://{ip}:")]


# A worker process starts in one to two minutes on a VM of one vCPU.
pytestmark = pytest.mark.timeout(900)


def test_a_shuffle_across_the_hosts(pair, cluster):
    if not pair.is_server:
        worker = start_worker(cluster)
        try:
            assert pair.exchange("started", timeout=WAIT) == "done"
        finally:
            stop(worker)
        return
    import dask.array as da
    import dask.dataframe as dd
    from distributed import get_task_stream

    client = cluster
    try:
        client.wait_for_workers(2, timeout=WORKER_START)
        (far,) = workers_on(client, pair.peer_ip)
        rng = np.random.default_rng(11)
        pdf = pd.DataFrame({"key": rng.integers(0, 300, 100_000), "val": rng.random(100_000)})
        ddf = dd.from_pandas(pdf, npartitions=6)
        with get_task_stream(client) as stream:
            got = client.compute(ddf.shuffle("key", shuffle_method="p2p")
                                 .groupby("key").val.sum()).result()
            x = da.arange(4_000_000, chunks=500_000).reshape(2000, 2000).rechunk(500)
            y = (x + x.T).sum()      # transposed chunks come from the other worker
            assert client.compute(y).result() == 2 * sum(range(4_000_000))
        want = pdf.groupby("key").val.sum()
        assert got.index.is_unique and len(got) == len(want)
        pd.testing.assert_series_equal(got.reindex(want.index), want, check_exact=False)
        ran_on = {task["worker"] for task in stream.data}
        assert far in ran_on and len(ran_on) == 2
    finally:
        pair.exchange("done")


def slow_square(i: int) -> int:
    time.sleep(0.5)
    return i * i


def test_a_worker_killed_mid_computation(pair, cluster):
    if not pair.is_server:
        worker = start_worker(cluster)
        try:
            assert pair.exchange("started", timeout=WAIT) == "kill"
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            pair.exchange("killed")
            worker = start_worker(cluster)
            assert pair.exchange("restarted", timeout=WAIT) == "done"
        finally:
            stop(worker)
        return
    client = cluster
    client.wait_for_workers(2, timeout=WORKER_START)
    (far,) = workers_on(client, pair.peer_ip)
    squares = client.map(slow_square, range(80))
    total = client.submit(sum, squares)
    deadline = time.monotonic() + 120
    while not client.processing(workers=[far])[far]:
        assert time.monotonic() < deadline, "no task reached the worker on host 1"
        time.sleep(0.1)
    assert pair.exchange("kill") == "started"
    assert pair.exchange(None) == "killed"
    killed = time.monotonic()          # host 1 answered once the worker was dead
    while far in client.scheduler_info()["workers"]:
        assert time.monotonic() - killed < 5, "the scheduler did not notice within 5 s"
        time.sleep(0.1)
    noticed = time.monotonic() - killed
    client.wait_for_workers(2, timeout=WORKER_START)
    assert total.result(timeout=600) == sum(i * i for i in range(80))
    assert pair.exchange("done") == "restarted"
    print(f"the scheduler noticed the killed worker after {noticed:.2f} s")

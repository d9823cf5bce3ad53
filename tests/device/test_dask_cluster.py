"""A real Dask workload on rdma://: a LocalCluster of two worker processes."""
import os
from multiprocessing import resource_tracker

import numpy as np
import pandas as pd
import pytest

import dask
import dask.array as da
import dask.dataframe as dd
from distributed import Client, LocalCluster
from support.bed import resource_counts

IP = os.environ.get("RDMAMSG_SELF", "")
pytestmark = pytest.mark.timeout(600)     # the first test also starts the cluster (~1 min)


@pytest.fixture
def no_leaks():
    """The cluster outlives each test: its fixture checks for leaks instead."""
    yield


@pytest.fixture(scope="module")
def client():
    resource_tracker.ensure_running()     # multiprocessing's, kept for the process's life
    before = resource_counts()
    with LocalCluster(protocol="rdma://", host=IP, n_workers=2, threads_per_worker=2,
                      processes=True, dashboard_address=":0", memory_limit="700MiB") as cluster:
        with Client(cluster) as c:
            assert cluster.scheduler_address.startswith(f"rdma://{IP}:")
            assert all(a.startswith("rdma://") for a in c.scheduler_info()["workers"])
            yield c
    after = resource_counts()
    assert after == before, f"verbs resources or fds leaked: before {before}, after {after}"


def test_an_array_reduction(client):
    x = da.random.RandomState(1).random((3000, 3000), chunks=(500, 500))
    expr = (x + x.T).mean(axis=0)[::7].sum()
    assert client.compute(expr).result() == pytest.approx(dask.compute(expr, scheduler="sync")[0])


# p2p only under ci/test --full: the two-host tier runs a p2p shuffle in CI.
@pytest.mark.parametrize("method", ["tasks"] + ["p2p"] * (os.environ.get("RDMAMSG_FULL") == "1"))
def test_a_dataframe_groupby_with_a_shuffle(client, method):
    rng = np.random.default_rng(3)
    pdf = pd.DataFrame({"key": rng.integers(0, 500, 200_000), "val": rng.random(200_000)})
    ddf = dd.from_pandas(pdf, npartitions=8)
    shuffled = ddf.shuffle("key", shuffle_method=method)
    got = client.compute(shuffled.groupby("key").val.agg(["sum", "count"])).result()
    want = pdf.groupby("key").val.agg(["sum", "count"])
    # reindex, not sort_index: in the TCG VM, pandas' sort_index left this index
    # unsorted over tcp:// as well (numpy's SIMD sort under qemu, probably)
    assert got.index.is_unique and len(got) == len(want)
    pd.testing.assert_frame_equal(got.reindex(want.index), want, check_exact=False)


def test_futures_pass_64_mib_arrays_between_workers(client):
    w0, w1 = sorted(client.scheduler_info()["workers"])
    made = client.submit(lambda seed: np.random.default_rng(seed).random(8 << 20), 5,
                         workers=[w0], pure=False)
    summed = client.submit(lambda a: (a.nbytes, float(a.sum())), made, workers=[w1])
    nbytes, total = summed.result()
    assert nbytes == 64 << 20
    assert total == pytest.approx(float(np.random.default_rng(5).random(8 << 20).sum()))
    assert client.who_has(made)[made.key] == (w0,) or w1 in client.who_has(made)[made.key]
    back = client.submit(lambda a: a[::1024].copy(), made, workers=[w1]).result()
    assert (back == np.random.default_rng(5).random(8 << 20)[::1024]).all()

"""The lossy tier: two-host tests with netem on each VM's NIC, so that every
packet between the hosts may be lost, reordered or duplicated."""
from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

#: netem settings; reordering needs a delay to reorder against.
PROFILES = {
    "loss1%": "loss 1% duplicate 1% delay 1ms reorder 10% 50%",
    "loss5%": "loss 5% duplicate 1% delay 1ms reorder 10% 50%",
}


def _tc(*args: str) -> None:
    subprocess.run(["tc", "qdisc", *args], check=True, capture_output=True, text=True)


def _nic() -> str:
    nic = os.environ.get("RDMAMSG_NIC")
    if not nic:
        pytest.fail("lossy tests need RDMAMSG_NIC (run them under ci/rxe-vm --hosts 2)",
                    pytrace=False)
    return nic


#: CI runs the harsher profile; ci/test --full (RDMAMSG_FULL=1) both.
RUN = sorted(PROFILES) if os.environ.get("RDMAMSG_FULL") == "1" else ["loss5%"]


@pytest.fixture(params=RUN)
def netem(request, pair):
    """Apply a profile to this VM's NIC for the test (both hosts do), then
    take it off again.  Yields the profile's name."""
    nic = _nic()
    _tc("replace", "dev", nic, "root", "netem", *PROFILES[request.param].split())
    pair.barrier()
    try:
        yield request.param
        pair.barrier(timeout=1500)       # both done before either lifts its netem
    finally:
        _tc("del", "dev", nic, "root")


@pytest.fixture
def cut_off():
    """A context manager: inside it, this VM's NIC drops every packet it
    would send, as if the host had vanished."""
    nic = _nic()

    @contextlib.contextmanager
    def cut():
        _tc("replace", "dev", nic, "root", "netem", "loss", "100%")
        try:
            yield
        finally:
            _tc("del", "dev", nic, "root")
    return cut

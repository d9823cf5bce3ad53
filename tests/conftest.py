"""Test tiers: tests/unit and tests/fuzz need no device and always run;
tests/device, tests/twohost and tests/lossy need an RDMA device (the last two
the two-VM cluster; lossy also puts netem on each VM's NIC).  Outside the bed
they skip with the reason; inside it (RDMAMSG_IN_BED=1) a skip is turned into
a failure."""
from __future__ import annotations

import os

import pytest
from support.bed import in_bed, peer_ip, self_ip
from support.pair import Pair

TIER_MARKS = {"device": pytest.mark.device, "twohost": pytest.mark.twohost,
              "lossy": pytest.mark.lossy}


def _tier(item) -> str | None:
    parts = os.path.relpath(str(item.path), os.path.dirname(__file__)).split(os.sep)
    return parts[0] if parts[0] in TIER_MARKS else None


def _has_active_port() -> bool:
    base = "/sys/class/infiniband"
    try:
        devs = os.listdir(base)
    except OSError:
        return False
    for d in devs:
        for p in os.listdir(f"{base}/{d}/ports"):
            try:
                with open(f"{base}/{d}/ports/{p}/state") as f:
                    if "ACTIVE" in f.read():
                        return True
            except OSError:
                pass
    return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = _tier(item)
        if tier is None:
            continue
        item.add_marker(TIER_MARKS[tier])
        if in_bed():
            continue
        if tier in ("twohost", "lossy"):
            item.add_marker(pytest.mark.skip(
                reason="two-host test: runs in the two-VM cluster (ci/test, or "
                       f"ci/rxe-vm --hosts 2 -- pytest tests/{tier})"))
        elif not _has_active_port():
            item.add_marker(pytest.mark.skip(
                reason="needs an ACTIVE RDMA port; this host has none: run ci/test, or "
                       "ci/rxe-vm -- pytest tests/device"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if in_bed() and _tier(item) and rep.skipped:
        rep.outcome = "failed"
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.longrepr = f"skipped inside the test bed, which counts as a failure: {reason}"


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Every device test must give back its QPs, CQs, MRs, PDs and fds."""
    if _tier(request.node) is None or not (in_bed() or _has_active_port()):
        yield
        return
    from support.bed import resource_counts

    before = resource_counts()
    yield
    after = resource_counts()
    assert after == before, f"verbs resources or fds leaked: before {before}, after {after}"


@pytest.fixture
def pair(request):
    """This host's side of a two-host test (host 0 serves, host 1 connects)."""
    if os.environ.get("RDMAMSG_HOSTS") != "2":
        pytest.fail("two-host tests need RDMAMSG_HOSTS=2 (run them under ci/rxe-vm --hosts 2)",
                    pytrace=False)
    p = Pair(int(os.environ["RDMAMSG_HOST_INDEX"]), self_ip(), peer_ip(), request.node.nodeid)
    yield p
    p.close()


@pytest.fixture(scope="session")
def rdma_addr():
    """The device, port and GID under test: RDMAMSG_DEVICE, else the first
    ACTIVE port; the RoCE v2 GID whose address is RDMAMSG_SELF (the LID on
    InfiniBand)."""
    from rdmamsg.errors import NoDeviceError
    from rdmamsg.verbs.device import resolve_local

    try:
        return resolve_local(os.environ.get("RDMAMSG_SELF"), device=os.environ.get("RDMAMSG_DEVICE"))
    except NoDeviceError as exc:
        if in_bed():
            pytest.fail(f"inside the test bed but no usable RDMA device: {exc}", pytrace=False)
        pytest.skip(f"no usable RDMA device: {exc}")


_MEASURED: list[str] = []


@pytest.fixture
def report():
    """``report(line)``: a measurement to print at the end of the run (the
    figures docs/reliability.md quotes)."""
    return _MEASURED.append


def pytest_terminal_summary(terminalreporter):
    if _MEASURED:
        terminalreporter.section("rdmamsg measurements")
        for line in _MEASURED:
            terminalreporter.write_line(line)

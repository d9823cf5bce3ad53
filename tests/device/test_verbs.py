"""Verbs resources on the device: enumeration, addressing, pool, QP, raw pointers."""
import os

import pytest

import rdmamsg
from rdmamsg.errors import NoDeviceError, PollerUnavailableError
from rdmamsg.verbs import _pyverbs as pv
from rdmamsg.verbs.context import DeviceContext
from rdmamsg.verbs.cq import CompletionQueue
from rdmamsg.verbs.qp import QueuePair, RemoteQP


def test_list_devices_shows_ports_and_gids(rdma_addr):
    devs = {d.name: d for d in rdmamsg.list_devices()}
    port = devs[rdma_addr.device].ports[rdma_addr.port - 1]
    assert port.active and port.active_mtu in (1024, 2048, 4096)
    if port.is_roce:
        ips = {g.ip for g in port.gids if g.type == "RoCE v2"}
        assert os.environ["RDMAMSG_SELF"] in ips


def test_resolve_picks_the_v2_gid_of_the_ip_and_obeys_overrides(rdma_addr):
    if rdma_addr.link_layer != "Ethernet":
        pytest.skip("RoCE only")   # a skip in the bed fails the run: the bed is RoCE
    me = os.environ["RDMAMSG_SELF"]
    a = rdmamsg.resolve_local(me)
    assert a.gid[-4:] == bytes(int(x) for x in me.split("."))
    assert rdmamsg.resolve_local(me, gid_index=0).gid_index == 0
    with pytest.raises(NoDeviceError, match="no active RoCE v2 GID has the address 192.0.2.1"):
        rdmamsg.resolve_local("192.0.2.1")
    with pytest.raises(NoDeviceError, match="no RDMA device named"):
        rdmamsg.resolve_local(me, device="nosuch0")


@pytest.fixture
def dctx(rdma_addr):
    d = DeviceContext.acquire(rdma_addr.device)
    yield d
    d.release()


def test_pool_registers_chunks_and_hands_out_views(dctx):
    pool = dctx.pool
    before = pool.stats().registered_bytes
    b = pool.acquire(16384)
    b.view[:4] = b"abcd"
    assert bytes(b.view[:4]) == b"abcd" and b.lkey
    assert pool.stats().registered_bytes >= before
    pool.release(b)


def test_queue_pair_walks_to_rts_and_to_error(dctx, rdma_addr):
    cq = CompletionQueue(dctx, 64)
    a = QueuePair(dctx, cq, rdma_addr, max_send_wr=8, max_recv_wr=8)
    b = QueuePair(dctx, cq, rdma_addr, max_send_wr=8, max_recv_wr=8)
    try:
        assert a.state() == "INIT"
        assert 0 <= a.psn < 1 << 24
        a.connect(RemoteQP(b.qp_num, b.psn, rdma_addr.gid, rdma_addr.lid, rdma_addr.mtu))
        assert a.state() == "RTS"
        a.to_error()
        assert a.state() == "ERR"
    finally:
        for x in (a, b, a, cq, cq):
            x.close()                      # idempotent
    with pytest.raises(OSError):
        a.state()


def test_raw_pointers_are_validated(dctx, rdma_addr):
    cp = pytest.importorskip("rdmamsg.transport._cpoller")
    cq = CompletionQueue(dctx, 16)
    other = CompletionQueue(dctx, 16)
    qp = QueuePair(dctx, cq, rdma_addr, max_send_wr=4, max_recv_wr=4)
    try:
        raw = cp.raw_pointers(dctx.ctx, dctx.pd, cq.cq, cq.channel, qp.qp)
        assert raw["qp"] and raw["channel_fd"] == cq.fd
        with pytest.raises(PollerUnavailableError, match="CQs are not the CQ given"):
            cp.raw_pointers(dctx.ctx, dctx.pd, other.cq, other.channel, qp.qp)
        with pytest.raises(PollerUnavailableError, match="expected a pyverbs.qp.QP"):
            cp.raw_pointers(dctx.ctx, dctx.pd, cq.cq, cq.channel, cq)
    finally:
        qp.close()
        cq.close()
        other.close()


def test_poller_is_the_one_asked_for(rdma_addr):
    from support.peers import endpoint_pair

    want = os.environ.get("RDMAMSG_POLLER", "auto")
    with endpoint_pair(os.environ["RDMAMSG_SELF"]) as (c, s):
        assert c.poller == s.poller == ("python" if want == "python" else "cython")
        assert rdmamsg.poller_in_use() == c.poller

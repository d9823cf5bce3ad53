"""The bed is real: an RC send/recv through pyverbs alone, on the device."""
from __future__ import annotations

import os
import subprocess
import sys

from support.bed import self_ip
from support.rawverbs import open_side


def test_rc_send_recv_between_two_qps_in_one_process(rdma_addr):
    a, b = open_side(rdma_addr), open_side(rdma_addr)
    try:
        a.connect(rdma_addr, b.info(rdma_addr))
        b.connect(rdma_addr, a.info(rdma_addr))
        payload = os.urandom(4000)
        b.post_recv(len(payload))
        a.post_send(payload)
        assert a.wait_one().status == 0
        wc = b.wait_one()
        assert wc.status == 0 and wc.byte_len == len(payload)
        assert b.mr.read(len(payload), 0) == payload
    finally:
        a.close()
        b.close()


def test_device_is_the_one_asked_for(rdma_addr):
    want = os.environ.get("RDMAMSG_DEVICE")
    if want:
        assert rdma_addr.device == want
    if rdma_addr.link_layer == "Ethernet":
        assert rdma_addr.gid[:12] == bytes(10) + b"\xff\xff"   # an IPv4-mapped RoCE v2 GID


def test_doctor_reports_the_cython_poller_on_this_bed(rdma_addr):
    """The Cython poller reads this release's pyverbs (rdma-core 39 on): on
    every bed, doctor says so rather than falling back."""
    ip = ["--ip", self_ip()] if self_ip() else []
    out = subprocess.run([sys.executable, "-m", "rdmamsg", "doctor", "--no-selftest", *ip],
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, RDMAMSG_POLLER="auto"))
    assert "the Cython poller is built and matches this pyverbs" in out.stdout, out.stdout

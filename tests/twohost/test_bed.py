"""The two-VM cluster is real: RC send/recv between the VMs, with QP numbers,
PSNs and GIDs exchanged over TCP."""
from __future__ import annotations

import hashlib

from support.rawverbs import open_side


def test_rc_send_recv_between_hosts(pair, rdma_addr):
    side = open_side(rdma_addr)
    try:
        remote = pair.exchange(side.info(rdma_addr))
        side.connect(rdma_addr, remote)
        payload = hashlib.sha256(b"rdmamsg").digest() * 100
        if pair.is_server:
            side.post_recv(len(payload))
            pair.barrier()                  # the receive is posted before the peer sends
            wc = side.wait_one()
            assert wc.status == 0 and wc.byte_len == len(payload)
            assert side.mr.read(len(payload), 0) == payload
            pair.exchange("received")
        else:
            pair.barrier()
            side.post_send(payload)
            assert side.wait_one().status == 0
            assert pair.exchange("sent") == "received"
    finally:
        side.close()

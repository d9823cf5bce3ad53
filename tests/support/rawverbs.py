"""A minimal RC connection written directly against pyverbs, independent of
rdmamsg, to prove the test bed moves real bytes."""
from __future__ import annotations

import random
from dataclasses import dataclass

from rdmamsg.verbs import _pyverbs as pv
from pyverbs.addr import GID, AHAttr, GlobalRoute
from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr

e = pv.enums


def gid_words(raw: bytes) -> str:
    return ":".join(raw[i:i + 2].hex() for i in range(0, 16, 2))


@dataclass
class RawSide:
    ctx: object
    pd: object
    cq: object
    mr: object
    qp: object
    psn: int

    def info(self, addr) -> dict:
        return {"qpn": self.qp.qp_num, "psn": self.psn, "gid": addr.gid, "lid": addr.lid,
                "mtu": addr.mtu}

    def connect(self, addr, remote: dict, timeout: int = 14, retry_cnt: int = 7) -> None:
        attr = QPAttr(port_num=addr.port)
        attr.qp_access_flags = e.IBV_ACCESS_LOCAL_WRITE
        self.qp.to_init(attr)
        attr = QPAttr(port_num=addr.port, path_mtu=min(addr.mtu, remote["mtu"]))
        attr.dest_qp_num = remote["qpn"]
        attr.rq_psn = remote["psn"]
        attr.max_dest_rd_atomic = 1
        attr.min_rnr_timer = 12
        if addr.use_grh:
            gr = GlobalRoute(dgid=GID(gid_words(remote["gid"])), sgid_index=addr.gid_index)
            attr.ah_attr = AHAttr(is_global=1, gr=gr, port_num=addr.port, dlid=remote["lid"])
        else:
            attr.ah_attr = AHAttr(port_num=addr.port, dlid=remote["lid"])
        self.qp.to_rtr(attr)
        attr.timeout, attr.retry_cnt, attr.rnr_retry = timeout, retry_cnt, 6
        attr.sq_psn, attr.max_rd_atomic = self.psn, 1
        self.qp.to_rts(attr)

    def post_recv(self, length: int) -> None:
        sge = pv.wr.SGE(self.mr.buf, length, self.mr.lkey)
        wr = pv.wr.RecvWR(wr_id=1, num_sge=1, sg=[sge])
        try:
            self.qp.post_recv(wr)
        finally:
            wr.close()
            sge.close()

    def post_send(self, data: bytes) -> None:
        self.mr.write(data, len(data))
        sge = pv.wr.SGE(self.mr.buf, len(data), self.mr.lkey)
        wr = pv.wr.SendWR(wr_id=2, opcode=e.IBV_WR_SEND, num_sge=1, sg=[sge])
        try:
            self.qp.post_send(wr)
        finally:
            wr.close()
            sge.close()

    def post_write(self, data: bytes, remote_addr: int, rkey: int) -> None:
        """An RDMA WRITE of ``data`` to ``remote_addr`` under ``rkey``, signaled."""
        self.mr.write(data, len(data))
        sge = pv.wr.SGE(self.mr.buf, len(data), self.mr.lkey)
        wr = pv.wr.SendWR(wr_id=3, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1, sg=[sge],
                          send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(rkey, remote_addr)
        try:
            self.qp.post_send(wr)
        finally:
            wr.close()
            sge.close()

    def wait_one(self, timeout_polls: int = 5_000_000):
        for _ in range(timeout_polls):
            n, wcs = self.cq.poll()
            if n:
                return wcs[0]
        raise TimeoutError("no completion")

    def close(self) -> None:
        for obj in (self.qp, self.mr, self.cq, self.pd, self.ctx):
            obj.close()


def open_side(addr, size: int = 1 << 16) -> RawSide:
    ctx = pv.device.Context(name=addr.device)
    pd = pv.pd.PD(ctx)
    cq = pv.cq.CQ(ctx, 16)
    mr = pv.mr.MR(pd, size, e.IBV_ACCESS_LOCAL_WRITE)
    cap = QPCap(max_send_wr=4, max_recv_wr=4, max_send_sge=1, max_recv_sge=1)
    qp = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap))
    return RawSide(ctx, pd, cq, mr, qp, random.getrandbits(24))

"""A peer that breaks the rules: work requests posted on an endpoint's QP
behind its engine's back, as a hostile or buggy peer would send them."""
from __future__ import annotations

import socket

from rdmamsg.verbs import _pyverbs as pv

e = pv.enums


def post_behind(ep, data: bytes, imm: int, remote: tuple[int, int] | None = None) -> None:
    """Post ``data`` with immediate ``imm`` on ``ep``'s QP, unsignaled: a
    SEND_WITH_IMM, or with ``remote=(addr, rkey)`` an RDMA WRITE_WITH_IMM."""
    mr = pv.mr.MR(ep._parts.dctx.pd, max(len(data), 1), e.IBV_ACCESS_LOCAL_WRITE)
    mr.write(data, len(data))
    sge = pv.wr.SGE(mr.buf, len(data), mr.lkey)
    opcode = e.IBV_WR_SEND_WITH_IMM if remote is None else e.IBV_WR_RDMA_WRITE_WITH_IMM
    wr = pv.wr.SendWR(wr_id=1 << 40, opcode=opcode, num_sge=1, sg=[sge],
                      imm_data=socket.htonl(imm), send_flags=0)
    if remote is not None:
        wr.set_wr_rdma(remote[1], remote[0])
    try:
        ep._parts.qp.qp.post_send(wr)
    finally:
        wr.close()
        sge.close()
    ep.__dict__.setdefault("_rogue_mrs", []).append(mr)     # alive until ep goes

"""RC queue pairs: creation from capabilities and the walk to RTS.

How this works.  A QueuePair is created in RESET with one CQ for sends and
receives, then moved RESET -> INIT (port, access flags) when created, so that
receives can be posted before the peer is known.  ``connect`` takes the peer's
QPN, PSN, GID/LID and MTU and moves INIT -> RTR -> RTS.  Our PSN is random.
Retries are finite: ``retry_cnt`` at most 7 and ``rnr_retry`` at most 6
(7 would mean retry forever, which turns a lost peer into a livelock).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import RdmaError, closed_error
from . import _pyverbs as pv
from .inherit import keep
from .context import DeviceContext
from .cq import CompletionQueue
from .device import LocalAddress, path_mtu

e = pv.enums

STATE_NAMES = {0: "RESET", 1: "INIT", 2: "RTR", 3: "RTS", 4: "SQD", 5: "SQE", 6: "ERR"}


@dataclass(frozen=True)
class RemoteQP:
    qpn: int
    psn: int
    gid: bytes
    lid: int
    mtu: int


@dataclass(frozen=True)
class Timing:
    """Transport retry settings (see the ibv_modify_qp man page)."""

    timeout: int = 14        #: local ACK timeout, 4.096 us * 2**timeout (14 is ~67 ms)
    retry_cnt: int = 7       #: transport retries before RETRY_EXC_ERR; finite
    rnr_retry: int = 6       #: receiver-not-ready retries; 7 would be infinite
    min_rnr_timer: int = 12  #: 0.64 ms

    def __post_init__(self) -> None:
        if not 0 <= self.retry_cnt <= 7:
            raise ValueError("retry_cnt must be 0..7")
        if not 0 <= self.rnr_retry <= 6:
            raise ValueError("rnr_retry must be 0..6: 7 means retry forever and livelocks")
        if not 1 <= self.timeout <= 31:
            raise ValueError("timeout must be 1..31")


def _gid_words(raw: bytes) -> str:
    return ":".join(raw[i:i + 2].hex() for i in range(0, 16, 2))


def _modify(state: str, fn, attr) -> None:
    try:
        fn(attr)
    except pv.PyverbsRDMAError as exc:
        raise RdmaError("ibv_modify_qp", exc.error_code or 0, f"to {state}") from exc


def connect_rc(qp, local: LocalAddress, remote: RemoteQP, psn: int, timing: Timing,
               rnr_retry: int | None = None) -> None:
    """Walk pyverbs RC ``qp`` (in INIT, our PSN ``psn``) through RTR to RTS
    towards ``remote``; the path MTU is the smaller one.  ``rnr_retry``
    overrides the timing's (a QP that receives nothing needs none)."""
    attr = pv.qp.QPAttr(port_num=local.port, path_mtu=path_mtu(local.mtu, remote.mtu))
    attr.dest_qp_num = remote.qpn
    attr.rq_psn = remote.psn
    attr.max_dest_rd_atomic = 16
    attr.min_rnr_timer = timing.min_rnr_timer
    if local.use_grh:
        gr = pv.GlobalRoute(dgid=pv.GID(_gid_words(remote.gid)), sgid_index=local.gid_index,
                            hop_limit=64)
        attr.ah_attr = pv.AHAttr(is_global=1, gr=gr, port_num=local.port, dlid=remote.lid)
    else:
        attr.ah_attr = pv.AHAttr(port_num=local.port, dlid=remote.lid)
    _modify("RTR", qp.to_rtr, attr)
    attr.timeout = timing.timeout
    attr.retry_cnt = timing.retry_cnt
    attr.rnr_retry = timing.rnr_retry if rnr_retry is None else rnr_retry
    attr.sq_psn = psn
    attr.max_rd_atomic = 16
    _modify("RTS", qp.to_rts, attr)


def to_error(qp) -> None:
    """Move pyverbs ``qp`` to ERR: outstanding work completes with WR_FLUSH_ERR."""
    attr = pv.qp.QPAttr()
    attr.qp_state = e.IBV_QPS_ERR
    try:
        qp.modify(attr, e.IBV_QP_STATE)
    except pv.PyverbsRDMAError as exc:
        raise RdmaError("ibv_modify_qp", exc.error_code or 0, "to ERR") from exc


def create_rc_qp(pd, cq, send_wr: int, recv_wr: int, inline: int):
    """An RC QP on ``pd`` with ``cq`` for both queues and room for ``inline``
    bytes of inline data, or less where the device refuses that much."""
    last = None
    for inl in (inline, 64, 0) if inline else (0,):
        cap = pv.qp.QPCap(max_send_wr=send_wr, max_recv_wr=recv_wr, max_send_sge=1,
                          max_recv_sge=1, max_inline_data=inl)
        init = pv.qp.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap, sq_sig_all=0)
        try:
            return keep(pv.qp.QP(pd, init))
        except pv.PyverbsRDMAError as exc:
            last = exc  # the device may refuse that much inline data: ask for less
    raise RdmaError("ibv_create_qp", last.error_code or 0,
                    f"RC QP with {send_wr} send and {recv_wr} receive WRs") from last


class QueuePair:
    """An RC QP on ``cq`` (sends and receives), created straight into INIT.
    ``access`` is what a peer may do through it: by default nothing."""

    LOCAL = e.IBV_ACCESS_LOCAL_WRITE

    def __init__(self, dctx: DeviceContext, cq: CompletionQueue, local: LocalAddress, *,
                 max_send_wr: int, max_recv_wr: int, max_inline: int = 256,
                 access: int = e.IBV_ACCESS_LOCAL_WRITE) -> None:
        dctx.check_open()
        cq.check_open()
        self.dctx, self.cq, self.local = dctx, cq, local
        self.psn = random.getrandbits(24)
        self.access = access
        self.qp = create_rc_qp(dctx.pd, cq.cq, max_send_wr, max_recv_wr, max_inline)
        try:
            _, init = self.qp.query(e.IBV_QP_CAP)
            self.max_send_wr = init.cap.max_send_wr
            self.max_recv_wr = init.cap.max_recv_wr
            self.max_inline = init.cap.max_inline_data
            attr = pv.qp.QPAttr(port_num=local.port)
            attr.qp_access_flags = access
            attr.pkey_index = 0
            _modify("INIT", self.qp.to_init, attr)
        except BaseException:
            self.qp.close()
            raise
        self.remote: RemoteQP | None = None
        self._closed = False

    @property
    def qp_num(self) -> int:
        return self.qp.qp_num

    def connect(self, remote: RemoteQP, timing: Timing = Timing()) -> None:
        """INIT -> RTR -> RTS towards ``remote``; the path MTU is the smaller one."""
        self._check()
        connect_rc(self.qp, self.local, remote, self.psn, timing)
        self.remote = remote

    def state(self) -> str:
        """The QP's current state as the device reports it (``RTS``, ``ERR``...)."""
        self._check()
        attr, _ = self.qp.query(e.IBV_QP_STATE)
        return STATE_NAMES.get(attr.qp_state, str(attr.qp_state))

    def to_error(self) -> None:
        """Move to ERR: outstanding work completes with WR_FLUSH_ERR."""
        if self._closed:
            return
        to_error(self.qp)

    def _check(self) -> None:
        if self._closed:
            raise closed_error("queue pair")

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.qp.close()

# Raw verbs pointers from pyverbs 44 objects, each validated before use.
#
# Order of trust: the exact type and tp_basicsize must match the layout we
# declared (pyverbs_layout.h) before any field is read; then what the pointer
# points at must agree with what pyverbs reports through Python.

import os

from cpython.object cimport PyObject, PyTypeObject

from rdmamsg.errors import PollerUnavailableError


cdef int _expect_layout(object obj, str module, str name, Py_ssize_t size) except -1:
    t = type(obj)
    cdef PyTypeObject *tp = <PyTypeObject *>t
    if t.__module__ != module or t.__name__ != name:
        raise PollerUnavailableError(
            f"expected a {module}.{name}, got {t.__module__}.{t.__name__}")
    if tp.tp_basicsize != size:
        raise PollerUnavailableError(
            f"{module}.{name} is {tp.tp_basicsize} bytes, the layout rdmamsg "
            f"knows is {size} (pyverbs from rdma-core 44): another pyverbs version?")
    return 0


cdef int _mismatch(str what) except -1:
    raise PollerUnavailableError(f"pyverbs layout check failed: {what}")


cdef ibv_context *context_ptr(object ctx) except NULL:
    _expect_layout(ctx, "pyverbs.device", "Context", RM_PV_CONTEXT_SIZE)
    cdef ibv_context *c = (<rm_pv_context *><PyObject *>ctx).context
    if c == NULL:
        raise PollerUnavailableError("the Context is closed")
    if (<bytes>ibv_get_device_name(c.device)).decode() != ctx.name:
        _mismatch("device name read through the pointer differs from Context.name")
    if c.cmd_fd != ctx.cmd_fd:
        _mismatch("cmd_fd read through the pointer differs from Context.cmd_fd")
    return c


cdef ibv_pd *pd_ptr(object pd, ibv_context *c) except NULL:
    _expect_layout(pd, "pyverbs.pd", "PD", RM_PV_PD_SIZE)
    cdef ibv_pd *p = (<rm_pv_pd *><PyObject *>pd).pd
    if p == NULL:
        raise PollerUnavailableError("the PD is closed")
    if p.context != c:
        _mismatch("pd->context is not the Context's pointer")
    return p


cdef ibv_comp_channel *channel_ptr(object cc, ibv_context *c) except NULL:
    _expect_layout(cc, "pyverbs.cq", "CompChannel", RM_PV_COMP_CHANNEL_SIZE)
    cdef ibv_comp_channel *ch = (<rm_pv_comp_channel *><PyObject *>cc).cc
    if ch == NULL:
        raise PollerUnavailableError("the CompChannel is closed")
    if ch.context != c:
        _mismatch("channel->context is not the Context's pointer")
    try:
        link = os.readlink(f"/proc/self/fd/{ch.fd}")
    except OSError:
        link = ""
    if "infinibandevent" not in link:
        _mismatch(f"channel->fd {ch.fd} is not a verbs event fd ({link!r})")
    return ch


cdef ibv_cq *cq_ptr(object cq, ibv_context *c, ibv_comp_channel *ch) except NULL:
    _expect_layout(cq, "pyverbs.cq", "CQ", RM_PV_CQ_SIZE)
    cdef ibv_cq *q = (<rm_pv_cq *><PyObject *>cq).cq
    if q == NULL:
        raise PollerUnavailableError("the CQ is closed")
    if q.context != c:
        _mismatch("cq->context is not the Context's pointer")
    if q.cqe != cq.cqe:
        _mismatch("cq->cqe differs from CQ.cqe")
    if ch != NULL and q.channel != ch:
        _mismatch("cq->channel is not the CompChannel's pointer")
    return q


cdef ibv_qp *qp_ptr(object qp, ibv_pd *p, ibv_cq *q) except NULL:
    _expect_layout(qp, "pyverbs.qp", "QP", RM_PV_QP_SIZE)
    cdef ibv_qp *raw = (<rm_pv_qp *><PyObject *>qp).qp
    if raw == NULL:
        raise PollerUnavailableError("the QP is closed")
    if raw.qp_num != qp.qp_num:
        _mismatch("qp->qp_num differs from QP.qp_num")
    if raw.pd != p:
        _mismatch("qp->pd is not the PD's pointer")
    if raw.send_cq != q or raw.recv_cq != q:
        _mismatch("the QP's CQs are not the CQ given")
    return raw


cdef ibv_mr *mr_ptr(object mr, ibv_pd *p) except NULL:
    _expect_layout(mr, "pyverbs.mr", "MR", RM_PV_MR_SIZE)
    cdef ibv_mr *m = (<rm_pv_mr *><PyObject *>mr).mr
    if m == NULL:
        raise PollerUnavailableError("the MR is closed")
    if m.lkey != mr.lkey or m.rkey != mr.rkey:
        _mismatch("mr->lkey/rkey differ from MR.lkey/rkey")
    if m.pd != p:
        _mismatch("mr->pd is not the PD's pointer")
    if <uintptr_t>m.addr != <uintptr_t>mr.buf:
        _mismatch("mr->addr differs from MR.buf")
    return m


#: The pyverbs classes whose layout the poller reads, with the size it expects.
LAYOUT = {
    "pyverbs.device.Context": RM_PV_CONTEXT_SIZE,
    "pyverbs.pd.PD": RM_PV_PD_SIZE,
    "pyverbs.cq.CompChannel": RM_PV_COMP_CHANNEL_SIZE,
    "pyverbs.cq.CQ": RM_PV_CQ_SIZE,
    "pyverbs.qp.QP": RM_PV_QP_SIZE,
    "pyverbs.mr.MR": RM_PV_MR_SIZE,
}


def raw_pointers(ctx, pd, cq, channel, qp, mrs=()):
    """Validate and return the raw pointers behind pyverbs objects, as ints.

    Raises PollerUnavailableError, naming the check, when the layout or the
    contents disagree with pyverbs.  Used by the poller and by ``doctor``.
    """
    cdef ibv_context *c = context_ptr(ctx)
    cdef ibv_pd *p = pd_ptr(pd, c)
    cdef ibv_comp_channel *ch = channel_ptr(channel, c) if channel is not None else NULL
    cdef ibv_cq *q = cq_ptr(cq, c, ch)
    cdef ibv_qp *raw = qp_ptr(qp, p, q) if qp is not None else NULL
    out = {"context": <uintptr_t>c, "pd": <uintptr_t>p, "channel": <uintptr_t>ch,
           "cq": <uintptr_t>q, "qp": <uintptr_t>raw,
           "channel_fd": ch.fd if ch != NULL else -1}
    out["mrs"] = [<uintptr_t>mr_ptr(mr, p) for mr in mrs]
    return out

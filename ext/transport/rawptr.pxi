# Raw verbs pointers from pyverbs objects (rdma-core 39 on), each validated
# before use.
#
# Order of trust: the exact type; then how the pointer is reached
# (layout_rule): pyverbs' own integer property where it has them (rdma-core 61
# on), else the known offset in an object big enough to hold a pointer there;
# then what the pointer points at must agree with what pyverbs reports through
# Python.  Before rdma-core 61 the same-named properties are object casts that
# corrupt the C struct when read, so they are never touched there.

import importlib
import os

from cpython.object cimport PyObject, PyTypeObject

from rdmamsg.errors import PollerUnavailableError

#: The pyverbs classes whose pointer the poller reads: the pointer's offset,
#: and the integer property that gives it from rdma-core 61 on (None: no
#: release has one).
CLASSES = {
    "pyverbs.device.Context": (RM_PV_PTR_OFFSET, "context"),
    "pyverbs.pd.PD": (RM_PV_PTR_OFFSET, "pd"),
    "pyverbs.cq.CompChannel": (RM_PV_PTR_OFFSET, None),
    "pyverbs.cq.CQ": (RM_PV_PTR_OFFSET, "cq"),
    "pyverbs.qp.QP": (RM_PV_PTR_OFFSET, "qp"),
    "pyverbs.mr.MR": (RM_PV_MR_PTR_OFFSET, None),
}


def layout_rule(str path, Py_ssize_t basicsize, bint int_props):
    """How the pointer inside a ``path`` object of ``basicsize`` bytes is
    reached: ``("property", name)`` when pyverbs has integer pointer
    properties (``int_props``: rdma-core 61 on) and this class has one, else
    ``("offset", n)``.  Raises PollerUnavailableError, saying why, for a class
    or a layout the poller cannot read."""
    try:
        offset, prop = CLASSES[path]
    except KeyError:
        raise PollerUnavailableError(f"{path} is not a pyverbs class the poller reads") from None
    if int_props and prop is not None:
        return "property", prop
    if basicsize < offset + <Py_ssize_t>sizeof(void *):
        raise PollerUnavailableError(
            f"{path.rsplit('.', 1)[1]} layout not recognised: {basicsize} bytes cannot hold "
            f"its pointer at offset {offset}")
    return "offset", offset


cdef object _int_props = None


def int_props():
    """Whether this pyverbs has the integer pointer properties (rdma-core 61
    on).  ``QP.qp`` came with them and exists in no earlier release, so its
    presence on the class (never read here) is the safe test."""
    global _int_props
    if _int_props is None:
        from pyverbs.qp import QP
        _int_props = hasattr(QP, "qp")
    return _int_props


def layout_problem():
    """Why the poller cannot read this pyverbs' objects, or None."""
    props = int_props()
    for path in CLASSES:
        module, name = path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        try:
            layout_rule(path, cls.__basicsize__, props)
        except PollerUnavailableError as exc:
            return str(exc)
    return None


cdef void *_pointer(object obj, str path) except? NULL:
    t = type(obj)
    if f"{t.__module__}.{t.__name__}" != path:
        raise PollerUnavailableError(f"expected a {path}, got {t.__module__}.{t.__name__}")
    how, where = layout_rule(path, (<PyTypeObject *>t).tp_basicsize, int_props())
    if how == "property":
        return <void *><uintptr_t>getattr(obj, where)
    return (<void **>((<char *><PyObject *>obj) + <Py_ssize_t>where))[0]


cdef int _mismatch(str what) except -1:
    raise PollerUnavailableError(f"pyverbs layout check failed: {what}")


cdef ibv_context *context_ptr(object ctx) except NULL:
    cdef ibv_context *c = <ibv_context *>_pointer(ctx, "pyverbs.device.Context")
    if c == NULL:
        raise PollerUnavailableError("the Context is closed")
    if (<bytes>ibv_get_device_name(c.device)).decode() != ctx.name:
        _mismatch("device name read through the pointer differs from Context.name")
    if c.cmd_fd != ctx.cmd_fd:
        _mismatch("cmd_fd read through the pointer differs from Context.cmd_fd")
    return c


cdef ibv_pd *pd_ptr(object pd, ibv_context *c) except NULL:
    cdef ibv_pd *p = <ibv_pd *>_pointer(pd, "pyverbs.pd.PD")
    if p == NULL:
        raise PollerUnavailableError("the PD is closed")
    if p.context != c:
        _mismatch("pd->context is not the Context's pointer")
    return p


cdef ibv_comp_channel *channel_ptr(object cc, ibv_context *c) except NULL:
    cdef ibv_comp_channel *ch = <ibv_comp_channel *>_pointer(cc, "pyverbs.cq.CompChannel")
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
    cdef ibv_cq *q = <ibv_cq *>_pointer(cq, "pyverbs.cq.CQ")
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
    cdef ibv_qp *raw = <ibv_qp *>_pointer(qp, "pyverbs.qp.QP")
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
    cdef ibv_mr *m = <ibv_mr *>_pointer(mr, "pyverbs.mr.MR")
    if m == NULL:
        raise PollerUnavailableError("the MR is closed")
    if m.lkey != mr.lkey or m.rkey != mr.rkey:
        _mismatch("mr->lkey/rkey differ from MR.lkey/rkey")
    if m.pd != p:
        _mismatch("mr->pd is not the PD's pointer")
    if <uintptr_t>m.addr != <uintptr_t>mr.buf:
        _mismatch("mr->addr differs from MR.buf")
    return m


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

/*
 * The object layouts of the pyverbs classes whose C pointer rdmamsg reads.
 *
 * pyverbs before rdma-core 61 has no accessor for the ibv_* pointer behind a
 * Context, PD, CQ, QP or MR, and Debian ships no .pxd files to cimport.  So we
 * declare the layout ourselves, for the version we run against (rdma-core 44).
 * Cython lays out a cdef class as PyObject_HEAD, then the base classes'
 * fields, then the class's own fields in .pxd order; the vtable pointer comes
 * with the first class that has C methods (PyverbsCM's cpdef close).
 *
 * Nothing here is trusted blindly: _cpoller checks the exact type, that
 * tp_basicsize equals the *_SIZE below, and then the contents (qp_num, lkey,
 * context pointers) against what pyverbs reports through Python, before any
 * pointer is used.  On any mismatch the pure-pyverbs poller runs instead.
 */
#ifndef RDMAMSG_PYVERBS_LAYOUT_H
#define RDMAMSG_PYVERBS_LAYOUT_H

#include <Python.h>
#include <infiniband/verbs.h>

typedef struct {
    PyObject_HEAD
    PyObject *weakref;      /* PyverbsObject.__weakref__ */
    PyObject *logger;       /* PyverbsObject.logger */
    void *vtab;             /* PyverbsCM's vtable */
} rm_pv_cm;

typedef struct {
    rm_pv_cm base;
    struct ibv_context *context;
    struct ibv_device *device;   /* set only for provider-opened contexts */
} rm_pv_context;

typedef struct {
    rm_pv_cm base;
    struct ibv_pd *pd;
} rm_pv_pd;

typedef struct {
    rm_pv_cm base;
    struct ibv_comp_channel *cc;
} rm_pv_comp_channel;

typedef struct {
    rm_pv_cm base;
    struct ibv_cq *cq;
} rm_pv_cq;

typedef struct {
    rm_pv_cm base;
    struct ibv_qp *qp;
} rm_pv_qp;

typedef struct {
    rm_pv_cm base;
    PyObject *pd;
    PyObject *cmid;
    struct ibv_mr *mr;
} rm_pv_mr;

/* tp_basicsize of each class in pyverbs 44 (x86-64): the whole object, so a
 * release that adds or moves a field changes it and fails validation. */
enum {
    RM_PV_CONTEXT_SIZE = 184,
    RM_PV_PD_SIZE = 136,
    RM_PV_COMP_CHANNEL_SIZE = 64,
    RM_PV_CQ_SIZE = 96,
    RM_PV_QP_SIZE = 128,
    RM_PV_MR_SIZE = 104,
};

#endif

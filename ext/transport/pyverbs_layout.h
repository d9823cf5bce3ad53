/*
 * Where the ibv_* pointer sits inside the pyverbs objects rdmamsg reads.
 *
 * pyverbs before rdma-core 61 has no accessor for the pointer behind a
 * Context, PD, CQ or QP (none for a CompChannel or MR in any release), and
 * distributions ship no .pxd files to cimport.  Cython lays out a cdef class
 * as PyObject_HEAD, then the base classes' fields, then the class's own fields
 * in .pxd order; the vtable pointer comes with the first class that has C
 * methods (PyverbsCM's cpdef close).  Every pyverbs class we read starts its
 * own fields with the pointer, right after that common head, and no release
 * from v39 to master has put a field before it: only the total size changed.
 *
 * Nothing here is trusted blindly: rawptr.pxi checks the type, that the
 * object is big enough to hold the pointer at its offset, and then the
 * contents (qp_num, lkey, context pointers) against what pyverbs reports
 * through Python, before any pointer is used.
 */
#ifndef RDMAMSG_PYVERBS_LAYOUT_H
#define RDMAMSG_PYVERBS_LAYOUT_H

#include <stddef.h>
#include <Python.h>

typedef struct {
    PyObject_HEAD
    PyObject *weakref;      /* PyverbsObject.__weakref__ */
    PyObject *logger;       /* PyverbsObject.logger */
    void *vtab;             /* PyverbsCM's vtable */
} rm_pv_cm;

/* MR: PyverbsCM, then its pd and cmid objects, then the ibv_mr pointer. */
typedef struct {
    rm_pv_cm base;
    PyObject *pd;
    PyObject *cmid;
    void *mr;
} rm_pv_mr;

enum {
    /* Context.context, PD.pd, CompChannel.cc, CQ.cq, QP.qp */
    RM_PV_PTR_OFFSET = sizeof(rm_pv_cm),
    RM_PV_MR_PTR_OFFSET = offsetof(rm_pv_mr, mr),
};

#endif

# One-sided RDMA WRITE and READ on an endpoint's second QP (the accessing
# side of channel/remote.py): one work request posted and its completion
# polled in C, so an operation makes no Python object, and the wait runs
# with the GIL released.  The caller holds OneSided's lock: one request at a
# time on the QP.

from libc.string cimport memset

cdef double RMA_SPIN = 2e-3       # busy-poll this long, then poll between short sleeps


cdef class OneSidedPoster:
    cdef ibv_qp *qp
    cdef ibv_cq *cq
    cdef object keep
    cdef ibv_wc wc

    def __init__(self, ctx, pd, cq, qp):
        cdef ibv_context *c = context_ptr(ctx)
        cdef ibv_pd *p = pd_ptr(pd, c)
        self.cq = cq_ptr(cq, c, NULL)
        self.qp = qp_ptr(qp, p, self.cq)
        self.keep = (ctx, pd, cq, qp)

    def address(self, obj):
        """The address of ``obj``'s buffer (C-contiguous; read-only ones too):
        regcache.buffer_address without ctypes, for the hot path."""
        cdef Py_buffer view
        _get_buffer(obj, &view, PyBUF_SIMPLE)
        cdef uintptr_t addr = <uintptr_t>view.buf
        PyBuffer_Release(&view)
        return addr

    def transfer(self, bint read, uintptr_t laddr, uint32_t length, uint32_t lkey,
                 uint64_t raddr, uint32_t rkey, double timeout):
        """Post one RDMA WRITE (``read``: READ) and wait for its completion;
        (wc status, vendor error), or (-1, 0) once ``timeout`` seconds have
        passed (negative: no limit) with the request still queued."""
        cdef ibv_sge sge
        cdef ibv_send_wr wr
        cdef ibv_send_wr *bad
        cdef int rc, n = 0, i
        cdef double start = mono()
        cdef double now
        memset(&wr, 0, sizeof(wr))
        sge.addr, sge.length, sge.lkey = laddr, length, lkey
        wr.wr_id, wr.sg_list, wr.num_sge = 1, &sge, 1
        wr.opcode = IBV_WR_RDMA_READ if read else IBV_WR_RDMA_WRITE
        wr.send_flags = IBV_SEND_SIGNALED
        wr.wr.rdma.remote_addr, wr.wr.rdma.rkey = raddr, rkey
        with nogil:
            rc = ibv_post_send(self.qp, &wr, &bad)
            while rc == 0:
                for i in range(CLOCK_EVERY):
                    n = ibv_poll_cq(self.cq, 1, &self.wc)
                    if n:
                        break
                if n:
                    break
                now = mono()
                if timeout >= 0 and now - start > timeout:
                    break
                if now - start > RMA_SPIN:
                    usleep(20)
        if rc:
            raise RdmaError("ibv_post_send", rc)
        if n < 0:
            raise RdmaError("ibv_poll_cq", -n)
        if n == 0:
            return -1, 0
        return self.wc.status, self.wc.vendor_err

# One-sided RDMA WRITE and READ on an endpoint's second QP (the accessing
# side of channel/remote.py), posted and polled in C, so an operation makes
# no Python object and waits with the GIL released.  The caller holds
# OneSided's lock.  A request's wr_id is its sequence number: RC completes
# requests in order, so one completion says how far the queue has got, and
# only every RMA_SIGNAL_EVERY-th write that does not wait asks for one (a
# failed request always makes one).  Requests may stay in flight after a
# call returns; the first failed completion is kept until asked for.
# transport/_pyonesided.py is the pure-pyverbs twin.

from libc.string cimport memset

cdef double RMA_SPIN = 2e-3       # busy-poll this long, then poll between short sleeps
cdef enum:
    RMA_WC_BATCH = 16
    RMA_SIGNAL_EVERY = 16  # writes that do not wait ask for a completion this often


cdef class OneSidedPoster:
    cdef ibv_qp *qp
    cdef ibv_cq *cq
    cdef object keep
    cdef ibv_wc wcs[RMA_WC_BATCH]
    cdef readonly uint64_t posted, done
    cdef uint64_t signaled           # the last request that asked for a completion
    cdef uint64_t last_raddr         # where the last request went
    cdef uint32_t last_rkey
    cdef int depth
    cdef uint32_t max_inline
    cdef char *stage                 # ``depth`` slots of slot_size bytes, registered
    cdef uint32_t stage_lkey, slot_size
    cdef object stage_keep
    cdef int fail_status, fail_vendor  # the first failed completion (0: none)

    def __init__(self, ctx, pd, cq, qp, int depth, uint32_t max_inline):
        cdef ibv_context *c = context_ptr(ctx)
        cdef ibv_pd *p = pd_ptr(pd, c)
        self.cq = cq_ptr(cq, c, NULL)
        self.qp = qp_ptr(qp, p, self.cq)
        self.keep = (ctx, pd, cq, qp)
        self.depth, self.max_inline = depth, max_inline

    def address(self, obj):
        """The address of ``obj``'s buffer (C-contiguous; read-only ones too):
        regcache.buffer_address without ctypes, for the hot path."""
        cdef Py_buffer view
        _get_buffer(obj, &view, PyBUF_SIMPLE)
        cdef uintptr_t addr = <uintptr_t>view.buf
        PyBuffer_Release(&view)
        return addr

    def set_staging(self, region, uintptr_t addr, uint32_t lkey, uint32_t slot_size):
        """Registered memory of ``depth`` slots that post_copy copies into."""
        self.stage_keep = region
        self.stage, self.stage_lkey, self.slot_size = <char *>addr, lkey, slot_size

    def failure(self):
        """(status, vendor error) of the first failed completion, or None."""
        if self.fail_status == 0:
            return None
        return self.fail_status, self.fail_vendor

    cdef int _reap(self) noexcept nogil:
        """Poll one batch; negative: ibv_poll_cq failed."""
        cdef int n = ibv_poll_cq(self.cq, RMA_WC_BATCH, self.wcs)
        cdef int i
        for i in range(n):
            if self.wcs[i].status != IBV_WC_SUCCESS and self.fail_status == 0:
                self.fail_status = self.wcs[i].status
                self.fail_vendor = self.wcs[i].vendor_err
            self.done = self.wcs[i].wr_id
        return n

    cdef int _wait_done(self, uint64_t seq, double timeout) noexcept nogil:
        """Until ``seq`` has completed: 1; 0 once ``timeout`` s have passed
        (negative: no limit); negative: ibv_poll_cq's error."""
        cdef double start = 0.0, now
        cdef int n, i
        while self.done < seq:
            for i in range(CLOCK_EVERY):
                n = self._reap()
                if n < 0:
                    return n
                if self.done >= seq:
                    return 1
            now = mono()
            if start == 0.0:
                start = now
            elif timeout >= 0 and now - start > timeout:
                return 0
            elif now - start > RMA_SPIN:
                usleep(20)
        return 1

    cdef int _room(self, double timeout) except -1:
        """Wait until the queue (and so the next staging slot) has room:
        False if ``timeout`` passed first."""
        cdef int rc
        with nogil:
            rc = self._reap()
            if rc >= 0 and self.posted - self.done >= <uint64_t>self.depth:
                rc = self._wait_done(self.posted - self.depth + 1, timeout)
        if rc < 0:
            raise RdmaError("ibv_poll_cq", -rc)
        return self.posted - self.done < <uint64_t>self.depth

    cdef uint64_t _post(self, int opcode, uintptr_t laddr, uint32_t length, uint32_t lkey,
                        uint64_t raddr, uint32_t rkey, bint inline, bint signal) except? 0:
        """Post one request (the queue has room): its sequence number."""
        cdef ibv_sge sge
        cdef ibv_send_wr wr
        cdef ibv_send_wr *bad
        memset(&wr, 0, sizeof(wr))
        sge.addr, sge.length, sge.lkey = laddr, length, lkey
        wr.wr_id, wr.sg_list, wr.num_sge = self.posted + 1, &sge, 1 if length else 0
        wr.opcode = opcode
        signal = signal or (self.posted + 1) % RMA_SIGNAL_EVERY == 0
        wr.send_flags = (IBV_SEND_SIGNALED if signal else 0) | (IBV_SEND_INLINE if inline else 0)
        wr.wr.rdma.remote_addr, wr.wr.rdma.rkey = raddr, rkey
        cdef int rc = ibv_post_send(self.qp, &wr, &bad)
        if rc:
            raise RdmaError("ibv_post_send", rc)
        self.posted += 1
        if signal:
            self.signaled = self.posted
        self.last_raddr, self.last_rkey = raddr, rkey
        return self.posted

    def post(self, bint read, uintptr_t laddr, uint32_t length, uint32_t lkey,
             uint64_t raddr, uint32_t rkey, double timeout):
        """Post an RDMA WRITE (``read``: READ) of registered memory; its
        sequence number, or 0 if the queue had no room within ``timeout``."""
        if not self._room(timeout):
            return 0
        return self._post(IBV_WR_RDMA_READ if read else IBV_WR_RDMA_WRITE, laddr, length,
                          lkey, raddr, rkey, False, True)

    def post_copy(self, obj, uint64_t raddr, uint32_t rkey, double timeout):
        """Post an RDMA WRITE of ``obj``'s bytes (at most the slot size), inline
        or copied into a staging slot, so ``obj`` is free again at return; its
        sequence number, or 0 if the queue had no room within ``timeout``."""
        cdef Py_buffer view
        cdef char *slot
        _get_buffer(obj, &view, PyBUF_SIMPLE)
        try:
            if <size_t>view.len > self.max_inline and (self.stage == NULL
                                                      or <size_t>view.len > self.slot_size):
                raise ValueError("post_copy: no staging slot that large")
            if not self._room(timeout):
                return 0
            if <size_t>view.len <= self.max_inline:
                return self._post(IBV_WR_RDMA_WRITE, <uintptr_t>view.buf, <uint32_t>view.len,
                                  0, raddr, rkey, True, False)
            slot = self.stage + (self.posted % self.depth) * self.slot_size
            memcpy(slot, view.buf, view.len)
            return self._post(IBV_WR_RDMA_WRITE, <uintptr_t>slot, <uint32_t>view.len,
                              self.stage_lkey, raddr, rkey, False, False)
        finally:
            PyBuffer_Release(&view)

    def write_copy(self, descriptor, data, long long offset, double timeout):
        """ep.write(wait=False)'s common case in one call: post_copy of
        ``data`` at ``offset`` in the grant ``descriptor`` (its bytes) names.
        The sequence number, or 0 if the queue had no room within
        ``timeout``; -1 if this is not the common case (a descriptor or
        buffer to look at closer, bounds or access to refuse, data too long
        to copy, a failure to report): the caller then takes its general
        path, which says what is wrong."""
        cdef Py_buffer d
        cdef grant_t g
        try:
            PyObject_GetBuffer(descriptor, &d, PyBUF_SIMPLE)
        except (TypeError, BufferError):
            return -1
        ok = grant_parse(<const char *>d.buf, d.len, &g) == CORE_OK and g.access & GRANT_WRITE
        PyBuffer_Release(&d)
        if not ok or self.fail_status or self.stage == NULL or offset < 0:
            return -1
        try:
            PyObject_GetBuffer(data, &d, PyBUF_SIMPLE)
        except (TypeError, BufferError):
            return -1
        try:
            if (d.len == 0 or <size_t>d.len > self.slot_size
                    or <uint64_t>offset + <uint64_t>d.len > g.length):
                return -1
            return self.post_copy(data, g.addr + <uint64_t>offset, g.rkey, timeout)
        finally:
            PyBuffer_Release(&d)

    def wait(self, uint64_t seq, double timeout):
        """Whether request ``seq`` (and so every earlier one) completed within
        ``timeout`` s (negative: no limit)."""
        cdef int rc
        if seq > self.signaled:
            # Nothing signaled covers it yet: a signaled empty write to where
            # the last one went does (no data, so nothing there changes).
            if not self._room(timeout):
                return False
            self._post(IBV_WR_RDMA_WRITE, 0, 0, 0, self.last_raddr, self.last_rkey, False, True)
        with nogil:
            rc = self._wait_done(seq, timeout)
        if rc < 0:
            raise RdmaError("ibv_poll_cq", -rc)
        return rc == 1

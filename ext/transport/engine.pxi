# The send/recv engine on raw verbs pointers: the hot loop.
#
# The algorithm is the one in rdmamsg/transport/_pyengine.py (read that first;
# backend.py has the contract).  Here it runs in C: completions are polled a
# batch at a time into a preallocated ibv_wc array, receive refills and sends
# are posted in C (sends chained, one ibv_post_send per batch), and Python
# sees one result per call.  Waiting (spin, arm, poll again, epoll) runs with
# the GIL released.
#
# Locking: a pthread mutex guards the engine's state.  It is only ever taken
# with the GIL released (or by trylock), so a thread holding the mutex that
# waits for the GIL cannot deadlock against one holding the GIL.  The mutex,
# and how threads wait (one leader in epoll, the others on a condition),
# are waiting.pxi's; the wire rules are protocol_core's.
#
# The write channel (ringmode) differs only where data goes and what limits
# a sender, as in the Python engine: fragments are RDMA writes into the
# peer's ring (protocol_core places them), receives carry no buffer and are
# reposted when polled, and consumed messages free ring cells that CREDIT
# controls report.  The queue (protocol_core's rxq_t) then holds ring entries.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.pythread cimport PyThread_get_thread_ident
from libc.errno cimport errno, EAGAIN, EINTR
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

import collections

from rdmamsg.errors import ProtocolError, RdmaError, WorkCompletionError
from rdmamsg.errors import closed_error, inherited_error
from rdmamsg.protocol._core import describe as describe_rule, end_error

cdef enum:
    WC_BATCH = 32
    POST_BATCH = 32

cdef enum:            # errors recorded without the GIL, raised with it
    E_NONE
    E_WC
    E_POLL
    E_POST_RECV
    E_POST_SEND
    E_NO_IMM
    E_SLOT
    E_CORE            # the peer broke a wire rule (err_arg: its CORE_E_*, err_a/b: details)
    E_PROTO           # raised with the GIL; the message is in err_msg

cdef enum:            # how posting a message's fragments without the GIL ended
    P_POSTED
    P_STALLED         # no room, and told not to wait
    P_BROKEN          # an error, the peer gone or closed, or this endpoint closed
    P_TIMED_OUT

cdef enum:            # counters, in STAT_KEYS order
    ST_MSGS_OUT
    ST_MSGS_IN
    ST_BYTES_OUT
    ST_BYTES_IN
    ST_UPDATES
    ST_STALLS
    ST_SLEEPS
    ST_INLINE
    ST_ZEROCOPY
    ST_N

from rdmamsg.transport.backend import STAT_KEYS
if len(STAT_KEYS) != ST_N:
    raise ImportError(f"engine.pxi counts {ST_N} stats; backend.STAT_KEYS names {len(STAT_KEYS)}")

cdef uint64_t RECV_TAG = (<uint64_t>1) << 63
cdef int _get_buffer(object obj, Py_buffer *view, int flags) except -1:
    try:
        PyObject_GetBuffer(obj, view, flags)
    except ValueError as exc:           # numpy's word for "not contiguous"
        raise BufferError(f"rdmamsg needs a C-contiguous buffer ({exc})") from None
    return 0


cdef double _deadline(object timeout) except? -2.0:
    if timeout is None:
        return -1.0
    if timeout < 0:
        raise ValueError("timeout must be non-negative or None")
    return mono() + timeout


cdef class Engine:
    cdef ibv_qp *qp
    cdef ibv_cq *cq
    cdef waiter_t w                # the lock, the fds, who waits (waiting.pxi)
    cdef int live_fd               # the bootstrap TCP connection (its EOF: gone)
    cdef object keep
    cdef list rviews               # each receive buffer's memoryview (for recv_view)
    cdef int lent                  # receive buffers lent out as MessageViews
    cdef int intr                  # interrupt() asked a receiver to step aside (atomic)
    # receive side
    cdef int nrecv
    cdef char **raddr
    cdef ibv_recv_wr *rwr
    cdef ibv_sge *rsge
    cdef rxq_t rq                  # fragments received, not yet taken (protocol_core)
    cdef object held               # a whole message taken but not delivered
    cdef object asm_obj            # the bytes a multi-fragment message is built in
    cdef char *asm_ptr
    cdef reasm_t asm               # its length and progress (protocol_core)
    cdef bint asm_user
    cdef unsigned long asm_owner   # asm_user: the thread whose buffer it is
    # send side
    cdef int nsend
    cdef char **saddr
    cdef uint32_t *slkey
    cdef int sq_depth
    cdef txq_t tq                  # post numbers, free send buffers, signalling (protocol_core)
    cdef ibv_send_wr swr[POST_BATCH]
    cdef ibv_sge ssge[POST_BATCH]
    cdef int nbatch
    cdef size_t fragment, max_inline, send_max, recv_max
    cdef size_t zc_fragment, zc_min  # zero-copy sends: fragment size, threshold
    cdef object regcache           # caller memory registered for zero-copy sends
    cdef object zc_pending         # (last seq, Registration) of zero-copy sends in flight
    cdef object tail_obj           # what a timed-out send() still has to send
    cdef bint sending              # a thread is posting a message (_take_send_turn)
    cdef credit_t cw
    # write channel
    cdef bint ringmode
    cdef ring_tx_t rtx
    cdef ring_rx_t rrx
    cdef char *ring_base
    cdef object ring_view
    # state
    cdef bint closed, close_sent, aborted
    cdef end_t pe                  # the peer's CLOSE, EOF, gone (protocol_core)
    cdef int inherited_from        # the parent's pid, in a child after fork()
    cdef object __weakref__        # verbs.inherit keeps engines in a WeakSet
    cdef int err, err_arg, wc_status, wc_vendor
    cdef uint64_t err_a, err_b     # E_CORE: the broken rule's details
    cdef bint wc_recv
    cdef object err_msg
    cdef ibv_wc wcs[WC_BATCH]
    cdef uint64_t st[ST_N]

    name = "cython"

    def __init__(self, cq, qp, recv_bufs, send_bufs, liveness, config, regcache=None):
        dctx = qp.dctx
        cdef ibv_context *c = context_ptr(dctx.ctx)
        cdef ibv_pd *p = pd_ptr(dctx.pd, c)
        cdef ibv_comp_channel *ch = channel_ptr(cq.channel, c)
        self.cq = cq_ptr(cq.cq, c, ch)
        self.qp = qp_ptr(qp.qp, p, self.cq)
        if ch.fd != cq.fd:
            raise PollerUnavailableError(
                f"the completion channel's fd is {ch.fd}, not {cq.fd} as found from /proc")
        recv_bufs, send_bufs = list(recv_bufs), list(send_bufs)
        self.keep = (cq, qp, recv_bufs, send_bufs, liveness, config.ring)
        self.rviews = [b.view for b in recv_bufs]
        self.live_fd = liveness.fileno()
        self.nrecv, self.nsend = len(recv_bufs), len(send_bufs)
        self.ringmode = config.ring is not None
        if self.ringmode:
            self.nrecv = config.ring_cells + RING_RESERVED
            self.ring_base = <char *><uintptr_t>config.ring.addr
            self.ring_view = config.ring.view
        self.sq_depth = qp.max_send_wr
        self.fragment = config.fragment
        self.max_inline = min(config.max_inline, qp.max_inline)
        self.send_max, self.recv_max = config.send_max, config.recv_max
        self.zc_fragment, self.zc_min = config.zc_fragment, config.zerocopy_min
        self.regcache = regcache if config.zerocopy_min > 0 else None
        self.zc_pending = collections.deque()
        cw_init(&self.cw, config.peer_depth,
                config.credit_threshold or cw_default_threshold(config.peer_depth))
        if self.nrecv < 1 or self.nsend < 1:
            raise ValueError("the engine needs receive and send buffers")
        if self.fragment > min(b.size for b in send_bufs) or self.fragment <= FIRST_HDR:
            raise ValueError(f"fragment of {self.fragment} bytes does not fit the send buffers")
        self._alloc()
        cdef int i
        if self.ringmode:
            pr = config.peer_ring
            rtx_init(&self.rtx, pr.cells, pr.cell)
            if rrx_init(&self.rrx, config.ring_cells, config.ring.size // config.ring_cells):
                raise MemoryError("ring arrays")
            self.rtx.addr, self.rtx.rkey = pr.addr, pr.rkey
            for i in range(self.nrecv):        # data arrives by RDMA write: no buffer
                self.rwr[i].wr_id = RECV_TAG | <uint64_t>i
                self.rwr[i].num_sge = 0
        # The longest fragment: a ring write (max_cells cells), or a receive buffer.
        reasm_init(&self.asm, self.recv_max, self.rrx.max_cells * self.rrx.cell if self.ringmode
                   else max(b.size for b in recv_bufs))
        for i, b in enumerate(recv_bufs):
            self.raddr[i] = <char *><uintptr_t>b.addr
            self.rsge[i].addr = b.addr
            self.rsge[i].length = b.size
            self.rsge[i].lkey = b.lkey
            self.rwr[i].wr_id = RECV_TAG | <uint64_t>i
            self.rwr[i].sg_list = &self.rsge[i]
            self.rwr[i].num_sge = 1
        for i, b in enumerate(send_bufs):
            self.saddr[i] = <char *><uintptr_t>b.addr
            self.slkey[i] = b.lkey
        waiter_open(&self.w, ch, self.cq, cq.fd, self.live_fd, config.spin_us / 1e6)

    cdef _alloc(self):
        self.raddr = <char **>calloc(self.nrecv, sizeof(char *))
        self.rwr = <ibv_recv_wr *>calloc(self.nrecv, sizeof(ibv_recv_wr))
        self.rsge = <ibv_sge *>calloc(self.nrecv, sizeof(ibv_sge))
        self.saddr = <char **>calloc(self.nsend, sizeof(char *))
        self.slkey = <uint32_t *>calloc(self.nsend, sizeof(uint32_t))
        if (rxq_init(&self.rq, self.nrecv) < 0 or self.raddr == NULL or self.rwr == NULL
                or self.rsge == NULL or self.saddr == NULL or self.slkey == NULL
                or txq_init(&self.tq, self.sq_depth, self.nsend) < 0):
            self._free_arrays()
            raise MemoryError("engine arrays")

    cdef void _free_arrays(self) noexcept:
        free(self.raddr); free(self.rwr); free(self.rsge)
        free(self.saddr); free(self.slkey)
        self.raddr = NULL; self.rwr = NULL; self.rsge = NULL
        self.saddr = NULL; self.slkey = NULL
        txq_free(&self.tq)
        rrx_free(&self.rrx)
        rxq_free(&self.rq)

    def __dealloc__(self):
        self._free_arrays()
        waiter_free(&self.w, False)

    # -- the lock --------------------------------------------------------------

    cdef inline void _lock(self) noexcept:
        waiter_lock(&self.w)

    cdef inline void _unlock(self) noexcept:
        pthread_mutex_unlock(&self.w.mu)

    # -- posting (mutex held; no GIL needed) --------------------------------------

    cdef int _repost(self, int slot) noexcept nogil:
        cdef ibv_recv_wr *bad
        self.rwr[slot].next = NULL
        cdef int rc = ibv_post_recv(self.qp, &self.rwr[slot], &bad)
        if rc:
            self._set_err(E_POST_RECV, rc)
            return -1
        if self.ringmode:
            return 0
        self.cw.unreturned += 1
        if self.cw.unreturned == 1 and self.cw.credits == 1:
            waiter_kick(&self.w)     # a sender stalled on the last credit may now use it
        return 0

    cdef void _queue(self, int kind, char *addr, uint32_t length, uint32_t lkey, int slot,
                     bint inline, uint32_t value=0, bint signal=False, uint32_t roff=0,
                     uint32_t rcells=0) noexcept nogil:
        """Add one SEND_WITH_IMM to the batch; ``value`` is FIRST's length.  On
        the write channel, ``rcells`` cells at ``roff`` make it a write into
        the peer's ring, and a control's ``value`` is the cells it reports."""
        if self.nbatch == POST_BATCH:
            self._flush()
        cdef ibv_send_wr *wr = &self.swr[self.nbatch]
        cdef ibv_sge *sge = &self.ssge[self.nbatch]
        sge.addr = <uintptr_t>addr
        sge.length = length
        sge.lkey = lkey
        wr.wr_id = self.tq.next
        wr.next = NULL
        wr.sg_list = sge
        wr.num_sge = 1 if length else 0
        wr.opcode = IBV_WR_SEND_WITH_IMM
        cdef bint signaled = txq_post(&self.tq, slot, kind, signal)
        wr.send_flags = (IBV_SEND_SIGNALED if signaled else 0) | (IBV_SEND_INLINE if inline else 0)
        if rcells:
            wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM
            wr.wr.rdma.remote_addr = self.rtx.addr + <uint64_t>roff * self.rtx.cell
            wr.wr.rdma.rkey = self.rtx.rkey
            wr.imm_data = htonl(ring_imm(kind, roff, rcells))
        else:
            wr.imm_data = htonl(tx_imm(self._credits(), kind, value))
        if self.nbatch:
            self.swr[self.nbatch - 1].next = wr
        self.nbatch += 1

    cdef int _flush(self) noexcept nogil:
        cdef ibv_send_wr *bad
        if self.nbatch == 0:
            return 0
        cdef int n = self.nbatch
        bad = NULL
        cdef int rc = ibv_post_send(self.qp, &self.swr[0], &bad)
        self.nbatch = 0
        if rc:
            # From ``bad`` on, nothing reached the device: no completion will come.
            txq_unpost(&self.tq, n - <int>(bad - &self.swr[0]) if bad != NULL else n)
            self._set_err(E_POST_SEND, rc)
            return -1
        return 0

    cdef inline bint _sq_room(self) noexcept nogil:
        return txq_room(&self.tq)

    cdef void _maybe_update(self) noexcept nogil:
        cdef uint32_t n
        if not self._sq_room() or self.close_sent or self.err != E_NONE:
            return
        if rx_update_due(self._credits(), &self.rrx, &n):
            self._queue(K_CREDIT, NULL, 0, 0, -1, False, n)
            self.st[ST_UPDATES] += 1

    # -- completions -----------------------------------------------------------

    cdef void _set_err(self, int code, int arg) noexcept nogil:
        if self.err == E_NONE:
            self.err = code
            self.err_arg = arg

    cdef void _broke(self, int rule, uint64_t a, uint64_t b) noexcept nogil:
        """The peer broke wire rule ``rule`` (a CORE_E_* code)."""
        if self.err == E_NONE:
            self.err, self.err_arg, self.err_a, self.err_b = E_CORE, rule, a, b

    cdef int _progress(self) noexcept nogil:
        """Poll one batch and act on it: how many completions (an error counts)."""
        self._flush()
        cdef int n = ibv_poll_cq(self.cq, WC_BATCH, self.wcs)
        cdef int i
        if n < 0:
            self._set_err(E_POLL, -n)
            return 1
        for i in range(n):
            self._handle(&self.wcs[i])
        if n:
            self._maybe_update()
            self._flush()
            waiter_progressed(&self.w)
        return n

    cdef void _handle(self, ibv_wc *wc) noexcept nogil:
        cdef int slot, rc, what
        cdef uint64_t a = 0, b = 0
        if wc.status != IBV_WC_SUCCESS:
            if not (wc.wr_id & RECV_TAG):
                txq_done(&self.tq, wc.wr_id)
            if wc_error_wins(WC_NONE if self.err == E_NONE else
                             self.wc_status if self.err == E_WC else WC_OTHER, wc.status):
                self.err = E_WC
                self.wc_status = wc.status
                self.wc_vendor = wc.vendor_err
                self.wc_recv = (wc.wr_id & RECV_TAG) != 0
            return
        if not (wc.wr_id & RECV_TAG):
            txq_done(&self.tq, wc.wr_id)
            return
        slot = <int>(wc.wr_id & ~RECV_TAG)
        if slot >= self.nrecv:
            self._set_err(E_SLOT, slot)
            return
        if not (wc.wc_flags & IBV_WC_WITH_IMM):
            self._set_err(E_NO_IMM, 0)
            return
        rc = rx_arrived(&self.rq, self._credits(), &self.rtx, &self.rrx, slot,
                        wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM, wc.byte_len, ntohl(wc.imm_data),
                        &what, &a, &b)
        if rc != CORE_OK:
            self._broke(rc, a, b)
            return
        if what & ARR_CLOSE:
            self.pe.peer_closed = True
        if what & ARR_REPOST:
            self._repost(slot)

    cdef inline credit_t *_credits(self) noexcept nogil:
        """The send channel's credits; NULL on the write channel."""
        return NULL if self.ringmode else &self.cw

    cdef inline char *_src(self, int i) noexcept nogil:
        """Where the data of queued fragment ``i`` is."""
        if self.ringmode:
            return self.ring_base + self.rq.val[i]
        return self.raddr[self.rq.slot[i]]

    cdef inline void _consumed(self, int slot) noexcept nogil:
        """A received fragment's memory may be used again."""
        if self.ringmode:
            rrx_release(&self.rrx, <uint32_t>slot)
        else:
            self._repost(slot)

    # -- waiting ---------------------------------------------------------------

    cdef int _block(self, double deadline, bint receiving=False,
                    bint assembling=False) except -1:
        """Wait for progress (GIL and mutex held on entry and exit).  0 once
        ``deadline`` has passed with nothing happening.

        The first GIL_SPIN seconds spin with the GIL held: giving it up and
        taking it back costs more than a short wait does, and Python lets a
        thread hold the GIL for milliseconds between switches anyway.  But
        not while another of our threads waits (gil_spin).  The rest of the
        spin, and the sleep, run without it.  A receiver
        (``receiving``) also returns once interrupt() was called.  A receiver
        part-way through a message (``assembling``) takes its middle
        fragments without the GIL (_assemble): a large message then costs one
        GIL hand-off, not one per fragment, and other threads run meanwhile."""
        cdef int r, i
        cdef uint64_t seen
        cdef double now = mono()
        cdef double end = now + gil_spin(waiter_spin_budget(&self.w, now))
        if deadline >= 0 and end > deadline:
            end = deadline                     # a short timeout is not a spin licence
        while not assembling:
            for i in range(CLOCK_EVERY):
                if self._progress():
                    return 1
            if mono() >= end or (receiving and rdmamsg_load(&self.intr)):
                break
        seen = self.w.changes
        self.w.gate.inside += 1
        rdmamsg_add(&gil_waiters, 1)
        with nogil:
            if assembling:
                r = self._assemble(deadline)
            else:
                r = self._wait(deadline, seen, receiving)
            if r:
                await_gil(waiter_spin_budget(&self.w, mono()))
        rdmamsg_add(&gil_waiters, -1)
        gate_leave(&self.w.gate, &self.w.cond, self.closed)
        if self.closed:
            raise self._closed_error()
        return r

    cdef int _wait(self, double deadline, uint64_t seen, bint receiving) noexcept nogil:
        cdef double spin_end = mono()
        spin_end += waiter_spin_budget(&self.w, spin_end)
        if deadline >= 0 and spin_end > deadline:
            spin_end = deadline
        cdef double now
        cdef int timeout_ms, nev, i
        cdef bint live_ready
        while True:
            for i in range(CLOCK_EVERY):
                if self._progress():
                    return 1
            if mono() >= spin_end:
                break
            if receiving and rdmamsg_load(&self.intr):
                return 1
            waiter_let_in(&self.w, spin_end)
            # Only here can another thread have run: its progress may be ours.
            if self.w.changes != seen:
                return 1
        if self.w.leader:
            # Another thread sleeps in epoll; it broadcasts when it wakes.
            return waiter_sleep(&self.w, deadline)
        ibv_req_notify_cq(self.cq, 0)
        if self._progress() or (receiving and rdmamsg_load(&self.intr)):
            return 1
        now = mono()
        if end_expired(&self.pe, now):
            pthread_cond_broadcast(&self.w.cond)
            return 1
        timeout_ms = end_sleep_ms(&self.pe, timeout_ms_until(deadline, now))
        self.st[ST_SLEEPS] += 1
        nev = waiter_epoll(&self.w, timeout_ms, &live_ready)
        if self.closed:
            return 1
        if live_ready:
            self._check_live()
        if nev > 0 or deadline < 0:
            return 1
        return mono() < deadline

    cdef void _check_live(self) noexcept nogil:
        cdef char buf[64]
        cdef ssize_t r
        if self.pe.live_eof:
            return
        r = recv(self.live_fd, buf, 64, MSG_DONTWAIT)
        if r > 0 or (r < 0 and (errno == EAGAIN or errno == EINTR)):
            return
        self.pe.live_eof, self.pe.eof_at = True, mono()
        epoll_ctl(self.w.ep_fd, EPOLL_CTL_DEL, self.live_fd, NULL)

    # -- errors ----------------------------------------------------------------

    cdef object _error(self):
        if self.err >= E_NO_IMM:
            self._abort()
        if self.err == E_WC:
            return WorkCompletionError(self.wc_status, "receive" if self.wc_recv else "send",
                                       self.wc_vendor)
        if self.err == E_POLL:
            return RdmaError("ibv_poll_cq", self.err_arg)
        if self.err == E_POST_RECV:
            return RdmaError("ibv_post_recv", self.err_arg)
        if self.err == E_POST_SEND:
            return RdmaError("ibv_post_send", self.err_arg)
        if self.err == E_NO_IMM:
            return ProtocolError("a receive completed without rdmamsg's immediate")
        if self.err == E_SLOT:
            return ProtocolError(f"a receive completed for unknown buffer {self.err_arg}")
        if self.err == E_CORE:
            return ProtocolError(describe_rule(self.err_arg, self.err_a, self.err_b))
        return ProtocolError(self.err_msg)

    cdef int _proto(self, str msg) except -1:
        if self.err == E_NONE:
            self.err = E_PROTO
            self.err_msg = msg
        raise self._error()

    cdef void _abort(self) noexcept nogil:
        """The peer broke the protocol: drop the connection now (QP to ERR,
        the liveness socket shut down, so the peer notices at once)."""
        cdef ibv_qp_attr attr
        if self.aborted or self.closed:
            return
        self.aborted = True
        attr.qp_state = IBV_QPS_ERR
        ibv_modify_qp(self.qp, &attr, IBV_QP_STATE)
        shutdown(self.live_fd, SHUT_RDWR)

    cdef int _raise_broken(self) except -1:
        if self.err != E_NONE:
            raise self._error()
        if self.pe.peer_gone:
            raise end_error(END_GONE)
        return 0

    cdef int _check_open(self) except -1:
        if self.closed:
            raise self._closed_error()
        return 0

    cdef object _closed_error(self):
        if self.inherited_from:
            return inherited_error("endpoint", self.inherited_from)
        return closed_error("endpoint")

    def _disown(self):
        """In a child after fork(): every use raises InheritedError, and
        nothing is posted, polled or freed (the QP is the parent's).  The
        mutex and condition are new: a thread that held them does not exist
        here."""
        if not self.w.mu_ok:
            return
        waiter_disown(&self.w)
        self.sending = False
        self.closed = True
        self.inherited_from = getppid()

    cdef int _check_send(self) except -1:
        self._check_open()
        self._raise_broken()
        cdef int end = end_sending(&self.pe, self.close_sent)
        if end != END_OPEN:
            raise end_error(end)
        return 0

    cdef int _check_recv(self) except -1:
        self._check_open()
        if self.err != E_NONE:
            raise self._error()
        cdef int end = end_receiving(&self.pe, self.rq.count, self.asm.active)
        if end == END_CLOSED_MID:
            self._proto(str(end_error(end)))      # drops the connection
        if end != END_OPEN:
            raise end_error(end)
        if rdmamsg_load(&self.intr):
            rdmamsg_store(&self.intr, 0)
            raise InterruptedError("the receive was interrupted (Engine.interrupt)")
        return 0

    # -- send --------------------------------------------------------------------

    def post_receives(self):
        """Post every receive buffer (before the peer may send)."""
        cdef int i
        self._lock()
        try:
            self._check_open()
            for i in range(self.nrecv):
                if self._repost(i) < 0:
                    raise self._error()
            self.cw.unreturned = 0     # the initial depth already counts them
        finally:
            self._unlock()

    def send(self, data, timeout=None):
        """Send one whole message (any C-contiguous buffer).  At or above
        zerocopy_min bytes it is sent from the caller's memory, registered
        through the cache; a buffer other than ``bytes`` (which cannot change)
        is then in use until its send completes, so send() waits for that."""
        self._send_obj(data, timeout)

    cdef int _send_obj(self, data, timeout) except -1:
        cdef Py_buffer view
        _get_buffer(data, &view, PyBUF_SIMPLE)
        reg = None
        try:
            deadline = _deadline(timeout)
            if (self.regcache is not None and <size_t>view.len >= self.zc_min
                    and <size_t>view.len <= self.send_max):
                reg = self.regcache.acquire(data, <uintptr_t>view.buf, view.len)
            if self._send_mem(<char *>view.buf, view.len, deadline, reg, type(data) is not bytes):
                reg = None                     # kept until its sends complete
        finally:
            if reg is not None:
                self.regcache.release(reg)
            PyBuffer_Release(&view)
        return 0

    cdef bint _send_mem(self, char *ptr, size_t n, double deadline, object reg,
                        bint mutable) except -1:
        """Send the ``n`` bytes at ``ptr`` as one message: copied, or with
        ``reg`` (their registration) from there.  True if ``reg`` is kept
        (in zc_pending) until those sends complete."""
        cdef uint32_t lkey = 0 if reg is None else reg.lkey
        cdef uint64_t first_seq, last_seq = 0
        cdef bint kept = False
        if n > self.send_max:
            raise ValueError(f"message of {n} bytes exceeds the peer's limit of {self.send_max}")
        self._lock()
        try:
            self._check_send()
            self._take_send_turn(deadline)
            try:
                self._check_send()
                self._prune()
                if self.tail_obj is not None:
                    tail = self.tail_obj
                    self._send_buf(PyBytes_AS_STRING(tail), len(tail), True, deadline, 0)
                first_seq = self.tq.next
                try:
                    # A buffer that may change must be waited for: ask for the
                    # completion of its last fragment.  Others complete with the
                    # next signaled send (an RC queue completes in order).
                    self._send_buf(ptr, n, False, deadline, lkey, mutable)
                finally:
                    if reg is not None and self.tq.next > first_seq:
                        # Posted from the caller's memory: keep it registered
                        # (and exported) until the last of those sends completes.
                        self.zc_pending.append((self.tq.next - 1, reg))
                        self.st[ST_ZEROCOPY] += 1
                        kept = True
                        last_seq = self.tq.next - 1
            finally:
                self._give_send_turn()
                if kept and mutable:
                    self._wait_sent(last_seq)
            self.st[ST_MSGS_OUT] += 1
            self.st[ST_BYTES_OUT] += n
        finally:
            self._flush()
            self._unlock()
        return kept

    cdef int _take_send_turn(self, double deadline) except -1:
        """Become the thread that posts.  A message's fragments go out
        together: while one thread waits for room part-way through a
        message (the mutex let go), another's message waits too."""
        cdef int r
        while self.sending:
            self.w.gate.inside += 1
            rdmamsg_add(&gil_waiters, 1)
            with nogil:
                r = waiter_sleep(&self.w, deadline)
                await_gil(WOKEN_SPIN)
            rdmamsg_add(&gil_waiters, -1)
            gate_leave(&self.w.gate, &self.w.cond, self.closed)
            if self.closed:
                raise self._closed_error()
            if not r:
                raise TimeoutError("send timed out waiting for another thread's message to go")
        self.sending = True
        return 0

    cdef void _give_send_turn(self) noexcept nogil:
        self.sending = False
        if self.w.gate.inside > 0:
            pthread_cond_broadcast(&self.w.cond)

    cdef int _prune(self) except -1:
        """Let go of registrations whose zero-copy sends have completed."""
        while self.zc_pending and self.zc_pending[0][0] < self.tq.done:
            self.regcache.release(self.zc_pending.popleft()[1])
        return 0

    cdef int _wait_sent(self, uint64_t seq) except -1:
        """Wait until send ``seq`` has completed (its memory is free again).  A
        broken connection flushes it: the QP goes to ERR so that is quick."""
        self._flush()
        while self.tq.done <= seq and self.tq.done < self.tq.next:   # (a failed post never will)
            if self.err != E_NONE or self.pe.peer_gone:
                self._abort()
            if self._progress():
                continue
            self._block(-1.0)
        self._prune()
        return 0

    cdef int _send_buf(self, char *ptr, size_t n, bint continuing, double deadline,
                       uint32_t zc_lkey, bint signal_last=False) except -1:
        """Post one message (or, ``continuing``, the rest of one).  With
        ``zc_lkey`` the fragments are sent from ``ptr`` itself, else copied;
        ``signal_last`` asks for a completion of the last fragment.  Once it
        must wait for room, it lets go of the GIL until the message is posted:
        a large message then costs one GIL hand-off, not one per stall."""
        cdef size_t off = 0
        cdef int st
        self.tail_obj = None
        st = self._post_fragments(ptr, n, &off, continuing, zc_lkey, signal_last, False,
                                  deadline)
        if st == P_STALLED:
            self.w.gate.inside += 1
            rdmamsg_add(&gil_waiters, 1)
            with nogil:
                st = self._post_fragments(ptr, n, &off, continuing, zc_lkey, signal_last,
                                          True, deadline)
                await_gil(waiter_spin_budget(&self.w, mono()))
            rdmamsg_add(&gil_waiters, -1)
            gate_leave(&self.w.gate, &self.w.cond, self.closed)
        if st == P_BROKEN:
            self._check_open()
            self._raise_broken()
            raise end_error(END_PEER_CLOSED)
        if st == P_TIMED_OUT:
            if off == 0 and not continuing:
                raise TimeoutError("send timed out waiting for the peer to take messages")
            self.tail_obj = PyBytes_FromStringAndSize(ptr + off, n - off)
            raise TimeoutError("send timed out part-way through a message; the rest "
                               "is sent ahead of the next message")
        if self._flush() < 0:
            raise self._error()
        return 0

    cdef int _post_fragments(self, char *ptr, size_t n, size_t *offp, bint continuing,
                             uint32_t zc_lkey, bint signal_last, bint wait,
                             double deadline) noexcept nogil:
        """_send_buf's loop, from byte ``offp[0]`` (advanced as fragments are
        queued): P_POSTED once the last is queued; else why it stopped, where
        P_STALLED (no room, and not ``wait``) leaves nothing half-done."""
        cdef size_t off = offp[0], wire, frag = self.zc_fragment if zc_lkey else self.fragment
        cdef uint64_t dlen
        cdef uint32_t roff = 0, rcells = 0
        cdef int kind, slot
        cdef bint need_slot, returning
        cdef char *dst
        while True:
            kind = frag_next(n, off, not continuing and off == 0, frag, self.fragment,
                             self.ringmode, &dlen)
            returning = kind != K_FIRST
            # A slot to copy into, unless the data goes inline or zero-copy
            # (FIRST_LONG's header always needs one).
            need_slot = not ((kind == K_WHOLE and n <= self.max_inline)
                             or (zc_lkey and kind != K_FIRST_LONG))
            wire = dlen + (FIRST_HDR if kind == K_FIRST_LONG else 0)
            while not self._room(returning, wire, need_slot, &roff, &rcells):
                if self._progress():
                    continue
                if self.err != E_NONE or self.pe.peer_gone or self.pe.peer_closed or self.closed:
                    return P_BROKEN
                if not wait:
                    return P_STALLED
                if not self._wait(deadline, self.w.changes, False):
                    return P_TIMED_OUT
                if self.closed:
                    return P_BROKEN
            if not need_slot:
                if zc_lkey:
                    self._queue(kind, ptr + off, <uint32_t>dlen, zc_lkey, -1, False, n,
                                signal_last and (kind == K_WHOLE or kind == K_LAST), roff, rcells)
                else:
                    self._queue(kind, ptr, <uint32_t>n, 0, -1, n > 0, 0, False, roff, rcells)
                    self.st[ST_INLINE] += 1
            else:
                slot = txq_take(&self.tq)
                dst = self.saddr[slot]
                if kind == K_FIRST_LONG:
                    put_u64le(dst, n)
                    memcpy(dst + FIRST_HDR, ptr, dlen)
                    self._queue(kind, dst, <uint32_t>(dlen + FIRST_HDR), self.slkey[slot], slot,
                                False, 0, False, roff, rcells)
                else:
                    memcpy(dst, ptr + off, dlen)
                    self._queue(kind, dst, <uint32_t>dlen, self.slkey[slot], slot, False, n, False,
                                roff, rcells)
            off += dlen
            offp[0] = off
            if kind == K_WHOLE or kind == K_LAST:
                return P_POSTED

    cdef bint _room(self, bint returning, size_t wire, bint need_slot, uint32_t *roff,
                    uint32_t *rcells) noexcept nogil:
        """Whether a ``wire``-byte fragment may be posted now; on the write
        channel, also where it goes in the peer's ring (whose space it spends)."""
        if not self._sq_room() or (need_slot and self.tq.nfree == 0):
            return False
        if self.ringmode:
            if rtx_place(&self.rtx, wire, roff, rcells):
                return True
        elif cw_can_send(&self.cw, returning):
            return True
        self.st[ST_STALLS] += 1
        return False

    # -- receive -------------------------------------------------------------------

    cdef inline void _pop(self) noexcept nogil:
        cdef int slot = self.rq.slot[self.rq.head]
        rxq_pop(&self.rq)
        self._consumed(slot)

    cdef int _rule(self, int rule, uint64_t a, uint64_t b) except -1:
        """Raise (and drop the connection) if the peer broke ``rule``."""
        if rule != CORE_OK:
            self._broke(rule, a, b)
            raise self._error()
        return 0

    cdef object _take(self, char *user, size_t cap):
        """The next whole message: bytes (user NULL) or its length copied into
        ``user``; None while none is complete.  Mutex and GIL held."""
        cdef int slot, kind, rc
        cdef uint32_t ln, skip
        cdef uint64_t total, at, a = 0, b = 0
        cdef char *src
        if self.asm.active and not self._assembler():
            return None        # arriving into another receiver's buffer: theirs
        if self.held is not None and not self.asm.active:
            msg = self.held
            if user != NULL:
                if <size_t>len(msg) > cap:
                    raise ValueError(f"the next message has {len(msg)} bytes; the buffer "
                                     f"holds {cap}")
                memcpy(user, PyBytes_AS_STRING(msg), len(msg))
                msg = len(msg)
            self.held = None
            return msg
        while self.rq.count > 0:
            slot = self.rq.slot[self.rq.head]
            ln = self.rq.len[self.rq.head]
            kind = self.rq.kind[self.rq.head]
            src = self._src(self.rq.head)
            if not self.asm.active:
                rc = reasm_length(&self.asm, kind, ln, self.rq.val[self.rq.head], src, &total,
                                  &a, &b)
                self._rule(rc, a, b)
                if kind == K_WHOLE:
                    if user != NULL and ln > cap:
                        raise ValueError(f"the next message has {ln} bytes; the buffer holds {cap}")
                    if user != NULL:
                        memcpy(user, src, ln)
                        msg = ln
                    else:
                        msg = PyBytes_FromStringAndSize(src, ln)
                    self._pop()
                    self._delivered(ln)
                    return msg
                skip = FIRST_HDR if kind == K_FIRST_LONG else 0
                if user != NULL and total > cap:
                    raise ValueError(f"the next message has {total} bytes; the buffer holds {cap}")
                if user != NULL:
                    self.asm_ptr, self.asm_user = user, True
                    self.asm_owner = PyThread_get_thread_ident()
                else:
                    self.asm_obj = PyBytes_FromStringAndSize(NULL, total)
                    self.asm_ptr, self.asm_user = PyBytes_AS_STRING(self.asm_obj), False
                memcpy(self.asm_ptr, src + skip, ln - skip)
                reasm_begin(&self.asm, kind, total, ln)
                self._pop()
                continue
            rc = reasm_next(&self.asm, kind, ln, &at, &a, &b)
            self._rule(rc, a, b)
            memcpy(self.asm_ptr + at, src, ln)
            self._pop()
            if self.asm.active:
                continue
            total = self.asm.total
            self._delivered(total)
            if self.asm_user:
                self._free_for_others()
                return total
            msg, self.asm_obj = self.asm_obj, None
            if user == NULL:
                return msg
            if <size_t>len(msg) > cap:          # begun by recv(), finished by recv_into()
                self.held = msg
                raise ValueError(f"the next message has {len(msg)} bytes; the buffer holds {cap}")
            memcpy(user, PyBytes_AS_STRING(msg), total)
            return total
        self._maybe_update()
        self._flush()
        return None

    cdef int _assemble(self, double deadline) noexcept nogil:
        """Copy the middle fragments of the message being assembled, waiting
        for them as needed: 1 once _take has work (the last fragment,
        anything unexpected, an error, a close or an interrupt to report),
        0 once ``deadline`` has passed.  Mutex held, GIL not needed."""
        cdef uint64_t at, a, b
        while True:
            while self.rq.count > 0:
                # A fragment that breaks a rule changes nothing: _take reports it.
                if (self.rq.kind[self.rq.head] != K_MIDDLE or
                        reasm_next(&self.asm, K_MIDDLE, self.rq.len[self.rq.head], &at, &a, &b)):
                    return 1
                memcpy(self.asm_ptr + at, self._src(self.rq.head), self.rq.len[self.rq.head])
                self._pop()
            self._maybe_update()
            self._flush()
            if self._progress():
                continue
            if (self.err != E_NONE or self.pe.peer_gone or self.pe.peer_closed or self.closed
                    or rdmamsg_load(&self.intr)):
                return 1
            if not self._wait(deadline, self.w.changes, True):
                return 0
            if self.closed:
                return 1

    cdef int _await_more(self, double deadline) except -1:
        """A receive found no whole message: raise what ends it, else wait."""
        self._check_recv()
        if self._progress():
            return 0
        if not self._block(deadline, True, self.asm.active and self._assembler()):
            raise TimeoutError("no message arrived in time")
        return 0

    cdef void _delivered(self, size_t n) noexcept nogil:
        self.rq.whole -= 1
        self.st[ST_MSGS_IN] += 1
        self.st[ST_BYTES_IN] += n
        self._maybe_update()
        self._flush()

    cdef inline bint _assembler(self) noexcept:
        """Whether this thread may go on with the message being assembled:
        into our own bytes anyone may; into a caller's buffer only that caller."""
        return not self.asm_user or self.asm_owner == PyThread_get_thread_ident()

    cdef int _detach_user(self) except -1:
        # A message half-built in a caller's buffer moves into our own bytes
        # before the call returns, since the caller's buffer is theirs again.
        if self.asm.active and self.asm_user and self._assembler():
            obj = PyBytes_FromStringAndSize(NULL, self.asm.total)
            memcpy(PyBytes_AS_STRING(obj), self.asm_ptr, self.asm.off)
            self.asm_obj, self.asm_ptr, self.asm_user = obj, PyBytes_AS_STRING(obj), False
            self._free_for_others()
        return 0

    cdef inline void _free_for_others(self) noexcept nogil:
        # Fragments other receivers left to a caller's buffer are anyone's
        # now, and no completion will say so: wake them.
        if self.w.gate.inside > 0:
            waiter_kick(&self.w)

    def recv(self, timeout=None):
        """The next whole message, as bytes."""
        cdef double deadline = _deadline(timeout)
        self._lock()
        try:
            self._check_open()
            while True:
                msg = self._take(NULL, 0)
                if msg is not None:
                    return msg
                self._await_more(deadline)
        finally:
            self._unlock()

    def recv_into(self, buffer, timeout=None):
        """The next whole message into ``buffer``; its length.  A message that
        does not fit raises ValueError and stays queued."""
        return self._recv_into_obj(buffer, timeout)

    cdef object _recv_into_obj(self, buffer, timeout):
        cdef Py_buffer view
        _get_buffer(buffer, &view, PyBUF_WRITABLE)
        try:
            return self._recv_into_mem(<char *>view.buf, view.len, _deadline(timeout))
        finally:
            PyBuffer_Release(&view)

    cdef object _recv_into_mem(self, char *buf, size_t cap, double deadline):
        """recv_into() for ``cap`` bytes at ``buf``: the length."""
        self._lock()
        try:
            self._check_open()
            while True:
                got = self._take(buf, cap)
                if got is not None:
                    return got
                self._await_more(deadline)
        finally:
            self._detach_user()
            self._unlock()

    def recv_view(self, timeout=None):
        """The next whole message without a copy, as a MessageView lending the
        receive buffer it arrived in (a message of several fragments is
        assembled, so it is lent from its own bytes)."""
        cdef double deadline = _deadline(timeout)
        cdef int slot
        cdef uint32_t ln
        self._lock()
        try:
            self._check_open()
            while True:
                if (self.held is None and not self.asm.active and self.rq.count > 0
                        and self.rq.kind[self.rq.head] == K_WHOLE):
                    slot = self.rq.slot[self.rq.head]
                    ln = self.rq.len[self.rq.head]
                    if self.ringmode:
                        off = self.rq.val[self.rq.head]
                        data = self.ring_view[off:off + ln]
                    else:
                        data = self.rviews[slot][:ln]
                    rxq_pop(&self.rq)
                    self.lent += 1
                    self._delivered(ln)
                    return MessageView._lend(self, slot, data.toreadonly())
                msg = self._take(NULL, 0)
                if msg is not None:
                    return MessageView._lend(self, -1, memoryview(msg))
                self._await_more(deadline)
        finally:
            self._unlock()

    cdef _give_back(self, int slot):
        self._lock()
        try:
            if self.closed:
                return
            self.lent -= 1
            self._consumed(slot)
            self._maybe_update()
            self._flush()
        finally:
            self._unlock()

    # -- the rest of the contract -------------------------------------------------

    def poll(self):
        """Progress without blocking; leaves the CQ armed.  Whole messages ready
        (or 1 once nothing more can arrive: recv reports why)."""
        self._lock()
        try:
            self._check_open()
            with nogil:
                waiter_drain(&self.w)
                self._check_live()
                while self._progress():
                    pass
                ibv_req_notify_cq(self.cq, 0)
                while self._progress():
                    pass
                end_expired(&self.pe, mono())
            self._prune()
            if self.rq.whole or self.held is not None:
                return self.rq.whole + (self.held is not None)
            # Nothing more can arrive: 1, so that the caller's recv reports it.
            return int(self.err != E_NONE
                       or end_receiving(&self.pe, self.rq.count, False) != END_OPEN)
        finally:
            self._unlock()

    def wait(self, timeout=None):
        """Block until there may be progress; False on time-out."""
        cdef double deadline = _deadline(timeout)
        self._lock()
        try:
            self._check_open()
            if self.rq.whole or self.held is not None:
                return True
            return bool(self._block(deadline))
        finally:
            self._unlock()

    def fileno(self):
        self._check_open()
        return self.w.sel_fd

    def progress_count(self):
        """A counter that moves whenever completions are handled: a layer that
        gave up on a non-blocking call compares it to learn whether to retry."""
        return self.w.changes

    def pending(self):
        """Whole messages ready now, without polling."""
        return self.rq.whole + (self.held is not None)

    def interrupt(self):
        """Make the receive waiting in another thread raise InterruptedError,
        or, if none waits, the next one that would: how a thread that wants
        to receive itself asks the one receiving now to step aside.  Takes
        no lock, so a spinning receiver cannot hold it up."""
        if self.closed or not self.w.mu_ok:
            return
        rdmamsg_store(&self.intr, 1)
        gate_poke(&self.w.gate, self.w.wake_fd)     # a receiver asleep in epoll wakes

    def signal(self, bint on):
        """Hold fileno() readable (``on``) or stop holding it: data waits above
        the engine, where a selector cannot see it."""
        self._lock()
        try:
            self._check_open()
            waiter_signal(&self.w, on)
        finally:
            self._unlock()

    def shutdown(self, timeout=2.0):
        """Send CLOSE after everything queued, then wait (up to ``timeout``)
        for our sends to complete.  Quietly gives up if the peer is gone."""
        cdef double deadline = _deadline(timeout)
        self._lock()
        try:
            if (self.closed or self.close_sent or self.err != E_NONE or self.pe.peer_gone):
                return
            try:
                self._take_send_turn(deadline)
            except (TimeoutError, OSError):
                return
            try:
                if self.close_sent:
                    return
                if self.tail_obj is not None:
                    tail = self.tail_obj
                    self._send_buf(PyBytes_AS_STRING(tail), len(tail), True, deadline, 0)
                while not ((self.ringmode or cw_can_send(&self.cw, True)) and self._sq_room()):
                    if self.err != E_NONE or self.pe.peer_gone or self.pe.live_eof:
                        return
                    if not self._progress() and not self._block(deadline):
                        return
                self._queue(K_CLOSE, NULL, 0, 0, -1, False)
                self.close_sent = True
                self._flush()
                while self.tq.done < self.tq.next:
                    if self.err != E_NONE or self.pe.peer_gone or self.pe.live_eof:
                        return
                    if not self._progress() and not self._block(deadline):
                        return
            except (TimeoutError, OSError):
                return
            finally:
                self._give_send_turn()
        finally:
            self._unlock()

    @property
    def credit_state(self):
        """(credits, unreturned), or on the write channel (free cells in the
        peer's ring, cells we owe a report of): for tests and debugging."""
        if self.ringmode:
            return self.rtx.cells - (self.rtx.tail - self.rtx.head), self.rrx.unreported
        return self.cw.credits, self.cw.unreturned

    def stats(self):
        cdef int i
        out = {STAT_KEYS[i]: self.st[i] for i in range(ST_N)}
        out["poller"] = self.name
        return out

    def close(self):
        """Stop: wake any waiter, ack CQ events, free our state.  Idempotent."""
        if self.closed or not self.w.mu_ok:
            return
        self._lock()
        self.closed = True
        waiter_stop(&self.w)
        try:
            self._free_arrays()
            self.keep = None
            while self.zc_pending:
                self.regcache.release(self.zc_pending.popleft()[1])
        finally:
            self._unlock()


cdef class MessageView:
    """A received message lent without a copy.

    ``data`` is a read-only memoryview onto the receive buffer the message
    arrived in.  ``release()`` (or leaving a ``with`` block, which gives you
    ``data``) hands the buffer back so the peer may send into it again; until
    then it counts against the peer's credits.  Slices of ``data`` must be
    released first.
    """
    cdef Engine eng
    cdef readonly object data
    cdef int slot

    @staticmethod
    cdef MessageView _lend(Engine eng, int slot, object data):
        cdef MessageView v = MessageView.__new__(MessageView)
        v.eng, v.slot, v.data = eng, slot, data
        return v

    def __len__(self):
        return 0 if self.data is None else len(self.data)

    def release(self):
        """Give the buffer back.  Idempotent."""
        if self.data is None:
            return
        d = self.data
        d.release()            # BufferError while slices of it are alive
        self.data = None
        if self.slot >= 0:
            self.eng._give_back(self.slot)

    def __enter__(self):
        return self.data

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        if self.data is not None:
            try:
                self.release()
            except Exception:
                pass

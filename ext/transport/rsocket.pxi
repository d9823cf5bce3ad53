# One rsockets connection's data path, in C: RsCore.
#
# rdmamsg/channel/rsocket.py makes the connection (rdma_cm, the verbs
# objects, the private data) and hands RsCore the QP, CQ and memory; from
# then on every byte goes through here.  The rules are rsocket_rules.pxd's.
#
# Locking and waiting are the Engine's (engine.pxi): a pthread mutex, only
# ever taken with the GIL released or by trylock, guards the state; a wait
# spins (first with the GIL, then without), then one thread (the leader)
# sleeps in epoll on the CQ channel, the rdma_cm channel and a wake eventfd
# while the others wait on the condition.  The rdma_cm channel only says
# "look": the owner's cm_handler (Python, called with the GIL and the mutex
# held) reads the events and returns True once the peer is gone.  Arrived
# data is still read first, then ConnectionResetError, unless the peer said
# goodbye (CTRL DISCONNECT or SHUTDOWN: an orderly end of stream).

from rsocket_rules cimport *
from libc.errno cimport ECONNRESET, EIO, EPIPE
from libc.stdint cimport int64_t
from libc.string cimport memset

from rdmamsg.protocol._rsrules import rule_text

cdef extern from "<poll.h>" nogil:
    cdef struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN

cdef enum:
    RK_DATA = 1                 # wr_id >> 32 of our writes
    RK_SGL = 2
    RK_CTRL = 3
    RS_LOW_WATER = 2048         # no write smaller than this unless the send is
    RS_NO_CTRL = -1

cdef enum:                      # errors recorded without the GIL, raised with it
    RE_NONE
    RE_WC
    RE_POLL
    RE_POST_SEND
    RE_POST_RECV
    RE_RULE                     # err_arg: an RS_E_* code, err_arg2: the value
    RE_NO_IMM
    RE_DATA_LEN                 # err_arg: the value claimed, err_arg2: bytes written
    RE_AFTER_SHUT
    RE_CTRL_VALUE
    RE_OP

cdef enum:                      # counters, in RS_STAT_KEYS order
    RST_BYTES_OUT
    RST_BYTES_IN
    RST_WRITES
    RST_UPDATES
    RST_N

RS_STAT_KEYS = ("bytes_sent", "bytes_received", "writes", "credit_updates")


cdef class RsCore:
    """The data path of one connected rsocket (see the file's head)."""

    name = "cython"
    RECV_WR_ID = RECV_TAG           # the wr_id of receives posted before the core exists
    cdef ibv_qp *qp
    cdef ibv_cq *cq
    cdef waiter_t w                # the lock, the fds, who waits (waiting.pxi)
    cdef int cm_fd                 # the rdma_cm channel's
    cdef object keep, cm_handler
    cdef rs_send_t tx
    cdef rs_recv_t rx
    cdef char *ring
    cdef char *sbuf
    cdef uint64_t sbuf_addr, peer_sgl_addr
    cdef uint32_t sbuf_lkey, peer_sgl_key, send_ring, max_inline, depth
    cdef uint32_t sq_free, sbuf_head, sbuf_free, sbuf_skipped, ctrl_seq
    cdef int sent_ctrl             # CTRL SHUTDOWN/DISCONNECT posted by us, or RS_NO_CTRL
    cdef bint peer_shut            # the peer will send no more
    cdef bint peer_bye             # ... nor read (CTRL DISCONNECT)
    cdef bint peer_gone            # its QP is gone (rdma_cm said so, or a flush)
    cdef bint closed, cm_ready, aborted
    cdef int inherited_from        # in a child after fork(): the parent's pid
    cdef int err, err_arg, err_arg2, wc_status, wc_vendor
    cdef bint wc_recv
    cdef ibv_recv_wr rwr
    cdef ibv_sge rsge
    cdef ibv_wc wcs[WC_BATCH]
    cdef uint64_t st[RST_N]

    def __init__(self, res, peer, int cm_fd, cm_handler, double spin_us=1000):
        """``res``: the connection's channel.rsocket.Resources; ``peer``: the
        peer's ConnData; ``cm_fd``: its rdma_cm channel's fd."""
        dctx = res.dctx
        cdef ibv_context *c = context_ptr(dctx.ctx)
        cdef ibv_pd *p = pd_ptr(dctx.pd, c)
        cdef ibv_comp_channel *ch = channel_ptr(res.cq.channel, c)
        self.cq = cq_ptr(res.cq.cq, c, ch)
        self.qp = qp_ptr(res.qp, p, self.cq)
        if ch.fd != res.cq.fd:
            raise PollerUnavailableError(
                f"the completion channel's fd is {ch.fd}, not {res.cq.fd}")
        self.keep, self.cm_handler = res, cm_handler
        self.cm_fd = cm_fd
        self.depth = res.depth
        self.max_inline = res.max_inline
        self.ring = <char *><uintptr_t>res.ring.addr
        self.sbuf = <char *><uintptr_t>res.sbuf.addr
        self.sbuf_addr, self.sbuf_lkey = res.sbuf.addr, res.sbuf.lkey
        self.send_ring = res.sbuf.size - RS_CTRL_SLOTS * RS_SGE_LEN
        self.peer_sgl_addr, self.peer_sgl_key = peer.target_sgl.addr, peer.target_sgl.key
        d = peer.data_buf
        rs_send_init(&self.tx, <rs_sge *><uintptr_t>res.sgl.addr, peer.credits, d.addr, d.key,
                     d.length)
        if rs_recv_init(&self.rx, res.ring.addr, res.ring.rkey, res.ring.size, self.depth,
                        peer.target_sgl.length, peer.byte_order == ">"):
            raise ValueError(f"cannot keep a ring of {res.ring.size} bytes at depth {self.depth}")
        self.sq_free = self.depth - RS_CTRL_SLOTS
        self.sbuf_free = self.send_ring
        self.sent_ctrl = RS_NO_CTRL
        self.rsge.addr, self.rsge.length, self.rsge.lkey = res.ring.addr, 0, res.ring.lkey
        self.rwr.wr_id = RECV_TAG
        self.rwr.sg_list = &self.rsge
        self.rwr.num_sge = 1
        waiter_open(&self.w, ch, self.cq, res.cq.fd, cm_fd, spin_us / 1e6)

    def __dealloc__(self):
        waiter_free(&self.w, not self.closed)    # never closed: ibv_destroy_cq waits for acks

    cdef inline void _lock(self) noexcept:
        waiter_lock(&self.w)

    cdef inline void _unlock(self) noexcept:
        pthread_mutex_unlock(&self.w.mu)

    # -- posting (mutex held) -----------------------------------------------------

    cdef int _post(self, uint64_t addr, uint32_t length, uint32_t lkey, uint64_t wr_id,
                   uint32_t imm, uint64_t raddr, uint32_t rkey) noexcept nogil:
        """One signalled RDMA WRITE with immediate (inline when short)."""
        cdef ibv_send_wr wr
        cdef ibv_sge sge
        cdef ibv_send_wr *bad
        memset(&wr, 0, sizeof(wr))
        sge.addr, sge.length, sge.lkey = addr, length, lkey
        wr.wr_id = wr_id
        wr.sg_list = &sge
        wr.num_sge = 1 if length else 0
        wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM
        wr.send_flags = IBV_SEND_SIGNALED
        if 0 < length <= self.max_inline:
            wr.send_flags |= IBV_SEND_INLINE
        wr.imm_data = htonl(imm)
        wr.wr.rdma.remote_addr = raddr
        wr.wr.rdma.rkey = rkey
        cdef int rc = ibv_post_send(self.qp, &wr, &bad)
        if rc:
            self._fail(RE_POST_SEND, rc)
            return -1
        return 0

    cdef int64_t _room(self, uint64_t left) noexcept nogil:
        """Bytes the next write may carry now: a send WR, room in the lent slot,
        and (unless the rest goes inline) contiguous space in the send ring
        for at least a useful write (a shorter tail is skipped: the next
        write frees it when it completes).  -RS_E_* if the peer broke a rule."""
        if not self.sq_free:
            return 0
        cdef int64_t room = rs_send_room(&self.tx)
        if room <= 0 or left <= self.max_inline:
            return room
        cdef uint64_t want = left if left < <uint64_t>room else <uint64_t>room
        if want > RS_LOW_WATER:
            want = RS_LOW_WATER
        cdef uint32_t tail = self.send_ring - self.sbuf_head
        if tail < want and self.sbuf_free >= tail:
            self.sbuf_free -= tail
            self.sbuf_skipped += tail
            self.sbuf_head = 0
            tail = self.send_ring
        cdef uint32_t space = self.sbuf_free if self.sbuf_free < tail else tail
        if space < want:
            return 0
        return room if room < space else space

    cdef int _post_data(self, const char *src, uint32_t n) noexcept nogil:
        """Write ``n`` bytes (at most the room) into the peer's slot: straight
        from ``src`` when inline, else through the send ring."""
        cdef uint64_t raddr
        cdef uint32_t rkey, at = self.sbuf_head
        cdef uint32_t frees = self.sbuf_skipped
        cdef uint64_t laddr = <uintptr_t>src
        rs_send_take(&self.tx, n, &raddr, &rkey)
        if n > self.max_inline:
            memcpy(self.sbuf + at, src, n)
            laddr = self.sbuf_addr + at
            frees += n
            self.sbuf_head = (at + n) % self.send_ring
            self.sbuf_free -= n
        self.sbuf_skipped = 0
        self.sq_free -= 1
        self.st[RST_BYTES_OUT] += n
        self.st[RST_WRITES] += 1
        return self._post(laddr, n, self.sbuf_lkey, (<uint64_t>RK_DATA << 32) | frees,
                          rs_imm(RS_OP_DATA, n), raddr, rkey)

    cdef int _post_ctrl(self, uint32_t imm, rs_sge *entry, uint32_t index) noexcept nogil:
        """A control write: credits (with a lent slot's entry) or CTRL."""
        cdef uint64_t kind = RK_SGL if imm >> 29 == RS_OP_SGL else RK_CTRL
        cdef uint32_t at
        self.ctrl_seq += 1
        if entry == NULL:
            return self._post(0, 0, 0, (kind << 32) | imm, imm, 0, 0)
        at = self.send_ring + (self.ctrl_seq % RS_CTRL_SLOTS) * RS_SGE_LEN
        memcpy(self.sbuf + at, entry, RS_SGE_LEN)
        return self._post(self.sbuf_addr + at, RS_SGE_LEN, self.sbuf_lkey, (kind << 32) | imm,
                          imm, self.peer_sgl_addr + index * RS_SGE_LEN, self.peer_sgl_key)

    cdef void _give_credits(self) noexcept nogil:
        cdef uint32_t imm, index = 0
        cdef rs_sge entry
        cdef bint lend
        if (self.sent_ctrl == RS_CTRL_DISCONNECT or self.peer_bye or self.err != RE_NONE
                or self.peer_gone):
            return
        while rs_update_due(&self.rx):
            lend = rs_make_update(&self.rx, &imm, &entry, &index)
            self.st[RST_UPDATES] += 1
            if self._post_ctrl(imm, &entry if lend else NULL, index) < 0 or not lend:
                return

    # -- completions (mutex held) -------------------------------------------------

    cdef void _fail(self, int code, int arg, int arg2=0) noexcept nogil:
        """Record the first error and drop the connection (QP to ERR)."""
        cdef ibv_qp_attr attr
        if self.err == RE_NONE:
            self.err, self.err_arg, self.err_arg2 = code, arg, arg2
        if not self.aborted:
            self.aborted = True
            attr.qp_state = IBV_QPS_ERR
            ibv_modify_qp(self.qp, &attr, IBV_QP_STATE)
        pthread_cond_broadcast(&self.w.cond)

    cdef int _progress(self) noexcept nogil:
        """Handle one batch of completions: how many (an error counts)."""
        cdef int n, i, rc, reposts = 0
        cdef ibv_recv_wr *bad
        if self.err != RE_NONE:
            return 0
        n = ibv_poll_cq(self.cq, WC_BATCH, self.wcs)
        if n < 0:
            self._fail(RE_POLL, -n)
            return 1
        for i in range(n):
            if self.wcs[i].wr_id & RECV_TAG:
                reposts += 1
                if self.err == RE_NONE:
                    self._arrived(&self.wcs[i])
            else:
                self._completed(&self.wcs[i])
        if n:
            if self.err == RE_NONE:
                for i in range(reposts):
                    self.rwr.next = NULL
                    rc = ibv_post_recv(self.qp, &self.rwr, &bad)
                    if rc:
                        self._fail(RE_POST_RECV, rc)
                        break
                self._give_credits()
            waiter_progressed(&self.w)
        return n

    cdef void _arrived(self, ibv_wc *wc) noexcept nogil:
        cdef uint32_t imm, op, value
        cdef int rc = 0
        if wc.status != IBV_WC_SUCCESS:
            if wc.status == IBV_WC_WR_FLUSH_ERR:
                self.peer_gone = True
            else:
                self.wc_status, self.wc_vendor, self.wc_recv = wc.status, wc.vendor_err, True
                self._fail(RE_WC, 0)
            return
        if not wc.wc_flags & IBV_WC_WITH_IMM:
            self._fail(RE_NO_IMM, 0)
            return
        imm = ntohl(wc.imm_data)
        op, value = imm >> 29, imm & 0x1FFFFFFF
        if op == RS_OP_DATA:
            if self.peer_shut:
                self._fail(RE_AFTER_SHUT, 0)
            elif wc.byte_len != value:
                self._fail(RE_DATA_LEN, value, wc.byte_len)
            elif value:
                rc = rs_recv_data(&self.rx, value)
        elif op == RS_OP_SGL:
            rc = rs_send_credits(&self.tx, value)
        elif op == RS_OP_CTRL:
            if value == RS_CTRL_DISCONNECT:
                self.peer_shut = self.peer_bye = True
            elif value == RS_CTRL_SHUTDOWN:
                self.peer_shut = True
            elif value != RS_CTRL_KEEPALIVE:
                self._fail(RE_CTRL_VALUE, value)
        else:
            self._fail(RE_OP, op)
        if rc:
            self._fail(RE_RULE, rc, value)

    cdef void _completed(self, ibv_wc *wc) noexcept nogil:
        if wc.wr_id >> 32 == RK_DATA:
            self.sbuf_free += <uint32_t>wc.wr_id
            self.sq_free += 1
        else:
            self.rx.ctrl_in_flight -= 1
        if wc.status != IBV_WC_SUCCESS:
            if wc.status == IBV_WC_WR_FLUSH_ERR and (self.peer_gone or self.closed):
                return
            self.wc_status, self.wc_vendor, self.wc_recv = wc.status, wc.vendor_err, False
            self._fail(RE_WC, 0)

    # -- waiting ---------------------------------------------------------------------

    cdef int _block(self, double deadline) except -1:
        """Wait for progress (GIL and mutex held on entry and exit); 0 once
        ``deadline`` has passed with nothing happening."""
        cdef int r, i
        cdef double now = mono()
        cdef double end = now + gil_spin(waiter_spin_budget(&self.w, now))
        if deadline >= 0 and end > deadline:
            end = deadline
        while True:
            for i in range(CLOCK_EVERY):
                if self._progress():
                    return 1
            if mono() >= end:
                break
        cdef uint64_t seen = self.w.changes
        self.w.gate.inside += 1
        rdmamsg_add(&gil_waiters, 1)
        with nogil:
            r = self._wait(deadline, seen)
            if r:
                await_gil(waiter_spin_budget(&self.w, mono()))
        rdmamsg_add(&gil_waiters, -1)
        gate_leave(&self.w.gate, &self.w.cond, self.closed)
        if self.closed:
            raise self._closed_error()
        if self.cm_ready:
            self._cm()
            return 1
        return r

    cdef int _wait(self, double deadline, uint64_t seen) noexcept nogil:
        cdef double spin_end = mono()
        spin_end += waiter_spin_budget(&self.w, spin_end)
        if deadline >= 0 and spin_end > deadline:
            spin_end = deadline
        cdef int nev, i
        cdef bint cm_ready
        while True:
            for i in range(CLOCK_EVERY):
                if self._progress():
                    return 1
            if mono() >= spin_end:
                break
            waiter_let_in(&self.w, spin_end)
            # Only here can another thread have run: its progress may be ours.
            if self.w.changes != seen:
                return 1
        if self.w.leader:
            # Another thread sleeps in epoll; it broadcasts when it wakes.
            return waiter_sleep(&self.w, deadline)
        ibv_req_notify_cq(self.cq, 0)
        if self._progress():
            return 1
        nev = waiter_epoll(&self.w, timeout_ms_until(deadline, mono()), &cm_ready)
        if self.closed:
            return 1
        if cm_ready:
            self.cm_ready = True
        if nev > 0 or deadline < 0:
            return 1
        return mono() < deadline

    cdef int _cm(self) except -1:
        """The rdma_cm channel is readable (GIL and mutex held)."""
        self.cm_ready = False
        if not self.cm_handler():
            return 0
        while self._progress():            # what arrived before the goodbye counts
            pass
        self.peer_gone = True
        waiter_kick(&self.w)
        return 0

    cdef bint _cm_readable(self) noexcept nogil:
        cdef pollfd pfd
        pfd.fd, pfd.events, pfd.revents = self.cm_fd, POLLIN, 0
        return poll(&pfd, 1, 0) > 0

    # -- errors ---------------------------------------------------------------------

    cdef object _error(self):
        if self.err == RE_WC:
            return WorkCompletionError(self.wc_status,
                                       "receive" if self.wc_recv else "RDMA write",
                                       self.wc_vendor)
        if self.err == RE_POLL:
            return ConnectionResetError(self.err_arg or EIO, "ibv_poll_cq failed")
        if self.err == RE_POST_SEND:
            return ConnectionResetError(self.err_arg or EIO,
                                        "ibv_post_send failed: the connection is down")
        if self.err == RE_POST_RECV:
            return ConnectionResetError(self.err_arg or EIO, "ibv_post_recv failed")
        if self.err == RE_RULE:
            return ProtocolError(f"{rule_text(self.err_arg)} (value {self.err_arg2})")
        if self.err == RE_NO_IMM:
            return ProtocolError("the rsocket peer sent a message without an immediate "
                                 "(iWARP's message mode is not supported)")
        if self.err == RE_DATA_LEN:
            return ProtocolError(f"a DATA write of {self.err_arg2} bytes claims {self.err_arg}")
        if self.err == RE_AFTER_SHUT:
            return ProtocolError("the rsocket peer wrote data after ending its stream")
        if self.err == RE_CTRL_VALUE:
            return ProtocolError(f"unknown rsocket control value {self.err_arg}")
        return ProtocolError(f"rsocket operation {self.err_arg} is not supported "
                             "(we lend no iomap)")

    cdef int _check_open(self) except -1:
        if self.closed:
            raise self._closed_error()
        return 0

    cdef int _check_send(self) except -1:
        self._check_open()
        if self.err != RE_NONE:
            raise self._error()
        if self.sent_ctrl != RS_NO_CTRL:
            raise BrokenPipeError(EPIPE, "the stream was shut down for writing")
        if self.peer_gone:
            raise ConnectionResetError(ECONNRESET, "the rsocket peer disconnected")
        if self.peer_bye:
            raise BrokenPipeError(EPIPE, "the rsocket peer closed the connection")
        return 0

    # -- sending (GIL and mutex held) -----------------------------------------------

    cdef Py_ssize_t _send_mem(self, const char *p, size_t total, double deadline) except -1:
        cdef size_t sent = 0
        cdef uint32_t step = RS_FIRST_TRANSFER, n
        cdef int64_t room
        self._check_send()
        if total == 0:
            self._shut_write(deadline)
            return 0
        while sent < total:
            room = self._room(total - sent)
            if room < 0:
                self._fail(RE_RULE, <int>-room, 0)
                raise self._error()
            if room == 0:
                if not self._block(deadline):
                    if sent:
                        return sent
                    raise TimeoutError("the peer lent no room in time")
                self._check_send()
                continue
            n = rs_write_size(total - sent, <uint32_t>room, &step)
            if self._post_data(p + sent, n) < 0:
                raise self._error()
            sent += n
        return sent

    cdef int _shut_write(self, double deadline) except -1:
        cdef int ctrl = RS_CTRL_DISCONNECT if self.peer_shut else RS_CTRL_SHUTDOWN
        while self.rx.ctrl_in_flight >= RS_CTRL_SLOTS:
            if not self._block(deadline):
                raise TimeoutError("could not send the end of stream in time")
            self._check_send()
        self.rx.ctrl_in_flight += 1
        self.sent_ctrl = ctrl
        if self._post_ctrl(rs_imm(RS_OP_CTRL, ctrl), NULL, 0) < 0:
            raise self._error()
        return 0

    cdef Py_ssize_t _send_ptr(self, const char *p, size_t n, double deadline) except -1:
        """Send the ``n`` bytes at ``p`` (the caller holds their buffer)."""
        self._lock()
        try:
            return self._send_mem(p, n, deadline)
        finally:
            self._unlock()

    cdef Py_ssize_t _send_obj(self, data, double deadline) except -1:
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self._send_ptr(<const char *>view.buf, view.len, deadline)
        finally:
            PyBuffer_Release(&view)

    def send(self, data, timeout=None):
        """Send ``data``; the number of bytes sent.  Blocks while the peer lends
        no room, up to ``timeout`` (0: what can go now).  An empty ``data``
        ends our direction of the stream (CTRL SHUTDOWN).  TimeoutError if
        nothing could go in time."""
        return self._send_obj(data, _deadline(timeout))

    # -- receiving (GIL and mutex held) ---------------------------------------------

    cdef int _await_data(self, double deadline) except -1:
        """1 once bytes wait, 0 at the end of the stream."""
        self._check_open()
        while not self.rx.mcount:
            self._progress()
            if self.rx.mcount:
                break
            if self.peer_shut:
                return 0
            if self.err != RE_NONE:
                raise self._error()
            if self.peer_gone:
                raise ConnectionResetError(ECONNRESET, "the rsocket peer disconnected without "
                                           "ending the stream")
            if not self._block(deadline):
                raise TimeoutError("no data in time")
        return 1

    cdef Py_ssize_t _recv_ptr(self, char *p, size_t cap, double deadline,
                              bint waitall) except -1:
        """Up to ``cap`` bytes into ``p`` as soon as some are there; 0 at the
        end.  ``waitall`` (MSG_WAITALL): all of them, fewer only at the end
        of the stream, or if an error or the deadline comes after some
        arrived (the error stays for the next call, as the kernel's sockets
        do)."""
        cdef size_t got = 0
        cdef uint32_t off, n
        self._lock()
        try:
            while got < cap:
                try:
                    if not self._await_data(deadline):
                        break
                except OSError:
                    if got:
                        break
                    raise
                with nogil:
                    while got < cap and rs_recv_peek(&self.rx, &off, &n):
                        if n > cap - got:
                            n = <uint32_t>(cap - got)
                        memcpy(p + got, self.ring + off, n)
                        got += n
                        self.st[RST_BYTES_IN] += n
                        rs_recv_consume(&self.rx, n)
                    self._give_credits()
                if not waitall:
                    break
            return got
        finally:
            self._unlock()

    cdef Py_ssize_t _recv_obj(self, buffer, double deadline) except -1:
        cdef Py_buffer view
        PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
        try:
            return self._recv_ptr(<char *>view.buf, view.len, deadline, False)
        finally:
            PyBuffer_Release(&view)

    def recv_into(self, buffer, timeout=None):
        return self._recv_obj(buffer, _deadline(timeout))

    def span(self, timeout=None):
        """(ring offset, length) of the oldest unread bytes; None at the end."""
        cdef double deadline = _deadline(timeout)
        cdef uint32_t off, n
        self._lock()
        try:
            if not self._await_data(deadline):
                return None
            rs_recv_peek(&self.rx, &off, &n)
            return off, n
        finally:
            self._unlock()

    def consumed(self, uint32_t n):
        """The reader took ``n`` bytes of the span."""
        self._lock()
        try:
            if self.closed:
                return
            if rs_recv_consume(&self.rx, n):
                raise ValueError(f"cannot consume {n} bytes of the oldest message")
            self.st[RST_BYTES_IN] += n
            self._give_credits()
        finally:
            self._unlock()

    # -- the Endpoint contract's other calls --------------------------------------------

    def poll(self):
        """Progress without blocking; leaves the CQ armed.  Messages ready (1
        once nothing more can arrive, so that a receive reports why)."""
        self._lock()
        try:
            self._check_open()
            with nogil:
                waiter_drain(&self.w)
                self.cm_ready = self._cm_readable()
            if self.cm_ready:
                self._cm()
            with nogil:
                while self._progress():
                    pass
                ibv_req_notify_cq(self.cq, 0)
                while self._progress():
                    pass
            if self.rx.mcount:
                return self.rx.mcount
            return int(self.peer_shut or self.peer_gone or self.err != RE_NONE)
        finally:
            self._unlock()

    def pending(self):
        return self.rx.mcount

    def wait(self, timeout=None):
        """Block until there may be progress; False on time-out."""
        cdef double deadline = _deadline(timeout)
        self._lock()
        try:
            self._check_open()
            return bool(self.rx.mcount or self._block(deadline))
        finally:
            self._unlock()

    def signal(self, bint on):
        """Hold fileno() readable (``on``) or stop holding it."""
        self._lock()
        try:
            self._check_open()
            waiter_signal(&self.w, on)
        finally:
            self._unlock()

    def progress_count(self):
        return self.w.changes

    def fileno(self):
        self._check_open()
        return self.w.sel_fd

    def interrupt(self):
        if not self.closed and self.w.mu_ok:
            gate_poke(&self.w.gate, self.w.wake_fd)

    def stats(self):
        return {k: self.st[i] for i, k in enumerate(RS_STAT_KEYS)}

    @property
    def closed(self):
        return self.closed

    def _disown(self):
        """In a child after fork(): every use raises InheritedError, and
        nothing is posted, polled or freed (the QP is the parent's); the
        mutex and condition are new."""
        if not self.w.mu_ok:
            return
        waiter_disown(&self.w)
        self.closed = True
        self.inherited_from = getppid()

    cdef object _closed_error(self):
        if self.inherited_from:
            return inherited_error("rsocket", self.inherited_from)
        return closed_error("rsocket")

    def close(self, linger=None):
        """Say goodbye (CTRL DISCONNECT), wait up to ``linger`` seconds (2 by
        default) for what we sent to be taken, then stop: wake any waiter,
        ack the CQ events, close our fds.  Idempotent."""
        cdef double deadline = mono() + (2.0 if linger is None else linger)
        if self.closed or not self.w.mu_ok:
            return
        self._lock()
        try:
            try:
                self._goodbye(deadline)
            except OSError:
                pass
            self.closed = True
            waiter_stop(&self.w)
            self.keep = self.cm_handler = None
        finally:
            self._unlock()

    cdef int _goodbye(self, double deadline) except -1:
        if self.err != RE_NONE or self.peer_gone:
            return 0
        if not self.peer_bye and self.sent_ctrl != RS_CTRL_DISCONNECT:
            while self.rx.ctrl_in_flight >= RS_CTRL_SLOTS and self._block(deadline):
                pass
            if self.rx.ctrl_in_flight < RS_CTRL_SLOTS:
                self.rx.ctrl_in_flight += 1
                self.sent_ctrl = RS_CTRL_DISCONNECT
                self._post_ctrl(rs_imm(RS_OP_CTRL, RS_CTRL_DISCONNECT), NULL, 0)
        while (self.err == RE_NONE and not self.peer_gone and self._outstanding()
               and self._block(deadline)):
            pass
        return 0

    cdef bint _outstanding(self) noexcept nogil:
        return self.sq_free < self.depth - RS_CTRL_SLOTS or self.rx.ctrl_in_flight > 0

# rdmamsg's wire rules in C, with no I/O and no verbs: the one copy.  The
# Cython engine (ext/transport/engine.pxi) cimports them; rdmamsg/protocol/_core wraps
# them for the pure-pyverbs engine, the unit tests and the fuzzers.  The
# models are in the docstrings of rdmamsg/protocol/frames.py, credits.py and
# ring.py, and channel/remote.py's (grant descriptors).
#
# Functions return CORE_OK or a CORE_E_* code (what the peer broke; _core's
# describe() words it); nothing here raises, allocates after set-up, or
# needs the GIL.

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

cdef enum:                      # fragment kinds: the immediate's low 4 bits
    K_WHOLE = 0
    K_FIRST = 1                 # its immediate carries the message length, not credits
    K_MIDDLE = 2
    K_LAST = 3
    K_CREDIT = 4
    K_CLOSE = 5
    K_FIRST_LONG = 6            # its data starts with the length (8 bytes, little endian)
    KIND_BITS = 4
    KIND_MASK = 15
    FIRST_HDR = 8
    MAX_IMM_VALUE = (1 << 28) - 1   # the immediate's value field: credits or FIRST's length
    MIN_DEPTH = 3               # receives a peer must post (credits.py says why)
    RING_FIELD_BITS = 14        # a ring write's offset and cells, each
    RING_FIELD_MASK = (1 << 14) - 1
    RING_RESERVED = 4           # receives beyond the ring's cells (ring.py says why)
    RING_MIN_CELLS = 4          # a ring's cells: a power of two in MIN..MAX
    RING_MAX_CELLS = 8192       # (receives must cover them; rxe allows 16384 per QP)
    RING_MIN_CELL = 64          # bytes per cell, at least
    WC_FLUSH = 5                # IBV_WC_WR_FLUSH_ERR
    WC_NONE = -1                # wc_error_wins: no error is held
    WC_OTHER = -2               # wc_error_wins: an error that is not a completion's

cdef enum:                      # what broke a rule
    CORE_OK = 0
    CORE_E_KIND = 1             # an unknown fragment kind (a: the kind)
    CORE_E_CREDITS = 2          # more credits returned than could be owed (a: returned)
    CORE_E_CONTROL = 3          # a CREDIT or CLOSE with a payload, or a data kind as a
                                # control (a: the kind, b: bytes)
    CORE_E_RING_CELLS = 4       # a ring write's cells disagree with its bytes, or too
                                # many (a: cells, b: bytes)
    CORE_E_RING_OFFSET = 5      # a ring write not where the rule puts it (a: offset, b: want)
    CORE_E_RING_OVERRUN = 6     # a ring write onto cells not yet released
    CORE_E_RING_FREED = 7       # a report of more cells freed than in use (a: cells)
    CORE_E_NO_LENGTH = 8        # FIRST_LONG too short for its length (a: bytes)
    CORE_E_CANNOT_START = 9     # MIDDLE or LAST with no message begun (a: the kind)
    CORE_E_TOO_LONG = 10        # a message above the limit (a: announced, b: limit)
    CORE_E_CLAIM = 11           # a first fragment announces no more than it carries
                                # (a: announced, b: carried)
    CORE_E_INSIDE = 12          # a start inside an unfinished message (a: the kind)
    CORE_E_OVERRUN = 13         # fragments past the announced length (a: announced)
    CORE_E_SHORT = 14           # LAST before the announced length (a: at, b: announced)
    CORE_E_FRAGMENT = 15        # a fragment longer than a buffer (a: bytes, b: buffer)
    CORE_E_GRANT = 16           # not a grant descriptor (a: bytes)
    CORE_E_GRANT_ACCESS = 17    # a grant descriptor with an unknown access (a: it)


cdef inline uint32_t imm_pack(int kind, uint32_t value) noexcept nogil:
    return (value << KIND_BITS) | <uint32_t>kind


cdef inline int imm_unpack(uint32_t imm, int *kind, uint32_t *value) noexcept nogil:
    """A send's immediate: its kind and value (credits, or FIRST's length)."""
    kind[0], value[0] = <int>(imm & KIND_MASK), imm >> KIND_BITS
    return CORE_E_KIND if kind[0] > K_FIRST_LONG else CORE_OK


cdef inline int control_check(int kind, uint64_t ln) noexcept nogil:
    """A plain send on the write channel, or a CREDIT or CLOSE on either:
    only an empty CREDIT or CLOSE may be one."""
    return CORE_OK if (kind == K_CREDIT or kind == K_CLOSE) and ln == 0 else CORE_E_CONTROL


cdef inline uint64_t get_u64le(const char *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v |= (<uint64_t>(<uint8_t>p[i])) << (8 * i)
    return v


cdef inline void put_u64le(char *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <char>((v >> (8 * i)) & 0xFF)


cdef inline bint wc_error_wins(int held, int status) noexcept nogil:
    """Whether a failed completion's ``status`` is the error to report, given
    the one ``held`` (WC_NONE, WC_OTHER or a status).  A flush only says the
    QP went to error: the completion that says why wins over it."""
    return held == WC_NONE or (held == WC_FLUSH and status != WC_FLUSH)


# -- fragments: planning and reassembly ------------------------------------------

cdef inline int frag_next(uint64_t n, uint64_t off, bint start, uint64_t frag,
                          uint64_t first_limit, bint long_first, uint64_t *dlen) noexcept nogil:
    """The kind of the fragment of an ``n``-byte message that starts at data
    offset ``off`` (``start``: the message's first), and its data bytes.  Fragments
    carry ``frag`` bytes; a FIRST_LONG carries its 8-byte header and
    min(frag, first_limit) - 8.  ``long_first``: every multi-fragment message
    starts with FIRST_LONG (the write channel's immediates carry no length)."""
    if start:
        if n <= frag:
            dlen[0] = n
            return K_WHOLE
        if n <= MAX_IMM_VALUE and not long_first:
            dlen[0] = frag
            return K_FIRST
        dlen[0] = (frag if frag < first_limit else first_limit) - FIRST_HDR
        return K_FIRST_LONG
    if n - off > frag:
        dlen[0] = frag
        return K_MIDDLE
    dlen[0] = n - off
    return K_LAST


cdef struct reasm_t:            # the message being rebuilt from fragments
    uint64_t total, off         # its announced length, and the bytes in so far
    uint64_t max_message        # the longest we accept
    uint64_t fragment           # the longest fragment (a receive buffer)
    bint active                 # a message is begun and not finished


cdef inline void reasm_init(reasm_t *r, uint64_t max_message, uint64_t fragment) noexcept nogil:
    r.total = r.off = 0
    r.max_message, r.fragment = max_message, fragment
    r.active = False


cdef inline int reasm_length(reasm_t *r, int kind, uint64_t ln, uint32_t value,
                             const char *data, uint64_t *total, uint64_t *a,
                             uint64_t *b) noexcept nogil:
    """The length of the message a WHOLE, FIRST or FIRST_LONG fragment of
    ``ln`` bytes at ``data`` starts (``value``: its immediate's), checked."""
    cdef uint64_t t, carried = ln
    if ln > r.fragment:
        a[0], b[0] = ln, r.fragment
        return CORE_E_FRAGMENT
    if kind == K_WHOLE:
        total[0] = ln
        return CORE_OK
    if kind == K_FIRST:
        t = value
    elif kind == K_FIRST_LONG:
        if ln < FIRST_HDR:
            a[0] = ln
            return CORE_E_NO_LENGTH
        t = get_u64le(data)
        carried = ln - FIRST_HDR
    else:
        a[0] = <uint64_t>kind
        return CORE_E_CANNOT_START
    if t > r.max_message:
        a[0], b[0] = t, r.max_message
        return CORE_E_TOO_LONG
    if t <= carried:
        a[0], b[0] = t, carried
        return CORE_E_CLAIM
    total[0] = t
    return CORE_OK


cdef inline void reasm_begin(reasm_t *r, int kind, uint64_t total, uint64_t ln) noexcept nogil:
    """A FIRST or FIRST_LONG (checked by reasm_length) begins the message."""
    r.total = total
    r.off = ln - (FIRST_HDR if kind == K_FIRST_LONG else 0)
    r.active = True


cdef inline int reasm_next(reasm_t *r, int kind, uint64_t ln, uint64_t *at, uint64_t *a,
                           uint64_t *b) noexcept nogil:
    """A MIDDLE or LAST of ``ln`` bytes for the message begun: where its data
    goes (``at``), checked before the caller copies it; a broken rule
    changes nothing.  The message is whole once ``r.active`` is false again."""
    if kind != K_MIDDLE and kind != K_LAST:
        a[0] = <uint64_t>kind
        return CORE_E_INSIDE
    if ln > r.fragment:
        a[0], b[0] = ln, r.fragment
        return CORE_E_FRAGMENT
    if r.off + ln > r.total:
        a[0] = r.total
        return CORE_E_OVERRUN
    if kind == K_LAST and r.off + ln != r.total:
        a[0], b[0] = r.off + ln, r.total
        return CORE_E_SHORT
    at[0] = r.off
    r.off += ln
    r.active = kind != K_LAST
    return CORE_OK


# -- credits (send channel) ------------------------------------------------------

cdef struct credit_t:
    int credits                 # sends we may post: the peer's posted receives
    int unreturned              # receives we reposted and have not reported
    int threshold               # send a CREDIT fragment once this many are owed
    int limit                   # the peer's receive depth


cdef inline int cw_default_threshold(int depth) noexcept nogil:
    return depth // 2 if depth // 2 > 2 else 2


cdef inline void cw_init(credit_t *c, int depth, int threshold) noexcept nogil:
    c.limit = c.credits = depth
    c.unreturned = 0
    c.threshold = threshold


cdef inline bint cw_can_send(credit_t *c, bint returning) noexcept nogil:
    # The last credit only goes on a fragment that hands credits back.
    return c.credits >= 2 or (c.credits == 1 and returning and c.unreturned > 0)


cdef inline bint cw_update_due(credit_t *c) noexcept nogil:
    return c.unreturned >= c.threshold and c.credits >= 1


cdef inline int cw_spend(credit_t *c, bint returning) noexcept nogil:
    """Spend a credit (the caller checked cw_can_send); the credits it returns."""
    cdef int owed = c.unreturned if returning else 0
    c.credits -= 1
    if returning:
        c.unreturned = 0
    return owed


cdef inline int cw_returned(credit_t *c, int64_t n) noexcept nogil:
    if n < 0 or c.credits + n > c.limit:
        return CORE_E_CREDITS
    c.credits += <int>n
    return CORE_OK


# -- the ring (write channel) ----------------------------------------------------

cdef struct ring_tx_t:          # the peer's ring, as its sender sees it
    uint64_t tail, head         # cells placed / freed since the start
    uint32_t cells, cell, max_cells
    uint64_t addr               # where it is in the peer, and its rkey
    uint32_t rkey


cdef struct ring_rx_t:          # our ring
    uint64_t tail, head, unreported
    uint32_t cells, cell, max_cells, threshold
    uint64_t *end               # entry (its first cell) -> its end
    uint8_t *released


cdef inline uint32_t ring_imm(int kind, uint32_t offset, uint32_t ncells) noexcept nogil:
    return (ncells << (KIND_BITS + RING_FIELD_BITS)) | (offset << KIND_BITS) | <uint32_t>kind


cdef inline int ring_unpack(uint32_t imm, int *kind, uint32_t *offset,
                            uint32_t *ncells) noexcept nogil:
    """A ring write's immediate; only data kinds are ring writes."""
    kind[0] = <int>(imm & KIND_MASK)
    offset[0] = (imm >> KIND_BITS) & RING_FIELD_MASK
    ncells[0] = imm >> (KIND_BITS + RING_FIELD_BITS)
    if kind[0] == K_WHOLE or kind[0] == K_FIRST_LONG or kind[0] == K_MIDDLE or kind[0] == K_LAST:
        return CORE_OK
    return CORE_E_KIND


cdef inline uint32_t ring_cells_for(uint32_t cell, uint64_t nbytes) noexcept nogil:
    cdef uint64_t n = (nbytes + cell - 1) // cell
    return <uint32_t>(n if n > 0 else 1)


cdef inline uint32_t ring_where(uint64_t tail, uint32_t cells, uint32_t ncells,
                                uint32_t *skip) noexcept nogil:
    """Where a write of ``ncells`` at ``tail`` goes: at the tail, or at 0
    when it does not fit before the ring's end (``skip``: the cells passed)."""
    cdef uint32_t pos = <uint32_t>(tail % cells)
    if pos + ncells <= cells:
        skip[0] = 0
        return pos
    skip[0] = cells - pos
    return 0


cdef inline void rtx_init(ring_tx_t *t, uint32_t cells, uint32_t cell) noexcept nogil:
    t.tail = t.head = 0
    t.cells, t.cell, t.max_cells = cells, cell, cells // 4


cdef inline bint rtx_place(ring_tx_t *t, uint64_t nbytes, uint32_t *offset,
                           uint32_t *ncells) noexcept nogil:
    """Spend the space of a fragment (at most max_cells cells); False: no room."""
    cdef uint32_t skip
    cdef uint32_t n = ring_cells_for(t.cell, nbytes)
    cdef uint32_t at = ring_where(t.tail, t.cells, n, &skip)
    if t.tail + skip + n - t.head > t.cells:
        return False
    t.tail += skip + n
    offset[0], ncells[0] = at, n
    return True


cdef inline int rtx_freed(ring_tx_t *t, uint64_t n) noexcept nogil:
    if n < 1 or t.head + n > t.tail:
        return CORE_E_RING_FREED
    t.head += n
    return CORE_OK


cdef inline int rrx_init(ring_rx_t *r, uint32_t cells, uint32_t cell) noexcept nogil:
    """-1 if its arrays cannot be had; rrx_free frees them."""
    r.tail = r.head = r.unreported = 0
    r.cells, r.cell, r.max_cells, r.threshold = cells, cell, cells // 4, cells // 2
    r.end = <uint64_t *>calloc(cells, sizeof(uint64_t))
    r.released = <uint8_t *>calloc(cells, sizeof(uint8_t))
    if r.end == NULL or r.released == NULL:
        rrx_free(r)
        return -1
    return 0


cdef inline void rrx_free(ring_rx_t *r) noexcept nogil:
    free(r.end)
    free(r.released)
    r.end = NULL
    r.released = NULL


cdef inline int rrx_accept(ring_rx_t *r, uint32_t offset, uint32_t ncells, uint64_t nbytes,
                           uint32_t *entry, uint64_t *a, uint64_t *b) noexcept nogil:
    """Check a write the peer made; ``entry`` names it until rrx_release."""
    cdef uint32_t skip, want
    if ncells > r.max_cells or ring_cells_for(r.cell, nbytes) != ncells:
        a[0], b[0] = ncells, nbytes
        return CORE_E_RING_CELLS
    want = ring_where(r.tail, r.cells, ncells, &skip)
    if offset != want:
        a[0], b[0] = offset, want
        return CORE_E_RING_OFFSET
    cdef uint64_t end = r.tail + skip + ncells
    if end - r.head > r.cells:
        return CORE_E_RING_OVERRUN
    entry[0] = <uint32_t>(r.tail % r.cells)
    r.end[entry[0]] = end
    r.released[entry[0]] = 0
    r.tail = end
    return CORE_OK


cdef inline void rrx_release(ring_rx_t *r, uint32_t entry) noexcept nogil:
    """The application is done with ``entry``; the head passes every
    released entry it reaches, and their cells are owed a report."""
    cdef uint32_t at
    r.released[entry] = 1
    while r.head < r.tail and r.released[r.head % r.cells]:
        at = <uint32_t>(r.head % r.cells)
        r.released[at] = 0
        r.unreported += r.end[at] - r.head
        r.head = r.end[at]


# -- the send queue: sequence numbers, send buffers, signalling -----------------
# Each post's wr_id is the next sequence number.  An RC queue completes in
# order, so a send completion frees every send buffer up to its number.
# One post in ``signal_every`` (and every CLOSE) is signaled, so that
# buffers come back often enough without a completion per post.

cdef struct txq_t:
    uint64_t next, done         # sequence numbers posted, and completed
    int depth                   # the send queue's
    int *slot_of                # [depth]: the send buffer each post holds (-1: none)
    int *free                   # send buffers not in use (a stack)
    int nfree, nbufs, unsignaled, signal_every


cdef inline int txq_init(txq_t *t, int depth, int nbufs) noexcept nogil:
    """-1 if its arrays cannot be had; txq_free frees them."""
    cdef int i
    t.next = t.done = 0
    t.depth, t.nfree, t.nbufs, t.unsignaled = depth, nbufs, nbufs, 0
    t.signal_every = (nbufs if nbufs < depth else depth) // 4
    if t.signal_every < 1:
        t.signal_every = 1
    t.slot_of = <int *>calloc(depth, sizeof(int))
    t.free = <int *>calloc(nbufs if nbufs > 0 else 1, sizeof(int))
    if t.slot_of == NULL or t.free == NULL:
        txq_free(t)
        return -1
    for i in range(nbufs):
        t.free[i] = i
    return 0


cdef inline void txq_free(txq_t *t) noexcept nogil:
    free(t.slot_of)
    free(t.free)
    t.slot_of = t.free = NULL
    t.nfree = 0


cdef inline bint txq_room(const txq_t *t) noexcept nogil:
    return t.next - t.done < <uint64_t>t.depth


cdef inline int txq_take(txq_t *t) noexcept nogil:
    """A free send buffer (the caller checked ``nfree``)."""
    t.nfree -= 1
    return t.free[t.nfree]


cdef inline bint txq_post(txq_t *t, int slot, int kind, bint signal) noexcept nogil:
    """Record post number ``next`` (holding ``slot``, or -1); whether it is
    to be signaled."""
    cdef bint signaled = signal or kind == K_CLOSE or t.unsignaled + 1 >= t.signal_every
    t.unsignaled = 0 if signaled else t.unsignaled + 1
    t.slot_of[t.next % <uint64_t>t.depth] = slot
    t.next += 1
    return signaled


cdef inline void txq_unpost(txq_t *t, int n) noexcept nogil:
    """The last ``n`` posts recorded never reached the device (posting
    failed): forget them, and their send buffers are free again."""
    cdef int slot
    while n > 0 and t.next > t.done:
        t.next -= 1
        n -= 1
        slot = t.slot_of[t.next % <uint64_t>t.depth]
        if slot >= 0 and t.nfree < t.nbufs:
            t.free[t.nfree] = slot
            t.nfree += 1


cdef inline void txq_done(txq_t *t, uint64_t seq) noexcept nogil:
    """Post ``seq`` completed: so did every one before it."""
    cdef int slot
    if seq < t.done or seq >= t.next:
        return
    while t.done <= seq:
        slot = t.slot_of[t.done % <uint64_t>t.depth]
        if slot >= 0 and t.nfree < t.nbufs:
            t.free[t.nfree] = slot
            t.nfree += 1
        t.done += 1


cdef inline uint32_t tx_imm(credit_t *cw, int kind, uint32_t value) noexcept nogil:
    """A send's immediate.  On the send channel (``cw``) it spends a
    credit, and all but FIRST (whose ``value`` is the message's length)
    carry back the credits we owe; on the write channel a control's
    ``value`` is the ring cells it reports."""
    if cw != NULL:
        if kind == K_FIRST:
            cw_spend(cw, False)
        else:
            value = <uint32_t>cw_spend(cw, True)
    return imm_pack(kind, value)


# -- arrivals: what a receive completion means, and the fragments waiting -----
# On the send channel (``cw``) a fragment arrives in a receive buffer
# (``slot``), which stays out until the fragment is taken.  On the write
# channel (``cw`` NULL; ``rtx``, ``rrx``) a fragment arrives in our ring,
# announced by a receive whose buffer may be posted again at once.  The
# queue holds at most one entry per receive buffer or per ring cell, so a
# queue as deep as the receive queue never fills.

cdef enum:                      # rx_arrived's ``what``
    ARR_QUEUED = 1              # a data fragment joined the queue
    ARR_REPOST = 2              # the receive buffer is free: post it again
    ARR_CLOSE = 4               # the peer sent CLOSE


cdef struct rxq_t:              # fragments received, not yet taken, in order
    int cap, head, count
    int whole                   # messages whose last fragment is in (WHOLE, LAST)
    uint32_t *slot              # the receive buffer, or the ring entry
    uint32_t *len
    uint8_t *kind
    uint32_t *val               # FIRST: the message length; ring: the data's offset


cdef inline int rxq_init(rxq_t *q, int cap) noexcept nogil:
    """-1 if its arrays cannot be had; rxq_free frees them."""
    q.cap, q.head, q.count, q.whole = cap, 0, 0, 0
    q.slot = <uint32_t *>calloc(cap, sizeof(uint32_t))
    q.len = <uint32_t *>calloc(cap, sizeof(uint32_t))
    q.kind = <uint8_t *>calloc(cap, sizeof(uint8_t))
    q.val = <uint32_t *>calloc(cap, sizeof(uint32_t))
    if q.slot == NULL or q.len == NULL or q.kind == NULL or q.val == NULL:
        rxq_free(q)
        return -1
    return 0


cdef inline void rxq_free(rxq_t *q) noexcept nogil:
    free(q.slot)
    free(q.len)
    free(q.kind)
    free(q.val)
    q.slot = q.len = q.val = NULL
    q.kind = NULL
    q.count = 0


cdef inline void rxq_push(rxq_t *q, uint32_t slot, uint32_t ln, int kind,
                          uint32_t val) noexcept nogil:
    cdef int at = (q.head + q.count) % q.cap
    q.slot[at], q.len[at], q.kind[at], q.val[at] = slot, ln, <uint8_t>kind, val
    q.count += 1
    if kind == K_WHOLE or kind == K_LAST:
        q.whole += 1


cdef inline void rxq_pop(rxq_t *q) noexcept nogil:
    """Drop the head (its message's ``whole`` goes when it is delivered)."""
    q.head = (q.head + 1) % q.cap
    q.count -= 1


cdef inline int rx_arrived(rxq_t *q, credit_t *cw, ring_tx_t *rtx, ring_rx_t *rrx,
                           uint32_t slot, bint written, uint64_t nbytes, uint32_t imm,
                           int *what, uint64_t *a, uint64_t *b) noexcept nogil:
    """A receive into ``slot`` completed with ``nbytes`` and immediate
    ``imm`` (host order); ``written``: it announces a write into our ring.
    Sets ``what`` (ARR_*).  A fragment that breaks a rule is not queued."""
    cdef int kind, rc
    cdef uint32_t value = 0, offset, ncells, entry
    what[0] = 0
    if cw == NULL and written:
        rc = ring_unpack(imm, &kind, &offset, &ncells)
        if rc == CORE_OK:
            rc = rrx_accept(rrx, offset, ncells, nbytes, &entry, a, b)
        elif rc == CORE_E_KIND:
            a[0] = kind
        if rc != CORE_OK:
            return rc
        rxq_push(q, entry, <uint32_t>nbytes, kind, offset * rrx.cell)
        what[0] = ARR_QUEUED | ARR_REPOST
        return CORE_OK
    if cw == NULL:
        kind, value = imm & KIND_MASK, imm >> KIND_BITS
        rc = control_check(kind, nbytes)
        if rc == CORE_OK and kind == K_CREDIT:
            rc = rtx_freed(rtx, value)
    else:
        rc = imm_unpack(imm, &kind, &value)
        if rc == CORE_OK and (kind == K_CREDIT or kind == K_CLOSE):
            rc = control_check(kind, nbytes)
        if rc == CORE_OK and kind != K_FIRST:
            rc = cw_returned(cw, value)
    if rc != CORE_OK:
        a[0], b[0] = (value if rc == CORE_E_CREDITS or rc == CORE_E_RING_FREED else kind), nbytes
        return rc
    if kind == K_CREDIT or kind == K_CLOSE:
        what[0] = ARR_REPOST | (ARR_CLOSE if kind == K_CLOSE else 0)
        return CORE_OK
    rxq_push(q, slot, <uint32_t>nbytes, kind, value)
    what[0] = ARR_QUEUED
    return CORE_OK


cdef inline bint rx_update_due(credit_t *cw, ring_rx_t *rrx, uint32_t *value) noexcept nogil:
    """Whether a CREDIT should go now.  On the write channel ``value`` is
    the ring cells it reports, which are then owed no more; on the send
    channel the credits are counted when it is sent (cw_spend)."""
    value[0] = 0
    if cw != NULL:
        return cw_update_due(cw)
    if rrx.unreported < rrx.threshold:
        return False
    value[0] = <uint32_t>rrx.unreported
    rrx.unreported = 0
    return True


# -- the end of a connection ------------------------------------------------------
# The bootstrap TCP connection carries nothing after the handshake.  Its EOF
# means the peer is gone, unless the peer's CLOSE came first (the orderly
# end) or comes within EOF_GRACE_MS (it may still be in flight).

cdef enum:
    EOF_GRACE_MS = 200
    END_OPEN = 0                # nothing ends it
    END_CLOSED = 1              # the peer closed; every message it sent was received
    END_CLOSED_MID = 2          # the peer closed in the middle of a message (a broken rule)
    END_GONE = 3                # the peer is gone: EOF with no CLOSE
    END_PEER_CLOSED = 4         # (sending) the peer closed
    END_SHUT = 5                # (sending) we sent our CLOSE


cdef struct end_t:
    bint peer_closed            # its CLOSE arrived
    bint live_eof               # the bootstrap connection's EOF came, at eof_at
    bint peer_gone
    double eof_at


cdef inline int end_receiving(const end_t *e, int queued, bint assembling) noexcept nogil:
    """What ends receiving, with ``queued`` fragments not yet taken."""
    if e.peer_closed and queued == 0:
        return END_CLOSED_MID if assembling else END_CLOSED
    return END_GONE if e.peer_gone else END_OPEN


cdef inline int end_sending(const end_t *e, bint close_sent) noexcept nogil:
    if e.peer_gone:
        return END_GONE
    if e.peer_closed:
        return END_PEER_CLOSED
    return END_SHUT if close_sent else END_OPEN


cdef inline bint end_expired(end_t *e, double now) noexcept nogil:
    """Whether an EOF has outlived its grace with no CLOSE: then the peer
    is gone (and ``peer_gone`` says so from now on)."""
    if (e.live_eof and not e.peer_gone and not e.peer_closed
            and now - e.eof_at > EOF_GRACE_MS * 1e-3):
        e.peer_gone = True
        return True
    return False


cdef inline int end_sleep_ms(const end_t *e, int timeout_ms) noexcept nogil:
    """How long a sleep may last (-1: no limit): within an EOF's grace, no
    longer than the grace, to judge it when it ends."""
    if e.live_eof and not e.peer_gone and (timeout_ms < 0 or timeout_ms > EOF_GRACE_MS):
        return EOF_GRACE_MS
    return timeout_ms


# -- grant descriptors (remote buffers) ------------------------------------------
# 32 bytes, little-endian: "RMG1", the access, 3 zero bytes, the buffer's
# address and length (8 bytes each), its rkey and the grant's id (4 each).

cdef enum:
    GRANT_LEN = 32
    GRANT_READ = 1
    GRANT_WRITE = 2
    GRANT_RW = 3


cdef struct grant_t:
    uint64_t addr, length
    uint32_t rkey, id
    uint8_t access


cdef inline int grant_parse(const char *p, size_t n, grant_t *g) noexcept nogil:
    """CORE_E_GRANT if these bytes are no descriptor; CORE_E_GRANT_ACCESS
    (a: the access) if its access is unknown."""
    if n != GRANT_LEN or p[0] != b'R' or p[1] != b'M' or p[2] != b'G' or p[3] != b'1':
        return CORE_E_GRANT
    g.access = <uint8_t>p[4]
    if g.access < GRANT_READ or g.access > GRANT_RW:
        return CORE_E_GRANT_ACCESS
    cdef uint64_t key_and_id = get_u64le(p + 24)
    g.addr, g.length = get_u64le(p + 8), get_u64le(p + 16)
    g.rkey, g.id = <uint32_t>(key_and_id & 0xFFFFFFFFu), <uint32_t>(key_and_id >> 32)
    return CORE_OK


cdef inline void grant_pack(char *p, const grant_t *g) noexcept nogil:
    p[0], p[1], p[2], p[3] = b'R', b'M', b'G', b'1'
    p[4] = <char>g.access
    p[5] = p[6] = p[7] = 0
    put_u64le(p + 8, g.addr)
    put_u64le(p + 16, g.length)
    put_u64le(p + 24, <uint64_t>g.rkey | (<uint64_t>g.id << 32))

# The rsockets stream rules (librdmacm's rsocket.c), in C with no I/O: the one
# copy.  The C endpoint (rsocket.pxi) cimports them; rdmamsg/protocol/_rsrules
# wraps them for Python (unit tests, fuzzing).  The model is in
# rdmamsg/protocol/rsocket.py's docstring.
#
# Functions return 0 or an RS_E_* code; nothing here raises, allocates or
# needs the GIL.

from libc.stdint cimport uint16_t, uint32_t, uint64_t, int64_t

cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    #define RS_HOST_BIG 1
    #else
    #define RS_HOST_BIG 0
    #endif
    static inline uint64_t rs_order64(uint64_t v, int big)
    { return big == RS_HOST_BIG ? v : __builtin_bswap64(v); }
    static inline uint32_t rs_order32(uint32_t v, int big)
    { return big == RS_HOST_BIG ? v : __builtin_bswap32(v); }
    """
    int RS_HOST_BIG
    uint64_t rs_order64(uint64_t v, int big) nogil
    uint32_t rs_order32(uint32_t v, int big) nogil

cdef enum:
    RS_SGL_SIZE = 2             # entries in each side's target SGL
    RS_SGE_LEN = 16
    RS_OP_DATA = 0
    RS_OP_SGL = 4
    RS_OP_IOMAP_SGL = 6
    RS_OP_CTRL = 7
    RS_CTRL_DISCONNECT = 0
    RS_CTRL_KEEPALIVE = 1
    RS_CTRL_SHUTDOWN = 2
    RS_CTRL_SLOTS = 4           # control messages in flight at once (RS_QP_CTRL_SIZE)
    RS_MAX_TRANSFER = 65536     # the longest single write
    RS_FIRST_TRANSFER = 2048    # a send's first write; each next one doubles
    RS_MAX_DEPTH = 1024         # the deepest receive queue we keep messages for

cdef enum:                      # what broke a rule
    RS_OK = 0
    RS_E_SLOT_LONG = 1          # the peer lent a slot longer than its first
    RS_E_CREDITS_PAST = 2       # a credit sequence from the past, or beyond the depth
    RS_E_OVER_CREDITS = 3       # more DATA messages than credits
    RS_E_NO_FIT = 4             # a write that does not fit the slot lent
    RS_E_TAKE = 5               # caller: more than the room, or no credit
    RS_E_CONSUME = 6            # caller: more than the oldest message holds
    RS_E_ARG = 7                # caller: a ring or depth we cannot keep

cdef struct rs_sge:             # a target-SGL entry, in its owner's byte order
    uint64_t addr
    uint32_t key
    uint32_t length

cdef struct rs_send_t:
    rs_sge *sgl                 # our target SGL: the peer writes its lent slots here
    uint32_t slot_len           # every slot is as long as the first
    uint32_t peer_depth
    int entry                   # the SGL entry we write into next
    uint16_t seq                # DATA writes sent
    uint16_t limit              # may send while seq != limit

cdef struct rs_recv_t:
    uint64_t addr               # our ring
    uint32_t rkey, size, half, depth
    uint32_t peer_entries
    int peer_big                # the peer's SGL entries are big-endian
    uint32_t moff[RS_MAX_DEPTH]  # arrived messages, oldest at mhead: ring offset,
    uint32_t mlen[RS_MAX_DEPTH]  # bytes not yet read
    uint32_t mhead, mcount
    uint64_t unread
    uint32_t fill_at            # where the next DATA lands
    uint32_t lent               # bytes lent and not yet filled
    uint32_t free               # bytes read and not yet lent again
    uint32_t lend_at
    uint16_t seq                # DATA messages read
    uint16_t next_update
    uint32_t peer_entry         # the peer's SGL entry we write next
    int ctrl_in_flight


cdef inline uint32_t rs_imm(uint32_t op, uint32_t value) noexcept nogil:
    return ((op & 7) << 29) | (value & 0x1FFFFFFF)


cdef inline int rs_diff16(uint16_t a, uint16_t b) noexcept nogil:
    """a - b as a signed 16-bit sequence difference."""
    cdef int d = <uint16_t>(a - b)
    return d - 0x10000 if d >= 0x8000 else d


cdef inline uint32_t rs_write_size(uint64_t left, uint32_t room, uint32_t *step) noexcept nogil:
    """Bytes for a send's next write: its writes start at RS_FIRST_TRANSFER
    and double up to RS_MAX_TRANSFER (``step`` carries that along), never
    more than the ``room`` lent."""
    cdef uint64_t n
    if step[0] < left:
        n = step[0] if step[0] < room else room
        step[0] = step[0] * 2 if step[0] * 2 < RS_MAX_TRANSFER else RS_MAX_TRANSFER
    else:
        n = left if left < room else room
    return <uint32_t>n


# -- the sending side -------------------------------------------------------------


cdef inline void rs_send_init(rs_send_t *s, rs_sge *sgl, uint32_t peer_credits,
                              uint64_t addr, uint32_t key, uint32_t length) noexcept nogil:
    """Entry 0 becomes the slot lent at connect.  Entry 1 is left alone: the
    peer's first update may already be there."""
    s.sgl = sgl
    s.slot_len = length
    s.peer_depth = peer_credits
    s.entry = 0
    s.seq = 0
    s.limit = <uint16_t>peer_credits
    sgl[0].addr = addr
    sgl[0].key = key
    sgl[0].length = length


cdef inline int64_t rs_send_room(rs_send_t *s) noexcept nogil:
    """Bytes the next write may carry now (0: wait for the peer), or
    -RS_E_SLOT_LONG."""
    if s.seq == s.limit:
        return 0
    cdef uint32_t length = s.sgl[s.entry].length      # the peer may have just written it
    if length > s.slot_len:
        return -RS_E_SLOT_LONG
    return length


cdef inline int rs_send_take(rs_send_t *s, uint32_t n, uint64_t *addr, uint32_t *key) noexcept nogil:
    """Spend ``n`` bytes (at most the room) of the current slot and one credit;
    where to write them."""
    cdef rs_sge *cur = &s.sgl[s.entry]
    if n == 0 or n > cur.length or s.seq == s.limit:
        return RS_E_TAKE
    addr[0] = cur.addr
    key[0] = cur.key
    cur.addr += n
    cur.length -= n
    if cur.length == 0:
        s.entry = (s.entry + 1) % RS_SGL_SIZE
    s.seq += 1
    return RS_OK


cdef inline int rs_send_credits(rs_send_t *s, uint32_t value) noexcept nogil:
    """The peer's SGL immediate: it now takes DATA writes up to ``value``."""
    cdef uint16_t v = <uint16_t>value
    if <uint16_t>(v - s.seq) > s.peer_depth or rs_diff16(v, s.limit) < 0:
        return RS_E_CREDITS_PAST
    s.limit = v
    return RS_OK


# -- the receiving side -----------------------------------------------------------


cdef inline int rs_recv_init(rs_recv_t *r, uint64_t addr, uint32_t rkey, uint32_t size,
                             uint32_t depth, uint32_t peer_entries, int peer_big) noexcept nogil:
    """Our ring of ``size`` bytes (halves lent one at a time, the first at
    connect) and receive depth ``depth`` (the peer's credits)."""
    if size % 2 or size < 2 * RS_FIRST_TRANSFER or not 0 < depth <= RS_MAX_DEPTH:
        return RS_E_ARG
    if peer_entries < 1:
        return RS_E_ARG
    r.addr, r.rkey, r.size, r.half, r.depth = addr, rkey, size, size // 2, depth
    r.peer_entries, r.peer_big = peer_entries, peer_big
    r.mhead = r.mcount = 0
    r.unread = 0
    r.fill_at = 0
    r.lent = r.free = r.lend_at = r.half
    r.seq = 0
    r.next_update = <uint16_t>(depth // 2)
    r.peer_entry = 1
    r.ctrl_in_flight = 0
    return RS_OK


cdef inline int rs_recv_data(rs_recv_t *r, uint32_t n) noexcept nogil:
    """A DATA write of ``n`` bytes arrived."""
    if r.mcount >= r.depth:
        return RS_E_OVER_CREDITS
    if n > r.lent or (r.fill_at % r.half) + n > r.half:
        return RS_E_NO_FIT
    cdef uint32_t at = (r.mhead + r.mcount) % r.depth
    r.moff[at] = r.fill_at
    r.mlen[at] = n
    r.mcount += 1
    r.unread += n
    r.fill_at = (r.fill_at + n) % r.size
    r.lent -= n
    return RS_OK


cdef inline bint rs_recv_peek(rs_recv_t *r, uint32_t *off, uint32_t *n) noexcept nogil:
    """Where the unread part of the oldest message is (False: none waits)."""
    if r.mcount == 0:
        return False
    off[0] = r.moff[r.mhead]
    n[0] = r.mlen[r.mhead]
    return True


cdef inline int rs_recv_consume(rs_recv_t *r, uint32_t n) noexcept nogil:
    """The reader took ``n`` bytes of the oldest message."""
    cdef uint32_t h = r.mhead
    if r.mcount == 0 or n > r.mlen[h]:
        return RS_E_CONSUME
    r.moff[h] = (r.moff[h] + n) % r.size
    r.mlen[h] -= n
    r.unread -= n
    r.free += n
    if r.mlen[h] == 0:
        r.mhead = (h + 1) % r.depth
        r.mcount -= 1
        r.seq += 1
    return RS_OK


cdef inline bint rs_update_due(rs_recv_t *r) noexcept nogil:
    """Whether to send the peer credits (and a slot) now (rs_give_credits)."""
    if r.ctrl_in_flight >= RS_CTRL_SLOTS:
        return False
    return r.free >= r.half or rs_diff16(r.seq, r.next_update) >= 0


cdef inline bint rs_make_update(rs_recv_t *r, uint32_t *imm, rs_sge *entry,
                                uint32_t *index) noexcept nogil:
    """The update to send: its immediate, and, when the next half is free, the
    SGL entry lending it (in the peer's byte order) and which of the peer's
    entries it goes to (then True).  One control message more in flight."""
    r.ctrl_in_flight += 1
    r.next_update = <uint16_t>(r.seq + r.depth // 2)
    imm[0] = rs_imm(RS_OP_SGL, <uint16_t>(r.seq + r.depth))
    if r.free < r.half:
        return False
    entry.addr = rs_order64(r.addr + r.lend_at, r.peer_big)
    entry.key = rs_order32(r.rkey, r.peer_big)
    entry.length = rs_order32(r.half, r.peer_big)
    index[0] = r.peer_entry
    r.free -= r.half
    r.lent += r.half
    r.lend_at = (r.lend_at + r.half) % r.size
    r.peer_entry = (r.peer_entry + 1) % r.peer_entries
    return True


cdef inline const char *rs_rule_text(int code) noexcept nogil:
    if code == RS_E_SLOT_LONG:
        return "the peer lent a slot longer than its first"
    if code == RS_E_CREDITS_PAST:
        return "the peer's credit sequence is from the past or beyond its depth"
    if code == RS_E_OVER_CREDITS:
        return "the peer wrote more DATA messages than it had credits for"
    if code == RS_E_NO_FIT:
        return "a write does not fit the slot lent"
    return "rsocket rule broken"

# The wire rules of rdmamsg/protocol/frames.py and credits.py, in C for the
# hot loop.  Unit tests drive these through ImmCodec/CreditWindowC and check
# they agree with the Python versions step for step.

from rdmamsg.protocol.credits import default_threshold

cdef enum:
    K_WHOLE = 0
    K_FIRST = 1         # its immediate carries the message length, not credits
    K_MIDDLE = 2
    K_LAST = 3
    K_CREDIT = 4
    K_CLOSE = 5
    K_FIRST_LONG = 6    # its data starts with the length (8 bytes, little endian)
    KIND_BITS = 4
    KIND_MASK = 15
    FIRST_HDR = 8

cdef uint32_t MAX_IMM_VALUE = (1u << (32 - KIND_BITS)) - 1


cdef struct credit_t:
    int credits       # sends we may post: the peer's posted receives
    int unreturned    # receives we reposted and have not reported
    int threshold     # send a CREDIT fragment once this many are owed
    int limit         # the peer's receive depth


cdef inline void cw_init(credit_t *c, int depth, int threshold) noexcept nogil:
    c.limit = depth
    c.credits = depth
    c.unreturned = 0
    c.threshold = threshold


cdef inline bint cw_can_send(credit_t *c, bint returning) noexcept nogil:
    # The last credit only goes on a fragment that hands credits back.
    return c.credits >= 2 or (c.credits == 1 and returning and c.unreturned > 0)


cdef inline bint cw_update_due(credit_t *c) noexcept nogil:
    return c.unreturned >= c.threshold and c.credits >= 1


cdef inline int cw_spend(credit_t *c, bint returning) noexcept nogil:
    cdef int owed = c.unreturned if returning else 0
    c.credits -= 1
    if returning:
        c.unreturned = 0
    return owed


cdef inline int cw_returned(credit_t *c, int n) noexcept nogil:
    """-1 if the peer returns more than it could owe."""
    if n < 0 or c.credits + n > c.limit:
        return -1
    c.credits += n
    return 0


cdef inline uint32_t imm_pack(int kind, uint32_t value) noexcept nogil:
    return (value << KIND_BITS) | <uint32_t>kind


cdef class CreditWindowC:
    """The C credit rules, wrapped for tests (mirrors protocol.credits.CreditWindow)."""
    cdef credit_t c

    def __init__(self, int peer_depth, threshold=None):
        cdef int t = threshold if threshold is not None else default_threshold(peer_depth)
        cw_init(&self.c, peer_depth, t)

    @property
    def credits(self):
        return self.c.credits

    @property
    def unreturned(self):
        return self.c.unreturned

    def can_send(self, returning=True):
        return cw_can_send(&self.c, returning)

    def update_due(self):
        return cw_update_due(&self.c)

    def spend(self, returning=True):
        if self.c.credits < 1:
            raise RuntimeError("no credit to spend")
        return cw_spend(&self.c, returning)

    def returned(self, int n):
        if cw_returned(&self.c, n) < 0:
            raise ValueError("too many credits returned")

    def reposted(self, int n=1):
        self.c.unreturned += n


def pack_imm(int kind, uint32_t value):
    """frames.pack_imm, as the C engine computes it."""
    return imm_pack(kind, value)

# The common RPC frames in C: a msgpack subset, no I/O (rdmamsg/rpc/wire.py
# is the reference and does everything else).
#
# Covered: None, bool, int (64-bit), float, str, bytes below inline_max,
# list, tuple and dict, nested up to MAX_DEPTH; frames with no out-of-band
# buffers.  The bytes written are those msgpack.packb(use_bin_type=True)
# writes.  Anything else (a bytearray, an array, a big int, an ext type, a
# malformed frame) gives UNFIT, and the caller uses wire.py, which also says
# what is wrong.

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next, PyDict_SetItem
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.ref cimport Py_INCREF, PyObject
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.tuple cimport PyTuple_GET_SIZE, PyTuple_GET_ITEM, PyTuple_New, PyTuple_SET_ITEM
from cpython.list cimport PyList_GET_SIZE, PyList_GET_ITEM
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, INT64_MAX
from libc.stdlib cimport realloc, free
from libc.string cimport memcmp, memcpy

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    unsigned long long PyLong_AsUnsignedLongLong(object o) except? <unsigned long long>-1
    object PyFloat_FromDouble(double v)

cdef enum:
    MAX_DEPTH = 64                   # as wire.MAX_DEPTH: deeper values take wire.py's path
    REQUEST = 0                      # frame kinds and reply status, as in wire.py
    REPLY = 1
    OK = 0

cdef object UNFIT = object()          # "not in the subset": wire.py's turn


cdef class Writer:
    """A growing C buffer that frames are packed into.  It lends its frame
    as a read-only buffer (an endpoint sends it without a bytes object), and
    does not move while lent."""
    cdef uint8_t* buf
    cdef Py_ssize_t n, cap
    cdef int exports

    def __dealloc__(self):
        free(self.buf)

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.buf, self.n, 1, flags)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.exports -= 1

    cdef int grow(self, Py_ssize_t more) except -1:
        cdef Py_ssize_t cap = self.cap or 256
        if self.exports:
            raise BufferError("an RPC frame buffer grew while it was being sent")
        while cap < self.n + more:
            cap *= 2
        p = <uint8_t*>realloc(self.buf, cap)
        if p == NULL:
            raise MemoryError()
        self.buf, self.cap = p, cap
        return 0

    cdef inline int put1(self, uint8_t b) except -1:
        if self.n + 1 > self.cap:
            self.grow(1)
        self.buf[self.n] = b
        self.n += 1
        return 0

    cdef inline int put_be(self, uint8_t tag, uint64_t v, int width) except -1:
        """``tag`` then ``v`` big-endian in ``width`` bytes."""
        cdef int i
        if self.n + 1 + width > self.cap:
            self.grow(1 + width)
        self.buf[self.n] = tag
        for i in range(width):
            self.buf[self.n + 1 + i] = <uint8_t>(v >> (8 * (width - 1 - i)))
        self.n += 1 + width
        return 0

    cdef int put(self, const void* p, Py_ssize_t size) except -1:
        if self.n + size > self.cap:
            self.grow(size)
        memcpy(self.buf + self.n, p, size)
        self.n += size
        return 0

    cdef int put_len(self, Py_ssize_t size, uint8_t fix, Py_ssize_t fix_max, uint8_t t8,
                     uint8_t t16, uint8_t t32) except -1:
        """A length header: ``fix | size`` below ``fix_max``, else the
        smallest of the 8-, 16- and 32-bit forms (t8 0: there is none)."""
        if size < fix_max:
            return self.put1(fix | <uint8_t>size)
        if t8 and size < 0x100:
            return self.put_be(t8, size, 1)
        if size < 0x10000:
            return self.put_be(t16, size, 2)
        return self.put_be(t32, size, 4)


cdef int pack_int(Writer w, o) except -1:
    """0 when packed, 1 when out of the 64-bit range."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(o, &overflow)
    cdef unsigned long long u
    if overflow > 0:
        try:
            u = PyLong_AsUnsignedLongLong(o)
        except OverflowError:
            return 1
        w.put_be(0xcf, u, 8)
    elif overflow < 0:
        return 1
    elif v >= 0:
        if v < 0x80:
            w.put1(<uint8_t>v)
        elif v < 0x100:
            w.put_be(0xcc, v, 1)
        elif v < 0x10000:
            w.put_be(0xcd, v, 2)
        elif v < 0x100000000:
            w.put_be(0xce, v, 4)
        else:
            w.put_be(0xcf, v, 8)
    elif v >= -32:
        w.put1(<uint8_t>(v & 0xff))
    elif v >= -0x80:
        w.put_be(0xd0, <uint64_t>v, 1)
    elif v >= -0x8000:
        w.put_be(0xd1, <uint64_t>v, 2)
    elif v >= -0x80000000:
        w.put_be(0xd2, <uint64_t>v, 4)
    else:
        w.put_be(0xd3, <uint64_t>v, 8)
    return 0


cdef int pack(Writer w, o, int depth, Py_ssize_t inline_max) except -1:
    """Append ``o``: 0, or 1 when it is not in the subset (``w`` is then
    partly written: the caller drops the frame)."""
    cdef Py_ssize_t size, i, pos
    cdef const char* s
    cdef double d
    cdef uint64_t bits
    cdef PyObject* k
    cdef PyObject* v
    t = type(o)
    if o is None:
        return w.put1(0xc0)
    if t is bool:
        return w.put1(0xc3 if o is True else 0xc2)
    if t is int:
        return pack_int(w, o)
    if t is float:
        d = PyFloat_AS_DOUBLE(o)
        memcpy(&bits, &d, 8)
        return w.put_be(0xcb, bits, 8)
    if t is str:
        try:
            s = PyUnicode_AsUTF8AndSize(o, &size)
        except UnicodeError:               # lone surrogates: wire.py says so
            return 1
        if size >= 0x100000000:
            return 1
        w.put_len(size, 0xa0, 32, 0xd9, 0xda, 0xdb)
        return w.put(s, size)
    if t is bytes:
        size = PyBytes_GET_SIZE(o)
        if size >= inline_max or size >= 0x100000000:
            return 1                       # out of band
        w.put_len(size, 0, 0, 0xc4, 0xc5, 0xc6)
        return w.put(PyBytes_AS_STRING(o), size)
    if depth >= MAX_DEPTH:
        return 1
    if t is tuple:
        size = PyTuple_GET_SIZE(o)
        w.put_len(size, 0x90, 16, 0, 0xdc, 0xdd)
        for i in range(size):
            if pack(w, <object>PyTuple_GET_ITEM(o, i), depth + 1, inline_max):
                return 1
        return 0
    if t is list:
        # Packing runs no Python code, so the list cannot change meanwhile.
        size = PyList_GET_SIZE(o)
        w.put_len(size, 0x90, 16, 0, 0xdc, 0xdd)
        for i in range(size):
            if pack(w, <object>PyList_GET_ITEM(o, i), depth + 1, inline_max):
                return 1
        return 0
    if t is dict:
        w.put_len(len(o), 0x80, 16, 0, 0xde, 0xdf)
        pos = 0
        while PyDict_Next(o, &pos, &k, &v):
            if pack(w, <object>k, depth + 1, inline_max) or pack(w, <object>v, depth + 1,
                                                                  inline_max):
                return 1
        return 0
    return 1


cdef object frame_bytes(Writer w):
    return PyBytes_FromStringAndSize(<char*>w.buf, w.n)


cdef bint encode_request(Writer w, uint64_t call_id, str method, tuple args, Py_ssize_t skip,
                         dict kwargs, ms, Py_ssize_t inline_max) except -1:
    """wire.encode_request's frame for ``args[skip:]``, into ``w``; False if
    it is outside the subset."""
    cdef Py_ssize_t i, n = PyTuple_GET_SIZE(args) - skip
    w.n = 0
    w.put1(0x95)
    w.put1(REQUEST)
    pack_int(w, call_id)
    if pack(w, method, 0, inline_max) or pack(w, ms, 0, inline_max):
        return False
    w.put1(0x90)                           # no out-of-band buffers
    w.put1(0x92)
    w.put_len(n, 0x90, 16, 0, 0xdc, 0xdd)
    for i in range(n):
        if pack(w, <object>PyTuple_GET_ITEM(args, skip + i), 2, inline_max):
            return False
    return not pack(w, kwargs, 1, inline_max)


cdef bint encode_reply(Writer w, uint64_t call_id, result, Py_ssize_t inline_max) except -1:
    """wire.encode_reply's frame, into ``w``; False if it is outside the subset."""
    w.n = 0
    w.put1(0x95)
    w.put1(REPLY)
    pack_int(w, call_id)
    w.put1(OK)
    w.put1(0xc0)
    w.put1(0x90)
    return not pack(w, result, 0, inline_max)


# -- decoding ---------------------------------------------------------------------------


cdef struct Reader:
    const uint8_t* p
    Py_ssize_t pos, end


cdef inline bint take(Reader* r, Py_ssize_t n, uint64_t* out):
    """Read an n-byte big-endian number; False past the end."""
    cdef Py_ssize_t i
    if r.end - r.pos < n:
        return False
    out[0] = 0
    for i in range(n):
        out[0] = (out[0] << 8) | r.p[r.pos + i]
    r.pos += n
    return True


cdef bint read_uint(Reader* r, uint64_t* out):
    """A non-negative msgpack integer, in any of its forms."""
    cdef uint8_t b
    if r.pos >= r.end:
        return False
    b = r.p[r.pos]
    r.pos += 1
    if b < 0x80:
        out[0] = b
        return True
    if 0xcc <= b <= 0xcf:
        return take(r, 1 << (b - 0xcc), out)
    return False


cdef object unpack(Reader* r, int depth):
    """The next value, as msgpack.unpackb(raw=False) makes it, or UNFIT."""
    cdef uint8_t b
    cdef uint64_t n = 0
    cdef Py_ssize_t i
    cdef int width
    cdef uint32_t f32
    cdef float fv
    cdef double dv
    if r.pos >= r.end or depth > MAX_DEPTH:
        return UNFIT
    b = r.p[r.pos]
    r.pos += 1
    if b < 0x80:
        return b
    if b >= 0xe0:
        return <int>b - 0x100
    if b == 0xc0:
        return None
    if b == 0xc2:
        return False
    if b == 0xc3:
        return True
    if 0xa0 <= b <= 0xbf or 0xd9 <= b <= 0xdb:
        if b <= 0xbf:
            n = b & 0x1f
        elif not take(r, 1 << (b - 0xd9), &n):
            return UNFIT
        return read_str(r, n)
    if 0xc4 <= b <= 0xc6:
        if not take(r, 1 << (b - 0xc4), &n) or <uint64_t>(r.end - r.pos) < n:
            return UNFIT
        r.pos += n
        return PyBytes_FromStringAndSize(<const char*>r.p + r.pos - n, n)
    if 0xcc <= b <= 0xcf:
        if not take(r, 1 << (b - 0xcc), &n):
            return UNFIT
        return PyLong_FromUnsignedLongLong(n)
    if 0xd0 <= b <= 0xd3:
        width = 1 << (b - 0xd0)
        if not take(r, width, &n):
            return UNFIT
        if width < 8 and n >> (8 * width - 1):
            n |= ~((<uint64_t>1 << (8 * width)) - 1)        # sign-extend
        return PyLong_FromLongLong(<int64_t>n)
    if b == 0xca:
        if not take(r, 4, &n):
            return UNFIT
        f32 = <uint32_t>n
        memcpy(&fv, &f32, 4)
        return PyFloat_FromDouble(fv)
    if b == 0xcb:
        if not take(r, 8, &n):
            return UNFIT
        memcpy(&dv, &n, 8)
        return PyFloat_FromDouble(dv)
    if 0x90 <= b <= 0x9f or b == 0xdc or b == 0xdd:
        if b <= 0x9f:
            n = b & 0x0f
        elif not take(r, 2 if b == 0xdc else 4, &n):
            return UNFIT
        return read_list(r, n, depth, False)
    if 0x80 <= b <= 0x8f or b == 0xde or b == 0xdf:
        if b <= 0x8f:
            n = b & 0x0f
        elif not take(r, 2 if b == 0xde else 4, &n):
            return UNFIT
        return read_dict(r, n, depth, False)
    return UNFIT                           # ext types, and 0xc1 (never used)


cdef object read_str(Reader* r, uint64_t n):
    if <uint64_t>(r.end - r.pos) < n:
        return UNFIT
    try:
        s = PyUnicode_DecodeUTF8(<const char*>r.p + r.pos, n, NULL)
    except UnicodeDecodeError:
        return UNFIT
    r.pos += n
    return s


cdef object read_list(Reader* r, uint64_t n, int depth, bint as_tuple):
    cdef Py_ssize_t i
    if <uint64_t>(r.end - r.pos) < n:     # each item takes a byte at least
        return UNFIT
    out = PyTuple_New(n) if as_tuple else PyList_New(n)
    for i in range(<Py_ssize_t>n):
        item = unpack(r, depth + 1)
        if item is UNFIT:
            return UNFIT
        Py_INCREF(item)
        if as_tuple:
            PyTuple_SET_ITEM(out, i, item)
        else:
            PyList_SET_ITEM(out, i, item)
    return out


cdef object read_dict(Reader* r, uint64_t n, int depth, bint str_keys):
    cdef Py_ssize_t i
    if <uint64_t>(r.end - r.pos) < 2 * n:
        return UNFIT
    out = {}
    for i in range(<Py_ssize_t>n):
        k = unpack(r, depth + 1)
        if k is UNFIT or (str_keys and type(k) is not str) or type(k) in (list, dict):
            return UNFIT                   # unhashable keys: wire.py says what is wrong
        v = unpack(r, depth + 1)
        if v is UNFIT:
            return UNFIT
        out[k] = v
    return out


cdef class Frame:
    """What the fast paths know of a frame.  ``kind`` is -1 when even the
    header is outside the subset; ``whole`` when the body was decoded too."""
    cdef public int kind
    cdef public uint64_t call_id
    cdef public object method          # REQUEST: str
    cdef public int status             # REPLY: OK or ERROR
    cdef public object value           # REPLY: the result; REQUEST: the args tuple
    cdef public object kwargs          # REQUEST: a dict, or None for none
    cdef public int64_t ms             # the deadline, in ms from now (-1: none)
    cdef public bint whole


cdef object last_method = ""            # the last method name read (servers call few)


cdef object read_method(Reader* r):
    """A request's method name, or None if it is not a str.  The same name
    as last time is that same object: no new str, and its hash is known."""
    global last_method
    cdef Py_ssize_t n, size
    cdef const char* s
    if r.pos < r.end and 0xa0 <= r.p[r.pos] <= 0xbf:
        n = r.p[r.pos] & 0x1f
        s = PyUnicode_AsUTF8AndSize(last_method, &size)
        if n == size and r.end - r.pos > n and memcmp(s, r.p + r.pos + 1, n) == 0:
            r.pos += 1 + n
            return last_method
    method = unpack(r, 1)
    if type(method) is not str:
        return None
    last_method = method
    return method


cdef bint parse_head(Reader* r, Frame f):
    """[kind, id, method or status, ms, []]: False if not in the subset
    (``f.kind`` and ``f.call_id`` are set as soon as they are known, so that
    a caller recognises its reply even when that goes to wire.py)."""
    cdef uint64_t kind = 0, status = 0, call_id = 0, ms = 0
    if r.end < 1 or r.p[0] != 0x95:
        return False
    r.pos = 1
    if not read_uint(r, &kind) or kind > REPLY or not read_uint(r, &call_id):
        return False
    f.kind, f.call_id = <int>kind, call_id
    if kind == REQUEST:
        f.method = read_method(r)
        if f.method is None:
            return False
    else:
        if not read_uint(r, &status) or status > 1:
            return False
        f.status = <int>status
    if r.pos < r.end and r.p[r.pos] == 0xc0:
        r.pos += 1                          # no deadline
    elif not read_uint(r, &ms):
        return False
    else:
        f.ms = <int64_t>(ms if ms < INT64_MAX else INT64_MAX)
    if r.pos >= r.end or r.p[r.pos] != 0x90:
        return False                       # out-of-band buffers follow
    r.pos += 1
    return True


cdef Frame parse(const char* p, Py_ssize_t size):
    """A frame (``size`` bytes at ``p``) as far as the subset goes."""
    cdef Frame f = Frame.__new__(Frame)
    parse_into(f, p, size)
    return f


cdef int parse_into(Frame f, const char* p, Py_ssize_t size) except -1:
    """parse(), into ``f`` (a frame a loop reuses: what it held is dropped)."""
    cdef Reader r
    cdef uint8_t b
    cdef uint64_t n = 0
    f.kind, f.ms, f.call_id, f.status, f.whole = -1, -1, 0, 0, False
    f.method = f.value = f.kwargs = None
    r.p = <const uint8_t*>p
    r.end = size
    r.pos = 0
    if not parse_head(&r, f):
        return 0
    if f.kind == REQUEST:
        if r.end - r.pos < 2 or r.p[r.pos] != 0x92:
            return 0
        r.pos += 1
        b = r.p[r.pos]
        r.pos += 1
        if 0x90 <= b <= 0x9f:
            n = b & 0x0f
        elif not ((b == 0xdc or b == 0xdd) and take(&r, 2 if b == 0xdc else 4, &n)):
            return 0
        args = read_list(&r, n, 1, True)   # a tuple: the handler is called with it
        if args is UNFIT or r.pos >= r.end:
            return 0
        b = r.p[r.pos]
        r.pos += 1
        if b == 0x80:
            kwargs = None
        elif 0x81 <= b <= 0x8f:
            kwargs = read_dict(&r, b & 0x0f, 1, True)
            if kwargs is UNFIT:
                return 0
        else:
            return 0                       # 16 keyword arguments or more: wire.py
        f.value, f.kwargs = args, kwargs
    else:
        value = unpack(&r, 0)
        if value is UNFIT:
            return 0
        f.value = value
    f.whole = r.pos == r.end               # trailing bytes: wire.py refuses them
    return 0

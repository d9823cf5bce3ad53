"""The RPC wire format: msgpack frames and out-of-band payloads.  No I/O.

How this works.  A frame is one endpoint message: a msgpack header, then
(for requests and replies) a msgpack body.

    header = [kind, id, method or status, timeout_ms, specs]
    REQUEST body = [args, kwargs]      REPLY body = result, or [type, message, traceback]

Large binary values (bytes, bytearray, memoryview, numpy arrays of at least
``inline_max`` bytes) do not go into the body: they are replaced there by a
reference (``EXT_REF``, an index) and sent after the frame as messages of
their own, straight from the caller's memory.  ``specs`` describes each one
(type, size, dtype, shape), so that the receiver checks the sizes and then
allocates the final object and receives into it: one copy in all, none on
the sending side.  Smaller values travel inside the body as extension types,
so that each arrives as the type it was sent as.  Tuples arrive as lists, as
in every msgpack RPC.
"""
from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from typing import Any

import msgpack

from ..errors import ProtocolError

REQUEST, REPLY, CANCEL, PING = range(4)
OK, ERROR = 0, 1

# Buffer types, in specs and in inline extension values.
T_BYTES, T_BYTEARRAY, T_MEMORYVIEW, T_NDARRAY = range(4)
EXT_BYTEARRAY, EXT_MEMORYVIEW, EXT_NDARRAY, EXT_REF = 1, 2, 3, 4

INLINE_MAX = 65536          #: binary values this long go out of band (the endpoint's zero-copy size)
MAX_PAYLOAD = 1 << 30       #: the out-of-band bytes one frame may announce
MAX_BUFFERS = 4096          #: out-of-band buffers per frame
MAX_DEPTH = 64              #: nesting of lists and dicts that are searched for buffers
_REF = struct.Struct("<I")

UNKNOWN_METHOD = "rdmamsg.rpc.UnknownMethod"
DEADLINE_EXCEEDED = "rdmamsg.rpc.DeadlineExceeded"


@dataclass
class Header:
    kind: int
    id: int
    method: str | None            #: REQUEST
    status: int                   #: REPLY: OK or ERROR
    timeout: float | None         #: REQUEST: seconds the caller still waits
    specs: list                   #: [type, nbytes, dtype, shape] per out-of-band buffer
    body: memoryview              #: the rest of the frame


# -- encoding ------------------------------------------------------------------------


def encode_request(call_id: int, method: str, args: tuple, kwargs: dict,
                   timeout: float | None, inline_max: int = INLINE_MAX) -> tuple[bytes, list]:
    """(frame, out-of-band buffers to send after it, as byte memoryviews)."""
    buffers: list = []
    body = _pack([_extract(list(args), buffers, inline_max, 0),
                  _extract(kwargs, buffers, inline_max, 0)])
    ms = None if timeout is None else max(0, int(timeout * 1000))
    return _pack([REQUEST, call_id, method, ms, _specs(buffers)]) + body, _views(buffers)


def encode_reply(call_id: int, result: Any, inline_max: int = INLINE_MAX) -> tuple[bytes, list]:
    buffers: list = []
    body = _pack(_extract(result, buffers, inline_max, 0))
    return _pack([REPLY, call_id, OK, None, _specs(buffers)]) + body, _views(buffers)


def encode_error(call_id: int, type_name: str, message: str, tb: str = "") -> bytes:
    return _pack([REPLY, call_id, ERROR, None, []]) + _pack([type_name, message, tb])


def encode_cancel(call_id: int) -> bytes:
    return _pack([CANCEL, call_id, None, None, []])


def encode_ping() -> bytes:
    return _pack([PING, 0, None, None, []])


def _pack(obj: Any) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"cannot send this value over rdmamsg.rpc: {exc}") from None


def _numpy():
    return sys.modules.get("numpy")     # only if the caller has imported it


def _extract(obj: Any, buffers: list, inline_max: int, depth: int) -> Any:
    """``obj`` with binary values made extension types, and those of at least
    ``inline_max`` bytes replaced by references into ``buffers``."""
    t = type(obj)
    if t is bytes:
        return _ref(obj, buffers) if len(obj) >= inline_max else obj
    if t is bytearray or t is memoryview:
        mv = memoryview(obj)
        if not mv.c_contiguous:
            raise TypeError("rdmamsg.rpc sends only contiguous memoryviews")
        if mv.nbytes >= inline_max:
            return _ref(obj, buffers)
        return msgpack.ExtType(EXT_BYTEARRAY if t is bytearray else EXT_MEMORYVIEW, mv.tobytes())
    if t is list or t is tuple or t is dict:
        if depth >= MAX_DEPTH:
            return obj                    # msgpack itself refuses what is too deep
        if t is dict:
            return {k: _extract(v, buffers, inline_max, depth + 1) for k, v in obj.items()}
        return [_extract(v, buffers, inline_max, depth + 1) for v in obj]
    np = _numpy()
    if np is not None and isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("rdmamsg.rpc cannot send numpy arrays of Python objects")
        arr = np.ascontiguousarray(obj)
        if arr.nbytes >= inline_max:
            return _ref(arr, buffers)
        return msgpack.ExtType(EXT_NDARRAY, msgpack.packb(
            [arr.dtype.str, list(arr.shape), arr.tobytes()], use_bin_type=True))
    return obj


def _ref(obj: Any, buffers: list) -> msgpack.ExtType:
    buffers.append(obj)
    return msgpack.ExtType(EXT_REF, _REF.pack(len(buffers) - 1))


def _specs(buffers: list) -> list:
    out = []
    for b in buffers:
        t = type(b)
        if t is bytes:
            out.append([T_BYTES, len(b), None, None])
        elif t is bytearray or t is memoryview:
            out.append([T_BYTEARRAY if t is bytearray else T_MEMORYVIEW,
                        memoryview(b).nbytes, None, None])
        else:
            out.append([T_NDARRAY, b.nbytes, b.dtype.str, list(b.shape)])
    return out


def _views(buffers: list) -> list:
    return [memoryview(b).cast("B") if b.__class__ is not bytes else memoryview(b)
            for b in buffers]


# -- decoding ------------------------------------------------------------------------


def decode_header(frame, max_payload: int = MAX_PAYLOAD) -> Header:
    """Parse a frame's header; ProtocolError if it is malformed or announces
    more than ``max_payload`` out-of-band bytes (checked before anything is
    allocated)."""
    # unpackb, not an Unpacker: constructing one per frame cost ~100 us under
    # TCG (against ~10 us for this).  The body after the header comes back
    # as ExtraData, whose length tells where the header ends; unpackb bounds
    # every length it allocates for by the frame's own size.
    try:
        head, end = msgpack.unpackb(frame, raw=False, strict_map_key=True), len(frame)
    except msgpack.ExtraData as extra:
        head, end = extra.unpacked, len(frame) - len(extra.extra)
    except Exception as exc:            # msgpack raises several unrelated types
        raise ProtocolError(f"RPC frame header is not valid msgpack: {exc}") from None
    if not (type(head) is list and len(head) == 5 and type(head[0]) is int
            and type(head[1]) is int and type(head[4]) is list):
        raise ProtocolError(f"malformed RPC frame header: {head!r:.100}")
    kind, call_id, third, ms, specs = head
    if kind not in (REQUEST, REPLY, CANCEL, PING):
        raise ProtocolError(f"unknown RPC frame kind {kind}")
    if not 0 <= call_id < 1 << 64:
        raise ProtocolError(f"RPC call id {call_id} is out of range")
    if not (ms is None or (type(ms) is int and ms >= 0)):
        raise ProtocolError(f"malformed RPC deadline {ms!r:.40} in a frame header")
    method, status = None, OK
    if kind == REQUEST:
        if type(third) is not str:
            raise ProtocolError("malformed RPC request header")
        method = third
    elif kind == REPLY:
        if third not in (OK, ERROR):
            raise ProtocolError(f"unknown RPC reply status {third!r:.40}")
        status = third
    _check_specs(specs, max_payload)
    return Header(kind, call_id, method, status, None if ms is None else ms / 1000,
                  specs, memoryview(frame)[end:])


def _check_specs(specs: list, max_payload: int) -> None:
    if len(specs) > MAX_BUFFERS:
        raise ProtocolError(f"an RPC frame announced {len(specs)} buffers; the limit is {MAX_BUFFERS}")
    total = 0
    for s in specs:
        if not (type(s) is list and len(s) == 4 and s[0] in (T_BYTES, T_BYTEARRAY, T_MEMORYVIEW,
                                                             T_NDARRAY)
                and type(s[1]) is int and s[1] >= 0):
            raise ProtocolError(f"malformed RPC buffer spec {s!r:.80}")
        total += s[1]
        if total > max_payload:
            raise ProtocolError(f"an RPC frame announced more than {max_payload} bytes of "
                                "payload (max_payload)")
        if s[0] == T_NDARRAY:
            _array_shape(s[2], s[3], s[1])


def _array_shape(dtype: Any, shape: Any, nbytes: int):
    """The numpy dtype for an announced array, after checking that dtype,
    shape and size agree."""
    np = _numpy_for_arrays()
    if type(dtype) is not str or type(shape) is not list or len(shape) > 64 or not all(
            type(d) is int and d >= 0 for d in shape):
        raise ProtocolError("malformed numpy array description in an RPC frame")
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise ProtocolError(f"unknown numpy dtype {dtype!r:.40} in an RPC frame") from None
    if dt.hasobject:
        raise ProtocolError("an RPC frame announced a numpy array of Python objects")
    if dt.itemsize == 0 or dt.shape:   # "S0" items would be 1 byte; "(2,)f8" adds a dimension
        raise ProtocolError(f"numpy dtype {dtype!r:.40} cannot describe an array's items")
    count, extent = 1, max(dt.itemsize, 1)
    for d in shape:
        count *= d
        extent *= d or 1
    # numpy refuses a shape whose non-zero dimensions overflow its index type,
    # even when another dimension is 0 and the array would hold nothing.
    if extent >= 1 << 62:
        raise ProtocolError(f"numpy array shape {tuple(shape)!r:.80} is too large")
    if count * dt.itemsize != nbytes:
        raise ProtocolError(f"numpy array {dtype}{tuple(shape)} announced as {nbytes} bytes")
    return dt


def _numpy_for_arrays():
    try:
        import numpy
    except ImportError:
        raise ProtocolError("the peer sent a numpy array, and numpy is not installed "
                            "here") from None
    return numpy


def allocate(spec: list) -> tuple[Any, memoryview | None]:
    """The object an out-of-band buffer becomes, and the writable bytes to
    receive it into (None for bytes: those are received as a new object)."""
    kind, nbytes, dtype, shape = spec
    if kind == T_BYTES:
        return None, None
    if kind == T_NDARRAY:
        np = _numpy_for_arrays()
        arr = np.empty(shape, dtype=np.dtype(dtype))
        return arr, memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
    buf = bytearray(nbytes)
    mv = memoryview(buf)
    return (buf if kind == T_BYTEARRAY else mv), mv


def decode_body(head: Header, objects: list) -> Any:
    """The frame's body, with references resolved to ``objects`` (the
    received out-of-band buffers, in order)."""
    if not head.body.nbytes:
        raise ProtocolError("RPC frame has no body")

    def ext(code: int, data: bytes):
        if code == EXT_REF:
            if len(data) != _REF.size:
                raise ProtocolError("malformed RPC buffer reference")
            i = _REF.unpack(data)[0]
            if i >= len(objects):
                raise ProtocolError(f"RPC buffer reference {i} of {len(objects)}")
            return objects[i]
        if code == EXT_BYTEARRAY:
            return bytearray(data)
        if code == EXT_MEMORYVIEW:
            return memoryview(bytearray(data))
        if code == EXT_NDARRAY:
            return _inline_array(data)
        raise ProtocolError(f"unknown msgpack extension type {code} in an RPC frame")

    try:
        return msgpack.unpackb(head.body, raw=False, ext_hook=ext, strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"RPC frame body is not valid msgpack: {exc}") from None


def _inline_array(data: bytes):
    np = _numpy_for_arrays()
    try:
        dtype, shape, raw = msgpack.unpackb(data, raw=False)
    except Exception:
        raise ProtocolError("malformed inline numpy array in an RPC frame") from None
    if type(raw) is not bytes:
        raise ProtocolError("malformed inline numpy array in an RPC frame")
    dt = _array_shape(dtype, shape, len(raw))
    return np.frombuffer(bytearray(raw), dtype=dt).reshape(shape)


def request_parts(head: Header, body: Any) -> tuple[list, dict]:
    if not (type(body) is list and len(body) == 2 and type(body[0]) is list
            and type(body[1]) is dict and all(type(k) is str for k in body[1])):
        raise ProtocolError("malformed RPC request body")
    return body[0], body[1]


def error_parts(body: Any) -> tuple[str, str, str]:
    if not (type(body) is list and len(body) == 3 and all(type(x) is str for x in body)):
        raise ProtocolError("malformed RPC error reply")
    return body[0], body[1], body[2]

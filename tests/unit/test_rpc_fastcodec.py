"""The RPC fast path's C codec (ext/rpc/rpc_codec.pxi) against wire.py, with bytes alone.

Inside its subset it must write the very bytes wire.py writes and read
frames as wire.py reads them; outside it, it must say so (and leave the
frame to wire.py) rather than guess.
"""
import enum
import math

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from rdmamsg.rpc import _rpcfast as fast, wire       # ci/setup builds it: no skip

INLINE = 4096
scalars = (st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
           | st.floats(allow_nan=False) | st.text(max_size=300)
           | st.binary(max_size=INLINE - 1))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=20)
                      | st.tuples(inner, inner)
                      | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner,
                                        max_size=20), max_leaves=60)
names = st.text(min_size=1, max_size=40)


def wire_read(frame: bytes):
    head = wire.decode_header(frame)
    return head, wire.decode_body(head, [])


def plain(v):
    """What msgpack gives back for ``v`` (tuples arrive as lists)."""
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


@settings(max_examples=400, deadline=None)
@given(st.integers(0, (1 << 64) - 1), names, st.lists(values, max_size=6),
       st.dictionaries(st.text(max_size=10), values, max_size=15),
       st.none() | st.integers(0, 10 ** 9))
def test_requests_are_byte_for_byte_wires_and_read_back_alike(call_id, name, args, kwargs, ms):
    timeout = None if ms is None else ms / 1000
    want, buffers = wire.encode_request(call_id, name, tuple(args), kwargs, timeout, INLINE)
    assert buffers == []
    got = fast.request(call_id, name, tuple(args), kwargs,
                       None if ms is None else max(0, int(timeout * 1000)), INLINE)
    assert got == want
    kind, cid, method, value, kw, whole = fast.decode(got)
    assert (kind, cid, method, whole) == (wire.REQUEST, call_id, name, True)
    head, body = wire_read(got)
    assert [value, kw] == body == [plain(args), plain(kwargs)]


@settings(max_examples=400, deadline=None)
@given(st.integers(0, (1 << 64) - 1), values)
def test_replies_are_byte_for_byte_wires_and_read_back_alike(call_id, result):
    want, buffers = wire.encode_reply(call_id, result, INLINE)
    assert buffers == []
    got = fast.reply(call_id, result, INLINE)
    assert got == want
    kind, cid, status, value, _, whole = fast.decode(got)
    assert (kind, cid, status, whole) == (wire.REPLY, call_id, wire.OK, True)
    assert value == wire_read(got)[1] == plain(result)


def test_the_edges_of_each_integer_and_length_form():
    ints = [0, 127, 128, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63,
            (1 << 64) - 1, -1, -32, -33, -128, -129, -32768, -32769, -(1 << 31),
            -(1 << 31) - 1, -(1 << 63)]
    sizes = [0, 15, 16, 31, 32, 255, 256, 65535, 65536]
    cases = (ints + ["x" * n for n in sizes] + [b"x" * n for n in sizes]
             + [[0] * n for n in sizes] + [{i: 0 for i in range(n)} for n in sizes]
             + [1.5, -0.0, math.inf, float("nan")])
    for v in cases:
        got = fast.reply(1, v, 1 << 20)
        assert got == wire.encode_reply(1, v, 1 << 20)[0], repr(v)[:60]
        if not (isinstance(v, float) and math.isnan(v)):
            assert fast.decode(got)[3] == plain(v)


def nested(depth: int) -> list:
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


class Colour(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize("value", [
    1 << 64, -(1 << 63) - 1,                         # msgpack has no form for them
    bytearray(b"x"), memoryview(b"x"), b"x" * INLINE,  # extension types, out of band
    "\ud800",                                        # a lone surrogate: no UTF-8
    Colour.RED, object(), {1, 2},                    # not the exact builtin types
    nested(70),                                      # deeper than MAX_DEPTH
])
def test_values_outside_the_subset_are_left_to_wire(value):
    assert fast.reply(1, value, INLINE) is None
    assert fast.request(1, "f", (value,), {}, None, INLINE) is None
    assert fast.request(1, "f", (), {"k": [value]}, None, INLINE) is None


def test_frames_outside_the_subset_are_recognised_but_not_decoded():
    # Out-of-band buffers: the header says whose reply it is, the rest is wire.py's.
    frame, buffers = wire.encode_reply(9, b"x" * INLINE, INLINE)
    assert buffers and fast.decode(frame)[:2] == (wire.REPLY, 9) and not fast.decode(frame)[5]
    frame = wire.encode_error(9, "builtins.ValueError", "bad", "tb")
    kind, cid, status, value, _, whole = fast.decode(frame)
    assert (kind, cid, status, whole) == (wire.REPLY, 9, wire.ERROR, True)   # the caller looks at status
    frame, _ = wire.encode_reply(9, bytearray(b"ext"), INLINE)
    assert fast.decode(frame)[:2] == (wire.REPLY, 9) and not fast.decode(frame)[5]
    for frame in (wire.encode_ping(), wire.encode_cancel(3), b"", b"\x95", b"garbage"):
        assert fast.decode(frame)[0] == -1
    # 16 keyword arguments or more, and keys that are not str, are wire.py's to judge.
    frame, _ = wire.encode_request(1, "f", (), {f"k{i}": i for i in range(16)}, None)
    assert not fast.decode(frame)[5]
    bad = msgpack.packb([0, 1, "f", None, []]) + msgpack.packb([[], {1: 2}])
    assert not fast.decode(bad)[5]
    with pytest.raises(Exception):
        wire.request_parts(*wire_read(bad))
    # Trailing bytes after the body.
    frame = fast.reply(1, 5) + b"\x00"
    assert not fast.decode(frame)[5]


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, (1 << 64) - 1), values, st.data())
def test_damaged_frames_are_never_decoded_into_something_wire_refuses(call_id, result, data):
    frame = bytearray(fast.reply(call_id, [result, "tail"]) or wire.encode_reply(call_id, 0)[0])
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if action == "flip" and frame:
            i = data.draw(st.integers(0, len(frame) - 1))
            frame[i] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del frame[data.draw(st.integers(0, len(frame))):]
        else:
            frame += data.draw(st.binary(max_size=8))
    kind, cid, status, value, _, whole = fast.decode(bytes(frame))
    if whole:
        head, body = wire_read(bytes(frame))
        assert (head.kind, head.id, head.status) == (kind, cid, status)
        assert msgpack.packb(body) == msgpack.packb(value)   # (bytes, not ==: a flip makes NaNs)
    if kind == -1:
        return
    try:
        head = wire.decode_header(bytes(frame))
    except Exception:
        return                             # wire.py refuses it: the general path says so
    assert (head.kind, head.id) == (kind, cid)

"""The RPC wire format, with bytes alone: frames, out-of-band buffers, limits."""
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rdmamsg import ProtocolError
from rdmamsg.rpc import wire


def transfer(frame: bytes, buffers: list, max_payload: int = wire.MAX_PAYLOAD):
    """What the receiving side makes of a frame and its buffers (as link.py
    does, with copies standing in for the network)."""
    head = wire.decode_header(frame, max_payload)
    objects = []
    for spec, data in zip(head.specs, buffers, strict=True):
        obj, into = wire.allocate(spec)
        if into is None:
            obj = bytes(data)
        else:
            into[:] = data
        objects.append(obj)
    return head, wire.decode_body(head, objects)


def test_a_request_round_trips_with_inline_and_out_of_band_values():
    big = bytes(range(256)) * 512                     # 128 KiB: out of band
    arr = np.arange(40000, dtype=np.float64).reshape(200, 200)
    small = np.array([[1, 2], [3, 4]], dtype=np.int16)
    args = (1, "two", b"three", bytearray(b"four"), memoryview(b"five"), big, arr, small,
            [bytearray(big), {"k": memoryview(big)}], None, 2.5)
    frame, buffers = wire.encode_request(7, "echo", args, {"x": big}, timeout=1.5)
    assert [b.nbytes for b in buffers] == [len(big), arr.nbytes, len(big), len(big), len(big)]
    assert len(frame) < 1000                          # the big values are not in it
    head, body = transfer(frame, buffers)
    assert (head.kind, head.id, head.method, head.timeout) == (wire.REQUEST, 7, "echo", 1.5)
    got, kwargs = wire.request_parts(head, body)
    assert got[:3] == [1, "two", b"three"]
    assert type(got[3]) is bytearray and got[3] == b"four"
    assert type(got[4]) is memoryview and got[4] == b"five"
    assert type(got[5]) is bytes and got[5] == big
    assert got[6].dtype == arr.dtype and got[6].shape == arr.shape and (got[6] == arr).all()
    assert got[7].dtype == small.dtype and (got[7] == small).all() and got[7].flags.writeable
    assert type(got[8][0]) is bytearray and type(got[8][1]["k"]) is memoryview
    assert got[9:] == [None, 2.5]
    assert kwargs == {"x": big}


def test_buffers_are_sent_from_the_callers_memory():
    big = bytearray(1 << 20)
    arr = np.zeros(1 << 18, dtype=np.uint32)
    _, buffers = wire.encode_request(1, "f", (big, arr), {}, None)
    assert buffers[0].obj is big
    assert np.shares_memory(np.frombuffer(buffers[1], dtype=np.uint32), arr)


def test_replies_and_errors():
    frame, buffers = wire.encode_reply(3, {"a": [1, 2]})
    head, body = transfer(frame, buffers)
    assert (head.kind, head.status, body) == (wire.REPLY, wire.OK, {"a": [1, 2]})
    head, body = transfer(wire.encode_error(4, "builtins.ValueError", "bad", "tb"), [])
    assert head.status == wire.ERROR
    assert wire.error_parts(body) == ("builtins.ValueError", "bad", "tb")
    for frame in (wire.encode_cancel(9), wire.encode_ping()):
        assert wire.decode_header(frame).kind in (wire.CANCEL, wire.PING)


def test_values_that_cannot_be_sent_are_a_type_error():
    with pytest.raises(TypeError, match="cannot send"):
        wire.encode_request(1, "f", (object(),), {}, None)
    with pytest.raises(TypeError, match="Python objects"):
        wire.encode_request(1, "f", (np.array([object()]),), {}, None)
    with pytest.raises(TypeError, match="contiguous"):
        wire.encode_request(1, "f", (memoryview(bytearray(100))[::2],), {}, None)


def test_sizes_are_checked_before_anything_is_allocated():
    frame, _ = wire.encode_request(1, "f", (bytes(1 << 20),), {}, None)
    with pytest.raises(ProtocolError, match="max_payload"):
        wire.decode_header(frame, max_payload=1 << 19)
    lie = msgpack.packb([wire.REQUEST, 1, "f", None, [[wire.T_BYTES, 1 << 62, None, None]]])
    with pytest.raises(ProtocolError, match="max_payload"):
        wire.decode_header(lie)
    arr = msgpack.packb([wire.REQUEST, 1, "f", None, [[wire.T_NDARRAY, 8, "<f8", [1 << 40]]]])
    with pytest.raises(ProtocolError, match="announced as 8 bytes"):
        wire.decode_header(arr)
    many = msgpack.packb([wire.REQUEST, 1, "f", None, [[0, 1, None, None]] * (wire.MAX_BUFFERS + 1)])
    with pytest.raises(ProtocolError, match="buffers"):
        wire.decode_header(many)


@pytest.mark.parametrize("frame", [
    b"", b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([9, 1, None, None, []]),
    msgpack.packb([wire.REQUEST, -1, "f", None, []]),
    msgpack.packb([wire.REQUEST, 1, 5, None, []]),
    msgpack.packb([wire.REPLY, 1, 7, None, []]),
    msgpack.packb([wire.REPLY, 7, 0, {}, []]),          # found by tests/fuzz/fuzz_rpc_wire.py
    msgpack.packb([wire.PING, 7, None, -5, []]),
    msgpack.packb([wire.REQUEST, 1, "f", None, [[wire.T_NDARRAY, 0, "f8", [0, 1 << 62]]]]),
    msgpack.packb([wire.REQUEST, 1, "f", None, [[wire.T_NDARRAY, 0, "S0", [2, 2]]]]),
    msgpack.packb([wire.REQUEST, 1, "f", None, [[wire.T_NDARRAY, 16, "(2,)f8", [1]]]]),
    msgpack.packb([wire.REQUEST, 1, "f", None, [[wire.T_NDARRAY, 8, "O", [1]]]]),
    msgpack.packb([wire.REQUEST, 1, "f", None, [[wire.T_NDARRAY, 8, "nonsense", [1]]]]),
])
def test_malformed_headers_are_protocol_errors(frame):
    with pytest.raises(ProtocolError):
        wire.decode_header(frame)


def test_malformed_bodies_are_protocol_errors():
    head = msgpack.packb([wire.REQUEST, 1, "f", None, []])
    for body in (b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb([[], {1: 2}]),
                 msgpack.packb([[msgpack.ExtType(wire.EXT_REF, b"\0\0\0\0")], {}]),
                 msgpack.packb([[msgpack.ExtType(99, b"")], {}]),
                 msgpack.packb([[msgpack.ExtType(wire.EXT_NDARRAY, b"\x93")], {}])):
        with pytest.raises(ProtocolError):
            h = wire.decode_header(head + body)
            wire.request_parts(h, wire.decode_body(h, []))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_frames_never_raise_anything_but_protocol_error(data):
    try:
        head = wire.decode_header(data, max_payload=1 << 20)
        wire.decode_body(head, [None] * len(head.specs))
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text()
                    | st.binary(max_size=300) | st.floats(allow_nan=False),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=5), kids, max_size=4), max_leaves=20))
def test_any_msgpack_value_round_trips(value):
    frame, buffers = wire.encode_reply(1, value, inline_max=100)
    _, body = transfer(frame, buffers)
    assert body == value

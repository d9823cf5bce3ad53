"""Fragment planning, immediate data and reassembly, without a device."""
import pytest
from hypothesis import given, strategies as st

from rdmamsg.errors import ProtocolError
from rdmamsg.protocol import frames
from rdmamsg.protocol.frames import (CLOSE, CREDIT, FIRST, FIRST_LONG, LAST, MIDDLE, WHOLE,
                                     Reassembler)


@given(st.integers(0, FIRST_LONG), st.integers(0, frames.MAX_CREDITS))
def test_imm_roundtrip(kind, credits):
    imm = frames.pack_imm(kind, credits)
    assert frames.unpack_imm(imm) == (kind, credits)
    assert imm == (credits << frames.KIND_BITS) | kind


@pytest.mark.parametrize("kind,credits", [(-1, 0), (FIRST_LONG + 1, 0), (0, -1),
                                          (0, frames.MAX_CREDITS + 1)])
def test_imm_rejects_out_of_range(kind, credits):
    with pytest.raises(ValueError):
        frames.pack_imm(kind, credits)


def test_unknown_kind_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="unknown fragment kind"):
        frames.unpack_imm(0xF)


def _build(length, fragment, long_first=False):
    """The wire form of a message: (kind, payload, immediate value) per fragment."""
    data = bytes(i % 251 for i in range(length))
    wire = []
    for kind, off, n in frames.plan(length, fragment, long_first=long_first):
        body = data[off:off + n]
        if kind == FIRST_LONG:
            body = frames.FIRST_HEADER.pack(length) + body
        assert len(body) <= fragment
        wire.append((kind, body, length if kind == FIRST else 0))
    return data, wire


@pytest.mark.parametrize("long", [False, True])
@given(length=st.integers(0, 5000), fragment=st.sampled_from([16, 64, 100, 1024]))
def test_plan_reassembles_exactly(long, length, fragment):
    data, wire = _build(length, fragment, long_first=long)   # long: FIRST_LONG, always
    kinds = [k for k, _, _ in wire]
    if length <= fragment:
        assert kinds == [WHOLE]
    else:
        assert kinds[0] == (FIRST_LONG if long else FIRST) and kinds[-1] == LAST
        assert set(kinds[1:-1]) <= {MIDDLE}
        if not long:   # full buffers: a multiple of the fragment size needs no extra piece
            assert len(kinds) == -(-length // fragment)
    r = Reassembler(max_message=10_000, fragment=fragment)
    out = [r.feed(k, b, v) for k, b, v in wire]
    assert out[-1] == data and all(o is None for o in out[:-1])
    assert not r.in_progress


def test_first_returns_no_credits():
    assert not frames.returns_credits(FIRST)
    assert all(frames.returns_credits(k) for k in (WHOLE, MIDDLE, LAST, CREDIT, CLOSE, FIRST_LONG))


def test_plan_rejects_tiny_fragments():
    with pytest.raises(ValueError):
        list(frames.plan(100, 8))


def _long(total, payload=b"x"):
    return frames.FIRST_HEADER.pack(total) + payload


@pytest.mark.parametrize("steps,match", [
    ([(MIDDLE, b"x", 0)], "cannot start"),
    ([(LAST, b"x", 0)], "cannot start"),
    ([(FIRST_LONG, b"1234", 0)], "no length"),
    ([(FIRST_LONG, _long(10_001), 0)], "limit"),
    ([(FIRST, b"x", 10_001)], "limit"),
    ([(FIRST_LONG, _long(1), 0)], "carries"),
    ([(FIRST, b"xy", 2)], "carries"),
    ([(FIRST, b"x", 5), (WHOLE, b"x", 0)], "inside an unfinished"),
    ([(FIRST, b"x", 5), (FIRST_LONG, _long(5), 0)], "inside an unfinished"),
    ([(FIRST, b"x", 3), (MIDDLE, b"xyz", 0)], "overrun"),
    ([(FIRST, b"x", 5), (LAST, b"x", 0)], "ended at"),
    ([(WHOLE, b"y" * 65, 0)], "exceeds"),
])
def test_reassembler_refuses_what_a_peer_cannot_send(steps, match):
    r = Reassembler(max_message=10_000, fragment=64)
    with pytest.raises(ProtocolError, match=match):
        for kind, body, value in steps:
            r.feed(kind, body, value)


@given(st.lists(st.tuples(st.sampled_from([WHOLE, FIRST, MIDDLE, LAST, FIRST_LONG]),
                          st.binary(max_size=80), st.integers(0, 3000)), max_size=20))
def test_reassembler_only_ever_raises_protocol_error(steps):
    r = Reassembler(max_message=1000, fragment=64)
    try:
        for kind, body, value in steps:
            r.feed(kind, body, value)
    except ProtocolError:
        pass

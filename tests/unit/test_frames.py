"""Fragment planning, immediate data and reassembly, without a device."""
import pytest
from hypothesis import given, strategies as st

from rdmamsg.errors import ProtocolError
from rdmamsg.protocol import frames
from rdmamsg.protocol.frames import CLOSE, CREDIT, FIRST, LAST, MIDDLE, WHOLE, Reassembler

cpoller = pytest.importorskip("rdmamsg.transport._cpoller")


@given(st.integers(0, CLOSE), st.integers(0, frames.MAX_CREDITS))
def test_imm_roundtrip_and_matches_c(kind, credits):
    imm = frames.pack_imm(kind, credits)
    assert frames.unpack_imm(imm) == (kind, credits)
    assert cpoller.pack_imm(kind, credits) == imm


@pytest.mark.parametrize("kind,credits", [(-1, 0), (CLOSE + 1, 0), (0, -1), (0, frames.MAX_CREDITS + 1)])
def test_imm_rejects_out_of_range(kind, credits):
    with pytest.raises(ValueError):
        frames.pack_imm(kind, credits)


def test_unknown_kind_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="unknown fragment kind"):
        frames.unpack_imm(0xF)


def _build(length, fragment):
    data = bytes(i % 251 for i in range(length))
    wire = []
    for kind, off, n in frames.plan(length, fragment):
        body = data[off:off + n]
        if kind == FIRST:
            body = frames.FIRST_HEADER.pack(length) + body
        assert len(body) <= fragment
        wire.append((kind, body))
    return data, wire


@given(st.integers(0, 5000), st.sampled_from([16, 64, 100, 1024]))
def test_plan_reassembles_exactly(length, fragment):
    data, wire = _build(length, fragment)
    kinds = [k for k, _ in wire]
    if length <= fragment:
        assert kinds == [WHOLE]
    else:
        assert kinds[0] == FIRST and kinds[-1] == LAST and set(kinds[1:-1]) <= {MIDDLE}
    r = Reassembler(max_message=10_000, fragment=fragment)
    out = [r.feed(k, b) for k, b in wire]
    assert out[-1] == data and all(o is None for o in out[:-1])
    assert not r.in_progress


def test_plan_rejects_tiny_fragments():
    with pytest.raises(ValueError):
        list(frames.plan(100, 8))


def _first(total, payload=b"x"):
    return frames.FIRST_HEADER.pack(total) + payload


@pytest.mark.parametrize("steps,match", [
    ([(MIDDLE, b"x")], "cannot start"),
    ([(LAST, b"x")], "cannot start"),
    ([(FIRST, b"1234")], "no length header"),
    ([(FIRST, _first(10_001))], "limit"),
    ([(FIRST, _first(1))], "carries"),
    ([(FIRST, _first(5)), (WHOLE, b"x")], "inside an unfinished"),
    ([(FIRST, _first(5)), (FIRST, _first(5))], "inside an unfinished"),
    ([(FIRST, _first(3)), (MIDDLE, b"xyz")], "overrun"),
    ([(FIRST, _first(5)), (LAST, b"x")], "ended at"),
    ([(WHOLE, b"y" * 65)], "exceeds"),
])
def test_reassembler_refuses_what_a_peer_cannot_send(steps, match):
    r = Reassembler(max_message=10_000, fragment=64)
    with pytest.raises(ProtocolError, match=match):
        for kind, body in steps:
            r.feed(kind, body)


@given(st.lists(st.tuples(st.integers(0, CREDIT - 1), st.binary(max_size=80)), max_size=20))
def test_reassembler_only_ever_raises_protocol_error(steps):
    r = Reassembler(max_message=1000, fragment=64)
    try:
        for kind, body in steps:
            r.feed(kind, body)
    except ProtocolError:
        pass

"""What a hostile peer can send, without a device: size claims are refused
before anything is allocated, and the ring rules and descriptor checks only
ever refuse with their documented errors (hypothesis; tests/fuzz runs the
same decoders under atheris)."""
import struct
import tracemalloc

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from rdmamsg.channel.remote import RemoteBuffer
from rdmamsg.errors import ProtocolError
from rdmamsg.protocol import _core, frames, handshake as hs, ring
from rdmamsg.rpc import wire


def _peak_while(fn) -> int:
    """The most memory Python allocated while ``fn()`` ran (it must raise
    ProtocolError)."""
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("claim", [hs.MAX_FRAME + 1, 1 << 31, (1 << 32) - 1])
def test_a_handshake_frame_claiming_too_much_is_refused_before_it_is_read(claim):
    dec = hs.FrameDecoder()
    assert _peak_while(lambda: dec.feed(claim.to_bytes(4, "big") + b"x" * 10)) < 64 << 10


@pytest.mark.parametrize("kind,payload,value", [
    (frames.FIRST, b"x" * 64, frames.MAX_IMM_LENGTH),
    (frames.FIRST_LONG, (1 << 62).to_bytes(8, "little") + b"x" * 56, 0),
    (frames.FIRST_LONG, (1 << 30).to_bytes(8, "little") + b"x" * 56, 0),
])
def test_a_message_announced_above_max_message_allocates_nothing(kind, payload, value):
    r = frames.Reassembler(max_message=1 << 20, fragment=64)
    assert _peak_while(lambda: r.feed(kind, payload, value)) < 64 << 10


@pytest.mark.parametrize("specs", [
    [[wire.T_BYTEARRAY, 1 << 40, None, None]],
    [[wire.T_BYTEARRAY, 600 << 20, None, None], [wire.T_BYTES, 600 << 20, None, None]],
    [[wire.T_NDARRAY, 8 << 30, "f8", [1 << 30]]],
    [[wire.T_BYTES, 1, None, None]] * (wire.MAX_BUFFERS + 1),
])
def test_rpc_payloads_announced_above_max_payload_allocate_nothing(specs):
    frame = msgpack.packb([wire.REQUEST, 1, "f", None, specs]) + msgpack.packb([[], {}])
    assert _peak_while(lambda: wire.decode_header(frame, 1 << 30)) < 1 << 20


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, (1 << 32) - 1), st.integers(0, 1100),
                          st.integers(0, 15)), max_size=60))
def test_ring_writes_a_peer_claims_are_refused_or_land_inside_free_space(steps):
    cells, cell = 16, 64
    rx = ring.RingReceiver(cells, cell)
    live: dict[int, tuple[int, int]] = {}
    for write, imm, nbytes, pick in steps:
        if write or not live:
            try:
                kind, offset, ncells = ring.unpack_imm(imm)
                entry, at = rx.accept(kind, offset, ncells, nbytes)
            except ProtocolError:
                return                            # the peer is dropped
            assert 0 <= at and at + nbytes <= cells * cell
            for o_at, o_len in live.values():
                assert at + nbytes <= o_at or o_at + o_len <= at or not nbytes or not o_len
            live[entry] = (at, nbytes)
        else:
            entry = sorted(live)[pick % len(live)]
            del live[entry]
            rx.release(entry)
        assert rx.tail - rx.head <= cells


GRANT_LEN = _core.NUMBERS["GRANT_LEN"]


@given(st.binary(min_size=GRANT_LEN, max_size=GRANT_LEN), st.integers(1, 2),
       st.integers(-1, 1 << 65), st.integers(-1, 1 << 65))
def test_a_descriptor_from_a_peer_is_refused_or_bounds_what_it_allows(raw, need, offset, length):
    raw = b"RMG1" + raw[4:] if raw[0] % 2 else raw
    try:
        rb = RemoteBuffer._from_bytes(raw)
    except ValueError:
        return
    try:
        rb.check(need, offset, length)
    except (ValueError, PermissionError):
        return
    assert 0 <= offset and 0 <= length and offset + length <= rb.length and rb.access & need


@given(st.integers(1, 3), st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1),
       st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 32) - 1))
def test_a_descriptor_round_trips_in_its_documented_layout(access, addr, length, rkey, gid):
    raw = _core.pack_grant(access, addr, length, rkey, gid)
    assert raw == struct.pack("<4sBxxxQQII", b"RMG1", access, addr, length, rkey, gid)
    assert _core.parse_grant(raw) == (access, addr, length, rkey, gid)

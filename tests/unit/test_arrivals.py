"""What a receive completion means (the core's Arrivals), driven without a
device: the rule both engines now run for every receive."""
import pytest

from rdmamsg.errors import ProtocolError
from rdmamsg.protocol import frames, ring
from rdmamsg.protocol._core import PEER_CLOSED, QUEUED, REPOST, Arrivals
from rdmamsg.protocol.credits import CreditWindow


def _send_channel(depth=8):
    cw = CreditWindow(depth)
    return Arrivals(depth, cw), cw


def test_data_is_queued_in_order_and_counted_when_its_message_is_whole():
    arr, _ = _send_channel()
    assert arr.arrived(3, False, 100, frames.pack_imm(frames.FIRST, 300)) == QUEUED
    assert arr.arrived(5, False, 200, frames.pack_imm(frames.LAST, 0)) == QUEUED
    assert arr.arrived(1, False, 7, frames.pack_imm(frames.WHOLE, 0)) == QUEUED
    assert (len(arr), arr.whole) == (3, 2)
    assert arr.head() == (3, 100, frames.FIRST, 300)
    arr.pop()
    assert arr.head() == (5, 200, frames.LAST, 0)
    arr.pop()
    arr.delivered()
    assert (len(arr), arr.whole) == (1, 1)
    arr.pop()
    assert arr.head() is None
    with pytest.raises(IndexError):
        arr.pop()


def test_controls_free_their_buffer_and_return_credits():
    arr, cw = _send_channel()
    for _ in range(3):
        cw.spend()
    assert arr.arrived(2, False, 0, frames.pack_imm(frames.CREDIT, 3)) == REPOST
    assert cw.credits == 8
    assert arr.arrived(4, False, 0, frames.pack_imm(frames.CLOSE, 0)) == REPOST | PEER_CLOSED
    assert len(arr) == 0


@pytest.mark.parametrize("slot,nbytes,imm,says", [
    (0, 5, frames.pack_imm(frames.CREDIT, 0), "came as a control"),
    (0, 0, frames.pack_imm(frames.WHOLE, 9), "more than it could owe"),
    (0, 0, 15, "unknown fragment kind 15"),
])
def test_a_broken_rule_is_refused_and_changes_nothing(slot, nbytes, imm, says):
    arr, cw = _send_channel()
    before = (cw.credits, cw.unreturned)
    with pytest.raises(ProtocolError, match=says):
        arr.arrived(slot, False, nbytes, imm)
    assert (len(arr), arr.whole, cw.credits, cw.unreturned) == (0, 0) + before


def test_a_credit_update_is_due_past_the_threshold():
    arr, cw = _send_channel()
    assert arr.update_due() is None
    cw.reposted(cw.threshold)
    assert arr.update_due() == 0            # its credits are counted when it is sent


def _write_channel(cells=16, cell=64):
    tx, rx = ring.RingSender(cells, cell), ring.RingReceiver(cells, cell)
    return Arrivals(cells + ring.RESERVED_RECEIVES, sender=tx, receiver=rx), tx, rx


def test_a_ring_write_is_queued_at_its_offset_and_its_receive_reposted():
    arr, _, rx = _write_channel()
    peer = ring.RingSender(16, 64)           # the writer's view of our ring
    offset, ncells = peer.place(130)
    imm = ring.pack_imm(frames.WHOLE, offset, ncells)
    assert arr.arrived(6, True, 130, imm) == QUEUED | REPOST
    entry, length, kind, at = arr.head()
    assert (length, kind, at, arr.whole) == (130, frames.WHOLE, offset * 64, 1)
    rx.release(entry)
    assert rx.unreported == ncells


def test_a_ring_write_out_of_place_is_refused():
    arr, _, _ = _write_channel()
    with pytest.raises(ProtocolError, match="next free cell is 0"):
        arr.arrived(0, True, 64, ring.pack_imm(frames.WHOLE, 3, 1))
    assert len(arr) == 0


def test_ring_controls_report_freed_cells_and_close():
    arr, tx, _ = _write_channel()
    tx.place(64 * 3)
    credit = frames.CREDIT | (3 << frames.KIND_BITS)
    assert arr.arrived(0, False, 0, credit) == REPOST
    assert tx.free == 16
    with pytest.raises(ProtocolError, match="more than are in use"):
        arr.arrived(0, False, 0, credit)
    with pytest.raises(ProtocolError, match="came as a control"):
        arr.arrived(0, False, 0, frames.WHOLE)
    assert arr.arrived(1, False, 0, frames.CLOSE) == REPOST | PEER_CLOSED


def test_a_ring_report_is_due_once_half_the_ring_is_released():
    arr, _, rx = _write_channel()
    peer = ring.RingSender(16, 64)
    for _ in range(8):
        offset, ncells = peer.place(64)
        arr.arrived(0, True, 64, ring.pack_imm(frames.WHOLE, offset, ncells))
        rx.release(arr.head()[0])
        arr.pop()
    assert arr.update_due() == 8
    assert arr.update_due() is None          # reported: owed no more


def test_it_needs_credits_or_a_ring():
    with pytest.raises(ValueError):
        Arrivals(8)
    with pytest.raises(ValueError):
        Arrivals(8, CreditWindow(8), ring.RingSender(16, 64), ring.RingReceiver(16, 64))

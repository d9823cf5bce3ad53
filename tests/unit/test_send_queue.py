"""Post numbers, send buffers and signalling (the core's SendQueue), and a
send's immediate, driven without a device: both engines post through them."""
import pytest

from rdmamsg.protocol import frames
from rdmamsg.protocol._core import SendQueue, send_imm
from rdmamsg.protocol.credits import CreditWindow


def test_a_completion_frees_every_buffer_up_to_its_post():
    sq = SendQueue(16, 4)
    slots = [sq.take() for _ in range(3)]
    assert sorted(slots) == [1, 2, 3] and sq.free == 1
    ids = [sq.post(slot, frames.WHOLE)[0] for slot in slots]
    assert ids == [0, 1, 2] and sq.post(-1, frames.CREDIT)[0] == 3
    sq.completed(1)
    assert (sq.done, sq.free) == (2, 3)
    sq.completed(0)                              # already done: nothing changes
    sq.completed(9)                              # never posted: nothing changes
    assert (sq.done, sq.free) == (2, 3)
    sq.completed(3)
    assert (sq.done, sq.next, sq.free) == (4, 4, 4)


def test_one_post_in_a_quarter_of_the_buffers_is_signaled_and_every_close():
    sq = SendQueue(64, 16)                       # every 4th
    signaled = [sq.post(-1, frames.WHOLE)[1] for _ in range(8)]
    assert signaled == [False, False, False, True] * 2
    assert sq.post(-1, frames.CLOSE)[1] and sq.post(-1, frames.WHOLE, signal=True)[1]


def test_the_queue_depth_bounds_posts_in_flight():
    sq = SendQueue(2, 1)
    sq.post(-1, frames.WHOLE)
    sq.post(-1, frames.WHOLE)
    assert not sq.room()
    with pytest.raises(RuntimeError):
        sq.post(-1, frames.WHOLE)
    sq.completed(0)
    assert sq.room()


def test_bad_buffers_are_refused():
    sq = SendQueue(4, 1)
    with pytest.raises(ValueError):
        sq.post(1, frames.WHOLE)
    sq.take()
    with pytest.raises(IndexError):
        sq.take()
    with pytest.raises(ValueError):
        SendQueue(0, 1)


def test_a_send_spends_a_credit_and_carries_back_what_we_owe():
    cw = CreditWindow(8)
    cw.reposted(3)
    assert frames.unpack_imm(send_imm(cw, frames.WHOLE)) == (frames.WHOLE, 3)
    assert (cw.credits, cw.unreturned) == (7, 0)
    cw.reposted(2)
    assert frames.unpack_imm(send_imm(cw, frames.FIRST, 1000)) == (frames.FIRST, 1000)
    assert (cw.credits, cw.unreturned) == (6, 2)   # FIRST carries the length instead
    assert frames.unpack_imm(send_imm(cw, frames.MIDDLE, 1 << 40)) == (frames.MIDDLE, 2)


def test_a_write_channel_control_carries_its_value_and_spends_nothing():
    assert frames.unpack_imm(send_imm(None, frames.CREDIT, 12)) == (frames.CREDIT, 12)
    with pytest.raises(ValueError):
        send_imm(None, frames.CREDIT, 1 << 28)
    with pytest.raises(ValueError):
        send_imm(None, 9)


def test_no_credit_no_send():
    cw = CreditWindow(4)
    for _ in range(4):
        send_imm(cw, frames.WHOLE)
    with pytest.raises(RuntimeError):
        send_imm(cw, frames.WHOLE)


def test_posts_that_never_reached_the_device_are_forgotten():
    sq = SendQueue(16, 2)
    a, b = sq.take(), sq.take()
    sq.post(a, frames.WHOLE)
    sq.post(b, frames.WHOLE)
    sq.post(-1, frames.CREDIT)
    sq.unpost(2)                                 # the last two failed to post
    assert (sq.next, sq.free) == (1, 1)
    sq.completed(0)
    assert (sq.done, sq.free) == (1, 2)
    sq.unpost(5)                                 # nothing outstanding: nothing to forget
    assert (sq.next, sq.done, sq.free) == (1, 1, 2)

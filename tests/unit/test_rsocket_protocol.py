"""The rsockets wire rules (rdmamsg.protocol.rsocket), without a device."""
from __future__ import annotations

import random
import struct

import pytest

from rdmamsg.errors import ProtocolError
from rdmamsg.protocol import rsocket as rs

RING = 1 << 17
DEPTH = 384


def conn(credits=DEPTH, half=RING // 2, entries=2, flags=0) -> rs.ConnData:
    return rs.ConnData(credits, rs.Sge(0x1000, 7, entries), rs.Sge(0x100000, 9, half), flags)


def test_conn_data_layout_matches_rsocket_c():
    raw = rs.ConnData(384, rs.Sge(0x1122334455667788, 0xAABBCCDD, 2),
                      rs.Sge(0x0102030405060708, 0x11223344, 65536), flags=0).pack()
    assert len(raw) == 40
    assert raw[0] == 1 and raw[1] == 0
    assert raw[2:4] == struct.pack(">H", 384)
    assert raw[4:7] == b"\0\0\0" and raw[7] == 0
    assert raw[8:16] == struct.pack(">Q", 0x1122334455667788)
    assert raw[16:20] == struct.pack(">I", 0xAABBCCDD)
    assert raw[20:24] == struct.pack(">I", 2)
    assert raw[24:32] == struct.pack(">Q", 0x0102030405060708)
    assert raw[36:40] == struct.pack(">I", 65536)


def test_conn_data_round_trip_ignores_rdma_cm_padding():
    c = conn(flags=rs.FLAG_IOMAP)
    assert rs.ConnData.unpack(c.pack() + bytes(16)) == c


@pytest.mark.parametrize("mutate, why", [
    (lambda b: b[:39], "bytes"),
    (lambda b: b"\x02" + b[1:], "version"),
    (lambda b: b[:20] + bytes(4) + b[24:], "entries"),
    (lambda b: b[:2] + bytes(2) + b[4:], "credits"),
    (lambda b: b[:36] + bytes(4), "empty"),
])
def test_conn_data_refuses_what_we_cannot_talk_to(mutate, why):
    with pytest.raises(ProtocolError, match=why):
        rs.ConnData.unpack(mutate(conn().pack()))


def test_imm_round_trip():
    assert rs.split_imm(rs.imm(rs.OP_SGL, 0x1234)) == (rs.OP_SGL, 0x1234)
    assert rs.imm(rs.OP_CTRL, rs.CTRL_SHUTDOWN) == (7 << 29) | 2
    assert rs.split_imm(rs.imm(rs.OP_DATA, 65536)) == (0, 65536)


def test_write_sizes_start_small_and_double():
    left, step, sizes = 300_000, rs.FIRST_TRANSFER, []
    while left:
        n, step = rs.write_size(left, 1 << 20, step)
        sizes.append(n)
        left -= n
    assert sizes[:6] == [2048, 4096, 8192, 16384, 32768, 65536]
    assert max(sizes) == rs.MAX_TRANSFER
    assert rs.write_size(100, 1 << 20, rs.FIRST_TRANSFER) == (100, rs.FIRST_TRANSFER)
    assert rs.write_size(5000, 10, 4096)[0] == 10


def test_sender_fills_each_slot_then_waits_for_the_next():
    sgl = memoryview(bytearray(32))
    tx = rs.Sender(sgl, conn(half=4096))
    assert tx.room() == 4096
    assert tx.take(1000) == (0x100000, 9)
    assert tx.take(3096) == (0x100000 + 1000, 9)
    assert tx.room() == 0                    # entry 1 not lent yet
    struct.pack_into("<QII", sgl, 16, 0x200000, 10, 4096)   # the peer lends entry 1
    assert tx.room() == 4096 and tx.take(4096) == (0x200000, 10)
    assert tx.entry == 0 and tx.room() == 0


def test_sender_stops_at_its_credits():
    tx = rs.Sender(memoryview(bytearray(32)), conn(credits=2))
    tx.take(1)
    tx.take(1)
    assert tx.room() == 0
    tx.credits(2 + 2)                        # the peer read both
    assert tx.room() > 0


@pytest.mark.parametrize("value", [1, 0xFFFF, 2 + DEPTH + 1])
def test_sender_refuses_credits_from_the_past_or_beyond_the_depth(value):
    tx = rs.Sender(memoryview(bytearray(32)), conn())
    tx.take(1)
    tx.take(1)
    tx.credits(2 + DEPTH)                    # rseq 2 + depth: fine
    with pytest.raises(ProtocolError, match="past"):
        tx.credits(value)


def test_sender_refuses_a_slot_longer_than_the_first():
    sgl = memoryview(bytearray(32))
    tx = rs.Sender(sgl, conn(half=4096))
    tx.take(4096)
    struct.pack_into("<QII", sgl, 16, 0x200000, 10, 1 << 20)
    with pytest.raises(ProtocolError, match="slot"):
        tx.room()


def receiver(**kw) -> rs.Receiver:
    return rs.Receiver(0x500000, 77, RING, DEPTH, conn(**kw))


def test_receiver_refuses_writes_outside_the_lent_slot():
    rx = receiver()
    rx.on_data(RING // 2 - 10)
    with pytest.raises(ProtocolError, match="slot"):
        rx.on_data(11)                       # would cross into the half not lent


def test_receiver_refuses_more_messages_than_credits():
    rx = receiver()
    for _ in range(DEPTH):
        rx.on_data(1)
    with pytest.raises(ProtocolError, match="credits"):
        rx.on_data(1)


def test_receiver_lends_its_halves_in_turn_in_the_peers_byte_order():
    rx = receiver(flags=rs.FLAG_NET)         # a big-endian peer
    assert rx.update_due()                   # the second half is free from the start
    value, entry, index = rx.make_update()
    assert rs.split_imm(value) == (rs.OP_SGL, DEPTH)
    assert (entry, index) == (struct.pack(">QII", 0x500000 + RING // 2, 77, RING // 2), 1)
    rx.ctrl_done()
    assert not rx.update_due()
    rx.on_data(RING // 2)
    off, n = rx.peek()
    assert (off, n) == (0, RING // 2)
    rx.consume(n)
    assert rx.update_due()
    value, entry, index = rx.make_update()
    assert rs.split_imm(value) == (rs.OP_SGL, 1 + DEPTH)
    assert (entry, index) == (struct.pack(">QII", 0x500000, 77, RING // 2), 0)


def test_receiver_sends_credits_alone_when_half_the_depth_is_read():
    rx = receiver()
    rx.make_update()
    rx.ctrl_done()
    for _ in range(DEPTH // 2):
        rx.on_data(1)
        rx.consume(1)
    assert rx.update_due()
    value, entry, _ = rx.make_update()
    assert entry is None and rs.split_imm(value) == (rs.OP_SGL, DEPTH // 2 + DEPTH)


def test_control_messages_are_bounded():
    rx = receiver()
    for _ in range(DEPTH // 2):
        rx.on_data(1)
        rx.consume(1)
    for _ in range(rs.CTRL_SLOTS):
        rx.ctrl_in_flight += 1
    assert not rx.update_due()


@pytest.mark.parametrize("seed", range(20))
def test_a_stream_through_sender_and_receiver_arrives_in_order(seed):
    """Both sides' rules together: random sends, the receiver reading at
    random, its updates written into the sender's SGL as the peer would."""
    rnd = random.Random(seed)
    half = rnd.choice([4096, 8192, 65536])
    ring = bytearray(2 * half)
    rx = rs.Receiver(0, 1, 2 * half, 16, conn(credits=16, half=half))
    sgl = memoryview(bytearray(32))
    tx = rs.Sender(sgl, rs.ConnData(16, rs.Sge(0, 0, 2), rs.Sge(0, 1, half)))
    sent = bytearray(rnd.randbytes(200_000))
    out, at, step = bytearray(), 0, rs.FIRST_TRANSFER
    while len(out) < len(sent):
        room = tx.room()
        if at < len(sent) and room and rnd.random() < 0.7:
            n, step = rs.write_size(len(sent) - at, room, step)
            addr, _ = tx.take(n)
            ring[addr:addr + n] = sent[at:at + n]
            rx.on_data(n)
            at += n
        elif rx.messages:
            off, n = rx.peek()
            n = rnd.randint(1, n)
            out += ring[off:off + n]
            rx.consume(n)
        while rx.update_due():
            value, entry, index = rx.make_update()
            if entry is not None:
                sgl[index * 16:index * 16 + 16] = entry
            tx.credits(rs.split_imm(value)[1])
            rx.ctrl_done()
            if entry is None:
                break
    assert out == sent

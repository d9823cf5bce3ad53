"""The write channel on the device: RDMA writes into the peer's ring (runs once per poller).

100k messages in order run on both channels in test_endpoint.py."""
import os
import random

import numpy as np
import pytest

from rdmamsg.errors import ProtocolError
from rdmamsg.protocol import frames, ring
from rdmamsg.verbs import _pyverbs as pv
from support.peers import counter, echo, endpoint_pair, run_in_thread
from support.rogue import post_behind

IP = os.environ.get("RDMAMSG_SELF", "")
SIZES = [0, 1, 63, 64, 65, 4095, 4096, 4097, 32768, 32769, 65536, 500_000, 524_288, 524_289,
         1 << 20, (2 << 20) + 7, 16 << 20]
SMALL_RING = {"channel": "write", "ring_size": 64 << 10, "ring_cells": 16}   # 4 KiB cells


@pytest.fixture
def pair():
    with endpoint_pair(IP, channel="write") as p:
        yield p


def test_integrity_across_sizes_both_ways(pair):
    c, s = pair
    assert c._parts.ring is not None and s._parts.ring is not None
    assert not c._parts.recv_bufs and not s._parts.recv_bufs      # no posted buffers
    srv = run_in_thread(echo, s, len(SIZES))
    for n in SIZES:                        # up to 8 times the ring
        data = os.urandom(n)
        c.send(data)
        assert c.recv(timeout=60) == data, n
    srv.result()


def test_random_sizes_wrap_the_ring_many_times():
    rng = random.Random(11)
    sizes = [rng.choice([rng.randrange(0, 300), rng.randrange(0, 20000), rng.randrange(0, 70000)])
             for _ in range(3000)]
    with endpoint_pair(IP, **SMALL_RING) as (c, s):
        def receive():
            for i, n in enumerate(sizes):
                if i % 3:
                    assert s.recv(timeout=60) == counter(i, n), i
                else:
                    buf = bytearray(n)
                    assert s.recv_into(buf, timeout=60) == n and buf == counter(i, n), i
        rx = run_in_thread(receive)
        for i, n in enumerate(sizes):
            c.send(counter(i, n), timeout=60)
        rx.result()
        tx_free, owed = c._engine.credit_state
        assert 0 < tx_free <= 16 and owed < 8


def test_a_full_ring_holds_the_sender_back_until_the_receiver_releases():
    with endpoint_pair(IP, **SMALL_RING) as (c, s):
        sent = 0
        with pytest.raises(TimeoutError):
            while True:                                  # 16 cells of 4 KiB
                c.send(counter(sent, 4000), timeout=0.5)
                sent += 1
        assert sent == 16
        views = [s.recv_view(timeout=30) for _ in range(sent)]
        assert [bytes(v.data) for v in views] == [counter(i, 4000) for i in range(sent)]
        ring_mem = s._parts.ring
        for v in views:                                  # lent in place, from the ring
            addr = np.frombuffer(v.data, dtype=np.uint8).ctypes.data
            assert ring_mem.addr <= addr < ring_mem.addr + ring_mem.size
        with pytest.raises(TimeoutError):                # still held: still full
            c.send(b"x", timeout=0.5)
        for v in reversed(views[1:]):                    # released out of order: the head
            v.release()                                  # waits for the first
        with pytest.raises(TimeoutError):
            c.send(b"x", timeout=0.5)
        views[0].release()
        c.send(b"after", timeout=30)
        assert s.recv(timeout=30) == b"after"


def test_large_sends_go_from_the_callers_memory(pair):
    c, s = pair
    data = np.random.default_rng(5).integers(0, 255, 3 << 20, dtype=np.uint8)
    pool_before = c._parts.dctx.pool.stats()
    rx = run_in_thread(lambda: [s.recv(timeout=60) for _ in range(2)])
    c.send(data)
    c.send(data)
    assert rx.result() == [data.tobytes()] * 2
    assert c.stats()["zerocopy_sends"] == 2
    assert c._parts.dctx.regcache.stats()["hits"] >= 1
    assert c._parts.dctx.pool.stats().classes == pool_before.classes


def test_a_message_of_a_quarter_ring_is_lent_whole_without_a_copy(pair):
    c, s = pair
    data = os.urandom(512 << 10)                         # one write: a quarter of 2 MiB
    c.send(data)
    v = s.recv_view(timeout=30)
    addr = np.frombuffer(v.data, dtype=np.uint8).ctypes.data
    assert s._parts.ring.addr <= addr and v.data == data
    v.release()


def test_the_pool_and_the_qp_of_a_send_channel_are_not_remotely_writable():
    with endpoint_pair(IP) as (c, s):
        assert c._parts.ring is None
        assert c._parts.qp.access == pv.enums.IBV_ACCESS_LOCAL_WRITE


# -- a peer that breaks the rules ------------------------------------------------

def _rogue_write(ep, remote_addr: int, rkey: int, data: bytes, imm: int) -> None:
    """Post a WRITE_WITH_IMM on ``ep``'s QP behind its engine's back."""
    post_behind(ep, data, imm, (remote_addr, rkey))


@pytest.mark.parametrize("lie", ["offset", "length"])
def test_a_write_at_the_wrong_place_disconnects_with_protocol_error(lie):
    with endpoint_pair(IP, **SMALL_RING) as (c, s):
        c.send(b"fine")
        assert s.recv(timeout=30) == b"fine"
        peer = c._peer.extra["ring"]
        if lie == "offset":          # the next free cell is 1
            _rogue_write(c, peer["addr"] + 5 * 4096, peer["rkey"], b"x" * 10,
                         ring.pack_imm(frames.WHOLE, 5, 1))
        else:                        # 5000 bytes take two cells, not one
            _rogue_write(c, peer["addr"] + 4096, peer["rkey"], b"x" * 5000,
                         ring.pack_imm(frames.WHOLE, 1, 1))
        with pytest.raises(ProtocolError, match="cell"):
            s.recv(timeout=30)
        with pytest.raises(ConnectionError):
            c.recv(timeout=10)


def test_a_write_outside_the_ring_is_refused_by_the_device_and_touches_nothing():
    with endpoint_pair(IP, **SMALL_RING) as (c, s):
        peer = c._peer.extra["ring"]
        victim = s._parts.send_bufs[0]
        victim.view[:16] = b"untouched memory"
        _rogue_write(c, peer["addr"] + peer["size"] - 8, peer["rkey"], b"y" * 64,
                     ring.pack_imm(frames.WHOLE, 15, 1))
        _rogue_write(c, victim.addr, peer["rkey"], b"z" * 16, ring.pack_imm(frames.WHOLE, 0, 1))
        with pytest.raises(ConnectionError):
            c.recv(timeout=30)
        with pytest.raises(ConnectionError):
            s.recv(timeout=30)
        assert bytes(victim.view[:16]) == b"untouched memory"
        assert bytes(s._parts.ring.view[-8:]) == bytes(8)


def test_a_ring_key_works_only_through_its_own_connection():
    """Rings of all connections share the device context's PD; the window
    bound to each ring's QP keeps another connection's writes out."""
    with endpoint_pair(IP, **SMALL_RING) as (a, sa), endpoint_pair(IP, **SMALL_RING) as (b, sb):
        assert sa._parts.window is not None, "rxe binds type-2 windows"
        ring_of_sa = a._peer.extra["ring"]
        assert sa._parts.ring.mr.rkey != ring_of_sa["rkey"]     # the MR's own key is not given out
        _rogue_write(b, ring_of_sa["addr"], ring_of_sa["rkey"], b"intruder",
                     ring.pack_imm(frames.WHOLE, 0, 1))
        with pytest.raises(ConnectionError):
            b.recv(timeout=30)
        assert bytes(sa._parts.ring.view[:8]) == bytes(8)
        a.send(b"still mine")
        assert sa.recv(timeout=30) == b"still mine"
        sa.send(b"and back")
        assert a.recv(timeout=30) == b"and back"

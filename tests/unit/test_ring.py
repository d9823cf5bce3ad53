"""The write channel's ring rules, driven without a device."""
import random

import pytest

from rdmamsg.errors import ProtocolError
from rdmamsg.protocol import frames, ring


def test_imm_round_trip_and_limits():
    for kind in ring.DATA_KINDS:
        imm = ring.pack_imm(kind, 8191, 2048)
        assert imm < 1 << 32
        assert ring.unpack_imm(imm) == (kind, 8191, 2048)
    with pytest.raises(ValueError):
        ring.pack_imm(frames.CREDIT, 0, 1)
    with pytest.raises(ValueError):
        ring.pack_imm(frames.WHOLE, 0, 0)
    with pytest.raises(ProtocolError):
        ring.unpack_imm(frames.CLOSE)


@pytest.mark.parametrize("size,cells", [(1000, 16), (1024, 3), (1024, 32), (1 << 20, 1 << 14)])
def test_bad_geometry_is_refused(size, cells):
    with pytest.raises(ValueError):
        ring.check_geometry(size, cells)


def _transfer(tx, rx, nbytes):
    placed = tx.place(nbytes)
    if placed is None:
        return None
    offset, ncells = placed
    return rx.accept(frames.WHOLE, offset, ncells, nbytes) + (nbytes,)


def test_wrap_skips_the_end_and_comes_back_in_order():
    tx, rx = ring.RingSender(16, 64), ring.RingReceiver(16, 64)
    a = _transfer(tx, rx, 4 * 64)          # cells 0-3
    b = _transfer(tx, rx, 4 * 64)          # 4-7
    c = _transfer(tx, rx, 4 * 64)          # 8-11
    d = _transfer(tx, rx, 3 * 64)          # 12-14
    assert [x[1] for x in (a, b, c, d)] == [0, 256, 512, 768]
    assert tx.place(2 * 64) is None        # would wrap onto cells 0-1, still in use
    rx.release(b[0])
    assert rx.unreported == 0              # a is still held: the head cannot pass it
    rx.release(a[0])
    assert rx.unreported == 8 and rx.report_due()
    tx.freed(rx.reported())
    e = _transfer(tx, rx, 2 * 64)          # skips cell 15, lands at 0
    assert e[1] == 0 and tx.tail == 15 + 1 + 2
    for x in (c, d, e):
        rx.release(x[0])
    assert rx.reported() == 4 + 3 + 1 + 2 and rx.head == rx.tail


def test_random_traffic_never_overlaps_live_messages():
    rng = random.Random(7)
    tx, rx = ring.RingSender(64, 128), ring.RingReceiver(64, 128)
    live: dict[int, tuple[int, int]] = {}      # entry -> (byte offset, length)
    sent = 0
    for _ in range(20000):
        if rng.random() < 0.55:
            got = _transfer(tx, rx, rng.randrange(0, tx.max_bytes + 1))
            if got is not None:
                entry, off, n = got
                for o2, n2 in live.values():
                    assert off + max(n, 1) <= o2 or o2 + max(n2, 1) <= off, "overlap"
                live[entry] = (off, n)
                sent += 1
        elif live:
            entry = rng.choice(list(live))
            del live[entry]
            rx.release(entry)
            if rx.report_due():
                tx.freed(rx.reported())
    assert sent > 5000


def test_a_stalled_sender_always_gets_a_report_once_everything_is_released():
    rng = random.Random(3)
    for _ in range(2000):
        tx, rx = ring.RingSender(32, 64), ring.RingReceiver(32, 64)
        entries = []
        while True:
            n = rng.randrange(0, tx.max_bytes + 1)
            got = _transfer(tx, rx, n)
            if got is None:
                break
            entries.append(got[0])
        for entry in entries:
            rx.release(entry)
        assert rx.report_due()
        tx.freed(rx.reported())
        assert tx.place(n) is not None


@pytest.mark.parametrize("bad", ["offset", "cells", "overrun", "bytes"])
def test_a_write_that_breaks_the_placement_rule_is_a_protocol_error(bad):
    rx = ring.RingReceiver(16, 64)
    rx.accept(frames.WHOLE, 0, 4, 200)
    rx.accept(frames.WHOLE, 4, 4, 256)
    rx.accept(frames.WHOLE, 8, 4, 256)
    with pytest.raises(ProtocolError):
        if bad == "offset":
            rx.accept(frames.WHOLE, 2, 1, 10)             # the next free cell is 12
        elif bad == "cells":
            rx.accept(frames.WHOLE, 12, 5, 300)           # more than a quarter of the ring
        elif bad == "bytes":
            rx.accept(frames.WHOLE, 12, 1, 65)            # 65 bytes take two cells
        else:
            rx.accept(frames.WHOLE, 12, 4, 256)
            rx.accept(frames.WHOLE, 0, 1, 1)              # cells 0-3 are still in use


def test_a_report_of_more_than_is_in_use_is_a_protocol_error():
    tx = ring.RingSender(16, 64)
    tx.place(100)
    with pytest.raises(ProtocolError):
        tx.freed(3)
    with pytest.raises(ProtocolError):
        tx.freed(0)


class Model:
    """ring.py's docstring in Python: the oracle for a sender and receiver."""

    def __init__(self, cells, cell):
        self.cells, self.cell, self.max_cells = cells, cell, cells // 4
        self.tx_tail = self.tx_head = self.rx_tail = self.rx_head = self.unreported = 0
        self.end, self.released = {}, set()

    def _where(self, tail, n):
        pos = tail % self.cells
        return (pos, 0) if pos + n <= self.cells else (0, self.cells - pos)

    def place(self, nbytes):
        n = max(1, -(-nbytes // self.cell))
        at, skip = self._where(self.tx_tail, n)
        if self.tx_tail + skip + n - self.tx_head > self.cells:
            return None
        self.tx_tail += skip + n
        return at, n

    def accept(self, offset, n):
        at, skip = self._where(self.rx_tail, n)
        assert at == offset
        entry = self.rx_tail % self.cells
        self.end[entry] = self.rx_tail = self.rx_tail + skip + n
        return entry, offset * self.cell

    def release(self, entry):
        self.released.add(entry)
        while self.rx_head < self.rx_tail and self.rx_head % self.cells in self.released:
            at = self.rx_head % self.cells
            self.released.discard(at)
            self.unreported += self.end[at] - self.rx_head
            self.rx_head = self.end[at]


def test_the_rules_match_their_model():
    rng = random.Random(5)
    for cells, cell in [(16, 64), (64, 4096), (8192, 256)]:
        tx, rx, m = ring.RingSender(cells, cell), ring.RingReceiver(cells, cell), Model(cells, cell)
        live = []
        for _ in range(5000):
            if rng.random() < 0.5:
                n = rng.randrange(0, tx.max_bytes + 1)
                placed = tx.place(n)
                assert placed == m.place(n)
                if placed:
                    got = rx.accept(frames.WHOLE, *placed, n)
                    assert got == m.accept(*placed)
                    live.append(got[0])
            elif live:
                entry = live.pop(rng.randrange(len(live)))
                rx.release(entry)
                m.release(entry)
                if rx.report_due():
                    k = rx.reported()
                    assert k == m.unreported >= cells // 2
                    m.unreported = 0
                    tx.freed(k)
                    m.tx_head += k
            assert (tx.tail, tx.head, rx.tail, rx.head, rx.unreported) == \
                   (m.tx_tail, m.tx_head, m.rx_tail, m.rx_head, m.unreported)
        assert ring.pack_imm(frames.LAST, 77, 9) == (9 << 18) | (77 << 4) | frames.LAST


def test_each_broken_rule_is_named():
    rx = ring.RingReceiver(16, 64)
    assert rx.accept(frames.WHOLE, 0, 4, 200)[0] == 0
    with pytest.raises(ProtocolError, match="next free cell is 4"):
        rx.accept(frames.WHOLE, 2, 1, 10)
    with pytest.raises(ProtocolError, match="65 bytes claims 1 cells"):
        rx.accept(frames.WHOLE, 4, 1, 65)
    with pytest.raises(ProtocolError, match="quarter of the ring"):
        rx.accept(frames.WHOLE, 4, 5, 300)
    for at in (4, 8, 12):
        rx.accept(frames.WHOLE, at, 4, 256)
    with pytest.raises(ProtocolError, match="not yet released"):
        rx.accept(frames.WHOLE, 0, 1, 1)
    with pytest.raises(ProtocolError, match="unknown fragment kind 4"):
        rx.accept(frames.CREDIT, 0, 1, 1)

"""Fuzz the write channel's ring rules: receives a peer causes (a write's
immediate and byte count, or a control) and releases in any order.  The
receiver must refuse, with ProtocolError, any write that would land outside
the ring or on live data, and any control that carries data.
These are the C rules (ext/protocol/protocol_core.pxd) both engines run."""
from __future__ import annotations

import atheris

import _harness
from rdmamsg.errors import ProtocolError
from rdmamsg.protocol import ring
from rdmamsg.protocol._core import QUEUED, Arrivals

CELLS, CELL = 16, 64


def seeds() -> list[bytes]:
    return [bytes([0, 1, 0, 0, 0, 0x40, 0, 100, 1, 0]), bytes(32)]


def check(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    rx = ring.RingReceiver(CELLS, CELL)
    arr = Arrivals(CELLS + ring.RESERVED_RECEIVES, sender=ring.RingSender(CELLS, CELL),
                   receiver=rx)
    live: dict[int, tuple[int, int]] = {}          # entry -> (byte offset, bytes)
    while fdp.remaining_bytes():
        if fdp.ConsumeBool() or not live:
            written = fdp.ConsumeBool()
            imm = fdp.ConsumeInt(4) & 0xFFFFFFFF
            nbytes = fdp.ConsumeIntInRange(0, CELLS * CELL + 64)
            try:
                what = arr.arrived(0, written, nbytes, imm)
            except ProtocolError:
                return                                  # the connection would be dropped
            if not what & QUEUED:
                assert not written and nbytes == 0, "a write or payload taken as a control"
                continue
            entry, length, _, at = arr.head()
            arr.pop()
            assert length == nbytes and 0 <= at and at + nbytes <= CELLS * CELL
            for other, (o_at, o_len) in live.items():
                assert at + nbytes <= o_at or o_at + o_len <= at or nbytes == 0 or o_len == 0, \
                    "a write landed on a message not yet released"
            live[entry] = (at, nbytes)
        else:
            entry = list(live)[fdp.ConsumeIntInRange(0, len(live) - 1)]
            del live[entry]
            rx.release(entry)
            assert rx.tail - rx.head <= CELLS


if __name__ == "__main__":
    _harness.main(check, seeds)

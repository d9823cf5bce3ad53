"""Fuzz the send channel's receive side: immediates (kind and credits) and
fragments into the Reassembler, and credit returns into the CreditWindow
(the C core both engines run).
Only ProtocolError may come out; nothing is allocated beyond max_message."""
from __future__ import annotations

import atheris

import _harness
from rdmamsg.errors import ProtocolError
from rdmamsg.protocol import frames
from rdmamsg.protocol.credits import CreditWindow

MAX_MESSAGE, FRAGMENT, DEPTH = 1 << 16, 256, 8


def seeds() -> list[bytes]:
    return [bytes([0, 40]) + b"x" * 40, bytes([1, 0, 4, 0, 0]) + b"y" * 256,
            bytes([6, 0]) + (1000).to_bytes(8, "little") + b"z" * 248]


def check(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    r = frames.Reassembler(MAX_MESSAGE, FRAGMENT)
    cw = CreditWindow(DEPTH)
    try:
        while fdp.remaining_bytes():
            imm = fdp.ConsumeInt(4) & 0xFFFFFFFF
            kind, value = frames.unpack_imm(imm)
            if kind in (frames.CREDIT, frames.CLOSE):
                if frames.returns_credits(kind):
                    while cw.credits and fdp.ConsumeBool():
                        cw.spend()
                    cw.returned(value % (2 * DEPTH))
                    assert 0 <= cw.credits <= DEPTH
                continue
            payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, FRAGMENT + 16))
            out = r.feed(kind, payload, value)
            assert r.held <= MAX_MESSAGE
            if out is not None:
                assert len(out) <= MAX_MESSAGE
    except ProtocolError:
        pass


if __name__ == "__main__":
    _harness.main(check, seeds)

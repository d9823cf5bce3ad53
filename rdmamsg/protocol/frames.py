"""How messages travel as RDMA sends: fragments and their immediate data.

Every send is a SEND_WITH_IMM.  Its 32-bit immediate carries the fragment
kind (low 4 bits) and the credits the sender returns (the other 28 bits), so
credit returns ride on data and most messages need no separate ack.

A message that fits one receive buffer goes as one WHOLE fragment.  A longer
one goes as FIRST, MIDDLE..., LAST, all full buffers but the last.  A FIRST
fragment's immediate carries the message's total length where the others
carry credits (so it returns none); a message of 256 MiB or more starts with
FIRST_LONG instead, whose data begins with the length as 8 bytes, little
endian.  CREDIT returns credits only; CLOSE is the orderly end of the stream.
Both carry no payload.

The rules are C (ext/protocol/protocol_core.pxd), which both engines run;
this module names them for Python.
"""
from __future__ import annotations

import struct

from ._core import NUMBERS, Reassembler, pack_imm, plan, unpack_imm

__all__ = ["WHOLE", "FIRST", "MIDDLE", "LAST", "CREDIT", "CLOSE", "FIRST_LONG", "KIND_NAMES",
           "KIND_BITS", "KIND_MASK", "MAX_CREDITS", "MAX_IMM_LENGTH", "FIRST_HEADER", "STARTS", "pack_imm",
           "unpack_imm", "returns_credits", "plan", "Reassembler"]

WHOLE, FIRST, MIDDLE, LAST, CREDIT, CLOSE, FIRST_LONG = range(7)
KIND_NAMES = ("WHOLE", "FIRST", "MIDDLE", "LAST", "CREDIT", "CLOSE", "FIRST_LONG")
KIND_BITS = NUMBERS["KIND_BITS"]
KIND_MASK = (1 << KIND_BITS) - 1
MAX_CREDITS = NUMBERS["MAX_CREDITS"]
MAX_IMM_LENGTH = MAX_CREDITS          #: longest message whose FIRST carries its length
FIRST_HEADER = struct.Struct("<Q")    #: FIRST_LONG's length header
STARTS = (FIRST, FIRST_LONG)


def returns_credits(kind: int) -> bool:
    """Whether a fragment of ``kind`` carries credits (FIRST carries a length)."""
    return kind != FIRST

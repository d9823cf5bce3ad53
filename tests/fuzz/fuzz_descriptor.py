"""Fuzz remote-buffer descriptors as a peer sends them: parsing, then the
bounds and access checks made before any one-sided operation is posted.  A
descriptor may only be refused with ValueError, an access with ValueError or
PermissionError, and an access that passes lies inside the grant."""
from __future__ import annotations

import atheris

import _harness
from rdmamsg.channel.remote import RemoteBuffer
from rdmamsg.protocol._core import NUMBERS, pack_grant


def seeds() -> list[bytes]:
    return [pack_grant(3, 1 << 20, 4096, 7, 1)]


def check(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    raw = fdp.ConsumeBytes(NUMBERS["GRANT_LEN"])
    try:
        rb = RemoteBuffer._from_bytes(raw)
    except ValueError:
        return
    for _ in range(4):
        need = fdp.ConsumeIntInRange(1, 2)
        offset, length = fdp.ConsumeInt(8), fdp.ConsumeInt(8)
        try:
            rb.check(need, offset, length)
        except (ValueError, PermissionError):
            continue
        assert 0 <= offset and 0 <= length and offset + length <= rb.length
        assert rb.access & need


if __name__ == "__main__":
    _harness.main(check, seeds)

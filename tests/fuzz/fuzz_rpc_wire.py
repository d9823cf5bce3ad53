"""Fuzz the RPC frame decoder: headers, buffer specs (sizes checked before
anything is allocated), bodies with extension types, and the request and
error shapes.  Only ProtocolError may come out, and what allocate() makes
never exceeds the max_payload the header was checked against."""
from __future__ import annotations

import atheris
import msgpack

import _harness
from rdmamsg.errors import ProtocolError
from rdmamsg.rpc import wire

MAX_PAYLOAD = 1 << 20


def seeds() -> list[bytes]:
    import numpy as np

    req, _ = wire.encode_request(7, "echo", (b"x" * 10, bytearray(3), np.arange(4)), {"k": 1},
                                 1.5, inline_max=1 << 10)
    big, _ = wire.encode_request(8, "put", (b"y" * 5000,), {}, None, inline_max=1 << 10)
    rep, _ = wire.encode_reply(7, [1, "two", None])
    return [req, big, rep, wire.encode_error(9, "builtins.ValueError", "bad", "tb"),
            wire.encode_cancel(3), wire.encode_ping()]


DTYPES = ["u1", "f8", "<i4", ">c16", "O", "V3", "S0", "M8[s]", "nonsense", "", "f8,f8"]
INTS = [0, 1, 2, 7, 8, 4096, MAX_PAYLOAD, MAX_PAYLOAD + 1, 1 << 31, 1 << 62, 1 << 63,
        (1 << 64) - 1, -1]


def _structured(fdp) -> bytes:
    """A frame whose header has the right shape and whose values are chosen
    to probe the checks: kinds, ids, deadlines and buffer specs."""
    def some_int():
        return fdp.PickValueInList(INTS) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 300)

    specs = []
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        shape = [some_int() for _ in range(fdp.ConsumeIntInRange(0, 3))]
        specs.append([fdp.ConsumeIntInRange(0, 5), some_int(), fdp.PickValueInList(DTYPES), shape])
    third = fdp.PickValueInList(["echo", wire.OK, wire.ERROR, None, 5])
    ms = fdp.PickValueInList([None, 0, 1500, -1, 1.5])
    head = [fdp.ConsumeIntInRange(0, 5), some_int(), third, ms, specs]
    if fdp.ConsumeBool():           # a body holding an inline array
        shape = [fdp.ConsumeIntInRange(0, 9) for _ in range(fdp.ConsumeIntInRange(0, 3))]
        arr = msgpack.packb([fdp.PickValueInList(DTYPES + ["(2,)f8", "U2"]), shape,
                             fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))])
        body = msgpack.packb([[msgpack.ExtType(wire.EXT_NDARRAY, arr)], {}])
    else:
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
    return msgpack.packb(head) + body


def check(data: bytes) -> None:
    if data[:1] == b"\x01":
        try:
            data = _structured(atheris.FuzzedDataProvider(data[1:]))
        except (OverflowError, ValueError):      # an int msgpack cannot pack: not a frame
            return
    try:
        head = wire.decode_header(data, MAX_PAYLOAD)
        objects, total = [], 0
        for spec in head.specs:
            obj, view = wire.allocate(spec)
            total += spec[1]
            assert view is None or view.nbytes == spec[1]
            objects.append(obj if obj is not None else b"")
        assert total <= MAX_PAYLOAD
        body = wire.decode_body(head, objects)
        if head.kind == wire.REQUEST:
            wire.request_parts(head, body)
        elif head.kind == wire.REPLY and head.status == wire.ERROR:
            wire.error_parts(body)
    except ProtocolError:
        pass


if __name__ == "__main__":
    _harness.main(check, seeds)

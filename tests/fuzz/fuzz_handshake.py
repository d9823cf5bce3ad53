"""Fuzz the bootstrap handshake: the frame decoder over a TCP byte stream cut
at random, then every check a message meets on either side.  Only
ProtocolError (HandshakeError, AuthenticationError) may come out, and the
decoder never holds more than one frame's worth of bytes."""
from __future__ import annotations


import _harness
from rdmamsg.errors import ProtocolError
from rdmamsg.protocol import handshake as hs

TOKEN = b"fuzz-token"
NONCE = bytes(range(16))
INFO = hs.QPInfo(qpn=0x1234, psn=77, gid=bytes(10) + b"\xff\xff\x0a\x58\x00\x01", lid=0, mtu=5,
                 depth=64, bufsize=32768, max_message=1 << 26,
                 extra={"ring": {"addr": 1 << 20, "rkey": 5, "size": 2 << 20, "cells": 512},
                        "rma": {"qpn": 99, "psn": 3}})


def seeds() -> list[bytes]:
    """Each message of a real exchange, with and without a token."""
    out = []
    for tok in (None, TOKEN):
        out += [hs.encode(hs.hello(NONCE, tok is not None)),
                hs.encode(hs.conn(INFO, NONCE, NONCE, tok)),
                hs.encode(hs.accept(INFO, NONCE, NONCE, tok))]
    out += [hs.encode(hs.refuse("no", auth=True)), hs.encode(hs.ready())]
    return [b"\xff" + frame for frame in out] + [b"\x03" + b"".join(out)]


def _checks(msg: dict) -> None:
    for tok in (None, TOKEN):
        for step in (lambda: hs.check_hello(msg, tok),
                     lambda: hs.check_conn(msg, NONCE, tok),
                     lambda: hs.check_accept(msg, NONCE, NONCE, tok),
                     lambda: hs.check_ready(msg)):
            try:
                step()
            except ProtocolError:
                continue
    try:
        info = hs.parse_info(msg)
        hs.ring_of(info)
        hs.one_sided_of(info)
    except ProtocolError:
        pass


def check(data: bytes) -> None:
    dec = hs.FrameDecoder()
    try:
        for chunk in _harness.split(data):
            for msg in dec.feed(chunk):
                assert isinstance(msg, dict)
                _checks(msg)
            assert dec.pending <= 4 + hs.MAX_FRAME + 256, dec.pending
    except ProtocolError:
        pass


if __name__ == "__main__":
    _harness.main(check, seeds)

"""The bootstrap handshake's messages, framing and authentication, without I/O."""
import dataclasses

import msgpack
import pytest
from hypothesis import given, strategies as st

from rdmamsg.errors import AuthenticationError, HandshakeError, ProtocolError
from rdmamsg.protocol import handshake as hs

INFO = hs.QPInfo(qpn=0x1234, psn=0xABCDE, gid=bytes(10) + b"\xff\xff\x0a\x58\x00\x01", lid=0,
                 mtu=5, depth=64, bufsize=16384, max_message=1 << 26)


def exchange(server_token, client_token, client_info=INFO, tamper=None):
    """Run the whole exchange in memory; returns what each side learned."""
    server_token, client_token = hs.token_bytes(server_token), hs.token_bytes(client_token)
    ns = hs.new_nonce()
    hello = hs.FrameDecoder().feed(hs.encode(hs.hello(ns, server_token is not None)))[0]
    got_ns = hs.check_hello(hello, client_token)
    nc = hs.new_nonce()
    req = hs.FrameDecoder().feed(hs.encode(hs.conn(client_info, got_ns, nc, client_token)))[0]
    if tamper:
        tamper(req)
    cinfo, got_nc = hs.check_conn(req, ns, server_token)
    acc = hs.FrameDecoder().feed(hs.encode(hs.accept(INFO, ns, got_nc, server_token)))[0]
    return cinfo, hs.check_accept(acc, got_ns, nc, client_token)


@pytest.mark.parametrize("token", [None, "s3cret", b"\x00bytes"])
def test_exchange_succeeds(token):
    cinfo, sinfo = exchange(token, token)
    assert cinfo == INFO and sinfo == INFO


def test_wrong_token_is_refused():
    with pytest.raises(AuthenticationError, match="token is wrong"):
        exchange("right", "wrong")


def test_client_without_token_is_told_to_bring_one():
    with pytest.raises(AuthenticationError, match="requires a token"):
        exchange("right", None)


def test_client_with_token_refuses_a_server_without_one():
    with pytest.raises(AuthenticationError, match="does not use one"):
        exchange(None, "right")


def test_mac_covers_the_qp_info():
    def swap_qpn(req):
        req["qpn"] = 0x999
    with pytest.raises(AuthenticationError):
        exchange("k", "k", tamper=swap_qpn)


@pytest.mark.parametrize("side", ["hello", "conn"])
def test_wrong_version(side):
    if side == "hello":
        msg = dict(hs.hello(hs.new_nonce(), False), v=99)
        with pytest.raises(HandshakeError, match="protocol 99"):
            hs.check_hello(msg, None)
    else:
        msg = dict(hs.conn(INFO, bytes(16), bytes(16), None), v=99)
        with pytest.raises(HandshakeError, match="protocol 99"):
            hs.check_conn(msg, bytes(16), None)


@pytest.mark.parametrize("field,value", [("qpn", 0), ("qpn", 1 << 24), ("mtu", 6), ("depth", 2),
                                         ("gid", b"short"), ("psn", "x"), ("lid", True),
                                         ("extra", [1])])
def test_bad_fields(field, value):
    msg = hs.conn(INFO, bytes(16), bytes(16), None)
    msg[field] = value
    with pytest.raises(HandshakeError):
        hs.check_conn(msg, bytes(16), None)


def test_refusal_reaches_the_client():
    with pytest.raises(AuthenticationError, match="refused.*bad"):
        hs.check_accept(hs.refuse("bad", auth=True), bytes(16), bytes(16), None)
    with pytest.raises(HandshakeError, match="refused.*busy"):
        hs.check_accept(hs.refuse("busy"), bytes(16), bytes(16), None)


def test_decoder_splits_and_joins_frames():
    data = hs.encode(hs.ready()) * 3
    d = hs.FrameDecoder()
    out = []
    for i in range(len(data)):
        out += d.feed(data[i:i + 1])
    assert out == [{"t": "ready"}] * 3 and d.pending == 0


def test_decoder_refuses_oversize_before_reading_it():
    with pytest.raises(ProtocolError, match="limit"):
        hs.FrameDecoder().feed((hs.MAX_FRAME + 1).to_bytes(4, "big"))


@pytest.mark.parametrize("body", [b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"t": 3})])
def test_decoder_refuses_non_messages(body):
    with pytest.raises(ProtocolError):
        hs.FrameDecoder().feed(len(body).to_bytes(4, "big") + body)


@given(st.binary(max_size=300))
def test_decoder_on_garbage_only_raises_protocol_error(data):
    try:
        for msg in hs.FrameDecoder().feed(data):
            try:
                hs.check_conn(msg, bytes(16), b"k")
            except HandshakeError:
                pass
    except ProtocolError:
        pass


RING = {"addr": 0x7F0000000000, "rkey": 0x1234, "size": 2 << 20, "cells": 512}


def test_ring_and_one_sided_qp_are_parsed_from_extra():
    info = dataclasses.replace(INFO, extra={"ring": RING, "rma": {"qpn": 77, "psn": 5}})
    got = hs.ring_of(hs.parse_info(msgpack.unpackb(msgpack.packb(info.to_wire()))))
    assert got == hs.RingInfo(**RING) and got.cell == 4096
    assert hs.one_sided_of(info) == {"qpn": 77, "psn": 5}
    assert hs.ring_of(INFO) is None and hs.one_sided_of(INFO) is None


@pytest.mark.parametrize("key,value", [
    ("ring", [1, 2]), ("ring", {**RING, "addr": 0}), ("ring", {**RING, "rkey": 1 << 32}),
    ("ring", {**RING, "cells": 3}), ("ring", {**RING, "size": 1000}),
    ("ring", {**RING, "addr": (1 << 64) - 4096}), ("ring", {k: RING[k] for k in list(RING)[:3]}),
    ("rma", "x"), ("rma", {"qpn": 0, "psn": 1}), ("rma", {"qpn": 1, "psn": 1 << 24}),
    ("rma", {"qpn": True, "psn": 1}),
])
def test_bad_ring_or_one_sided_qp_is_a_handshake_error(key, value):
    info = dataclasses.replace(INFO, extra={key: value})
    with pytest.raises(HandshakeError):
        (hs.ring_of if key == "ring" else hs.one_sided_of)(info)

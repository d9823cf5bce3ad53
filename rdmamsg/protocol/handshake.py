"""The bootstrap handshake over TCP: messages, framing and authentication.

How this works.  A frame is a 4-byte big-endian length and a msgpack map of
at most MAX_FRAME bytes.  The exchange is:

    server -> client   hello   {v, nonce, auth}
    client -> server   conn    {v, nonce, info..., mac}
    server -> client   accept  {info..., mac}   or   refuse {reason}
    client -> server   ready                     (its QP is ready to receive)

``info`` is what the peer's QP needs: QPN, PSN, GID, LID, MTU, receive depth
(the credits), buffer size and maximum message size.  On the write channel
``extra`` also holds the ring the peer may write into: address, rkey, size
and cells (see ring.py).  With a shared token,
each side's mac is an HMAC-SHA256 over both nonces and its own info, so the
server checks the client before it connects a QP to it, and the client checks
the server.  Nothing here does I/O.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack

from ..errors import AuthenticationError, HandshakeError, ProtocolError
from . import ring
from .credits import MIN_DEPTH

VERSION = 1
MAX_FRAME = 4096
NONCE_BYTES = 16
_LEN = struct.Struct("!I")


@dataclass(frozen=True)
class QPInfo:
    """What the peer needs to connect its QP to ours and talk to it."""

    qpn: int
    psn: int
    gid: bytes
    lid: int
    mtu: int            #: ibv_mtu enum, 1 (256) .. 5 (4096)
    depth: int          #: receives we keep posted: the peer's credits
    bufsize: int        #: bytes in each of our receive buffers
    max_message: int    #: largest message we accept
    extra: dict = field(default_factory=dict)   #: channel-specific (e.g. a write ring)

    def to_wire(self) -> dict:
        return asdict(self)


_INFO_RANGES = {
    "qpn": (1, (1 << 24) - 1),
    "psn": (0, (1 << 24) - 1),
    "lid": (0, 0xFFFF),
    "mtu": (1, 5),
    "depth": (MIN_DEPTH, 1 << 16),
    "bufsize": (64, 1 << 30),
    "max_message": (0, 1 << 40),
}


_U64 = (1 << 64) - 1
_RING_RANGES = {"addr": (1, _U64), "rkey": (0, (1 << 32) - 1),   # geometry: ring.check_geometry
                "size": (0, _U64), "cells": (0, _U64)}
_ONE_SIDED_RANGES = {key: _INFO_RANGES[key] for key in ("qpn", "psn")}


def _get(msg: dict, key: str, kind: type) -> Any:
    if key not in msg:
        raise HandshakeError(f"handshake message lacks {key!r}")
    val = msg[key]
    if kind is int and isinstance(val, bool) or not isinstance(val, kind):
        raise HandshakeError(f"handshake field {key!r} is {type(val).__name__}, "
                             f"expected {kind.__name__}")
    return val


def _ranged(msg: dict, ranges: dict[str, tuple[int, int]]) -> dict[str, int]:
    """The int fields named in ``ranges``, each checked against its (lo, hi)."""
    vals = {}
    for key, (lo, hi) in ranges.items():
        v = _get(msg, key, int)
        if not lo <= v <= hi:
            raise HandshakeError(f"handshake field {key!r}={v} is outside {lo}..{hi}")
        vals[key] = v
    return vals


def _extra(info: QPInfo, key: str) -> dict | None:
    """The map ``key`` in ``info.extra``; None if the peer sent none."""
    raw = info.extra.get(key)
    if raw is not None and not isinstance(raw, dict):
        raise HandshakeError(f"handshake field {key!r} is not a map")
    return raw


def parse_info(msg: dict) -> QPInfo:
    vals = _ranged(msg, _INFO_RANGES)
    gid = _get(msg, "gid", bytes)
    if len(gid) != 16:
        raise HandshakeError(f"GID of {len(gid)} bytes; a GID has 16")
    extra = msg.get("extra", {})
    if not isinstance(extra, dict):
        raise HandshakeError("handshake field 'extra' is not a map")
    return QPInfo(gid=gid, extra=extra, **vals)


@dataclass(frozen=True)
class RingInfo:
    """A ring the peer advertised: the only memory of its connection we may write."""

    addr: int
    rkey: int
    size: int
    cells: int

    def to_wire(self) -> dict:
        return asdict(self)

    @property
    def cell(self) -> int:
        return self.size // self.cells


def ring_of(info: QPInfo) -> RingInfo | None:
    """The ring in ``info.extra``, checked; None if the peer advertised none."""
    raw = _extra(info, "ring")
    if raw is None:
        return None
    vals = _ranged(raw, _RING_RANGES)
    try:
        ring.check_geometry(vals["size"], vals["cells"])
    except ValueError as exc:
        raise HandshakeError(f"the peer's ring is unusable: {exc}") from None
    if vals["addr"] + vals["size"] >= 1 << 64:
        raise HandshakeError("the ring's address range wraps")
    return RingInfo(**vals)


def one_sided_of(info: QPInfo) -> dict | None:
    """The peer's one-sided QP (qpn, psn) from ``info.extra``, checked; None if none."""
    raw = _extra(info, "rma")
    return None if raw is None else _ranged(raw, _ONE_SIDED_RANGES)


# -- framing -----------------------------------------------------------------

def encode(msg: dict) -> bytes:
    body = msgpack.packb(msg, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ValueError(f"handshake frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    """Cuts a TCP byte stream into handshake messages, refusing oversize frames
    before reading them."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        self._buf += data
        out = []
        while len(self._buf) >= _LEN.size:
            (n,) = _LEN.unpack_from(self._buf)
            if n > MAX_FRAME:
                raise ProtocolError(f"handshake frame of {n} bytes announced; the limit is {MAX_FRAME}")
            if len(self._buf) < _LEN.size + n:
                break
            body = bytes(self._buf[_LEN.size:_LEN.size + n])
            del self._buf[:_LEN.size + n]
            try:
                msg = msgpack.unpackb(body, raw=False, strict_map_key=True)
            except Exception as exc:  # msgpack raises several unrelated types
                raise ProtocolError(f"handshake frame is not valid msgpack: {exc}") from None
            if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
                raise ProtocolError("handshake frame is not a message map")
            out.append(msg)
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


# -- messages ----------------------------------------------------------------

def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def token_bytes(token: str | bytes | None) -> bytes | None:
    if token is None:
        return None
    if isinstance(token, str):
        token = token.encode()
    if not isinstance(token, bytes) or not token:
        raise ValueError("token must be a non-empty str or bytes")
    return token


def _mac(token: bytes, label: bytes, server_nonce: bytes, client_nonce: bytes,
         info: QPInfo) -> bytes:
    body = msgpack.packb(info.to_wire(), use_bin_type=True)
    return hmac.new(token, label + server_nonce + client_nonce + body, hashlib.sha256).digest()


def hello(nonce: bytes, auth: bool) -> dict:
    return {"t": "hello", "v": VERSION, "nonce": nonce, "auth": auth}


def check_hello(msg: dict, token: bytes | None) -> bytes:
    """Client side: the server's nonce, after checking version and auth mode."""
    _expect(msg, "hello")
    v = _get(msg, "v", int)
    if v != VERSION:
        raise HandshakeError(f"server speaks rdmamsg protocol {v}; this client speaks {VERSION}")
    auth = _get(msg, "auth", bool)
    if auth and token is None:
        raise AuthenticationError("the server requires a token; pass token=")
    if not auth and token is not None:
        raise AuthenticationError("a token was given but the server does not use one, "
                                  "so it cannot prove it holds it")
    return _nonce(msg)


def conn(info: QPInfo, server_nonce: bytes, client_nonce: bytes, token: bytes | None) -> dict:
    mac = _mac(token, b"rdmamsg-client", server_nonce, client_nonce, info) if token else b""
    return {"t": "conn", "v": VERSION, "nonce": client_nonce, "mac": mac, **info.to_wire()}


def check_conn(msg: dict, server_nonce: bytes, token: bytes | None) -> tuple[QPInfo, bytes]:
    """Server side: the client's QP info and nonce, once version and mac check out."""
    _expect(msg, "conn")
    v = _get(msg, "v", int)
    if v != VERSION:
        raise HandshakeError(f"client speaks rdmamsg protocol {v}; this server speaks {VERSION}")
    info = parse_info(msg)
    client_nonce = _nonce(msg)
    if token is not None:
        mac = _get(msg, "mac", bytes)
        want = _mac(token, b"rdmamsg-client", server_nonce, client_nonce, info)
        if not hmac.compare_digest(mac, want):
            raise AuthenticationError("the client's token is wrong")
    return info, client_nonce


def accept(info: QPInfo, server_nonce: bytes, client_nonce: bytes, token: bytes | None) -> dict:
    mac = _mac(token, b"rdmamsg-server", server_nonce, client_nonce, info) if token else b""
    return {"t": "accept", "mac": mac, **info.to_wire()}


def check_accept(msg: dict, server_nonce: bytes, client_nonce: bytes,
                 token: bytes | None) -> QPInfo:
    """Client side: the server's QP info, once its mac checks out."""
    if msg.get("t") == "refuse":
        reason = msg.get("reason") if isinstance(msg.get("reason"), str) else "no reason given"
        err = AuthenticationError if msg.get("auth") is True else HandshakeError
        raise err(f"the server refused the connection: {reason}")
    _expect(msg, "accept")
    info = parse_info(msg)
    if token is not None:
        want = _mac(token, b"rdmamsg-server", server_nonce, client_nonce, info)
        if not hmac.compare_digest(_get(msg, "mac", bytes), want):
            raise AuthenticationError("the server could not prove it holds the token")
    return info


def refuse(reason: str, auth: bool = False) -> dict:
    return {"t": "refuse", "reason": reason[:512], "auth": auth}


def ready() -> dict:
    return {"t": "ready"}


def check_ready(msg: dict) -> None:
    _expect(msg, "ready")


def _expect(msg: dict, t: str) -> None:
    if msg.get("t") != t:
        raise HandshakeError(f"expected a {t!r} handshake message, got {msg.get('t')!r}")


def _nonce(msg: dict) -> bytes:
    nonce = _get(msg, "nonce", bytes)
    if len(nonce) != NONCE_BYTES:
        raise HandshakeError(f"nonce of {len(nonce)} bytes; expected {NONCE_BYTES}")
    return nonce

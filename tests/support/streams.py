"""Byte streams in random pieces, for the socket facade's tests."""
import hashlib
import random
import socket

import rdmamsg


def send_randomly(sock, data: bytes, rng: random.Random) -> None:
    mv = memoryview(data)
    while mv:
        n = min(len(mv), rng.choice([1, 7, 100, 4096, 65536, 300_000]))
        if rng.random() < 0.5:
            sock.sendall(mv[:n])
        else:
            n = sock.send(mv[:n])
        mv = mv[n:]


def recv_randomly(sock, total: int, rng: random.Random) -> bytes:
    out = bytearray()
    buf = bytearray(1 << 20)
    while len(out) < total:
        want = rng.choice([1, 13, 1000, 4096, 70_000, 1 << 20])
        if rng.random() < 0.5:
            chunk = sock.recv(want)
        else:
            n = sock.recv_into(buf, want)
            chunk = bytes(buf[:n])
        assert chunk, "early end of stream"
        out += chunk
    return bytes(out)


def reply_digest(conn) -> None:
    """Server side of a digest exchange: read to EOF, send back the sha256, close."""
    with conn:
        h = hashlib.sha256()
        while chunk := conn.recv(1 << 20):
            h.update(chunk)
        conn.sendall(h.digest())


def send_for_digest(address, blob: bytes, timeout: float) -> bytes:
    """Client side: connect, send ``blob``, half-close, return what comes back."""
    with rdmamsg.create_connection(address, timeout) as c:
        c.settimeout(None)
        c.sendall(blob)
        c.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := c.recv(64):
            got += chunk
        return got

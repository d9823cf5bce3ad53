"""Byte streams in random pieces, for the socket facade's tests."""
import errno
import hashlib
import random
import socket
import time

import pytest

import rdmamsg
from support.peers import run_in_thread


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


def _send_slowly(sock, pieces) -> None:
    for piece in pieces:
        time.sleep(0.05)
        sock.sendall(piece)


def check_send_flags(tx, rx) -> None:
    """send's flags, as the socket module has them, on a connected blocking
    pair (``tx`` writes to ``rx``)."""
    assert tx.send(b"hint", socket.MSG_NOSIGNAL | socket.MSG_MORE) == 4
    assert rx.recv(4, socket.MSG_WAITALL) == b"hint"
    with pytest.raises(OSError) as e:
        tx.send(b"x", socket.MSG_OOB)
    assert e.value.errno == errno.EOPNOTSUPP
    # MSG_DONTWAIT on a blocking socket: once the peer takes no more, this
    # call raises rather than waits; the socket's own timeout stays.
    chunk, sent, timeouts = b"z" * 65536, 0, (tx.gettimeout(), rx.gettimeout())
    with pytest.raises(BlockingIOError):
        while sent < 256 << 20:
            sent += tx.send(chunk, socket.MSG_DONTWAIT)
    assert tx.gettimeout() == timeouts[0]
    rx.settimeout(30)
    got = 0
    while got < sent:
        got += len(rx.recv(1 << 20))
    rx.settimeout(timeouts[1])
    assert got == sent


def check_recv_flags(tx, rx) -> None:
    """recv and recv_into's flags, as the socket module has them, on a
    connected blocking pair (``tx`` writes to ``rx``); ends ``tx``'s stream."""
    buf = bytearray(10)
    # MSG_WAITALL gathers writes that come one by one (the fast path's case).
    sender = run_in_thread(_send_slowly, tx, [b"ab", b"cde", b"fghij"])
    assert rx.recv_into(buf, 0, socket.MSG_WAITALL) == 10 and buf == b"abcdefghij"
    sender.result()
    # ... and a write longer than the room left: the rest stays unread.
    tx.sendall(b"abcd")
    tx.sendall(b"efghijKLMN")
    assert rx.recv_into(buf, 0, socket.MSG_WAITALL) == 10 and buf == b"abcdefghij"
    assert rx.recv(4) == b"KLMN"
    sender = run_in_thread(_send_slowly, tx, [b"12", b"345"])
    assert rx.recv(5, socket.MSG_WAITALL) == b"12345"
    sender.result()
    # MSG_PEEK leaves the bytes for the next receive.
    tx.sendall(b"peek")
    assert rx.recv(4, socket.MSG_PEEK) == b"peek"
    assert rx.recv_into(buf, 2, socket.MSG_PEEK) == 2 and buf[:2] == b"pe"
    assert rx.recv(4) == b"peek"
    # A zero-length receive returns at once, with nothing there to read.
    assert rx.recv(0) == b"" and rx.recv_into(memoryview(buf)[:0]) == 0
    # MSG_DONTWAIT on a blocking socket: this call only.
    with pytest.raises(BlockingIOError):
        rx.recv(4, socket.MSG_DONTWAIT)
    tx.sendall(b"now")
    assert rx.recv(3, socket.MSG_PEEK) == b"now"
    assert rx.recv(3, socket.MSG_DONTWAIT) == b"now"
    with pytest.raises(OSError) as e:
        rx.recv(1, socket.MSG_OOB)
    assert e.value.errno == errno.EOPNOTSUPP
    # With a timeout, MSG_WAITALL gives what came in time.
    rx.settimeout(0.3)
    tx.sendall(b"xy")
    assert rx.recv_into(buf, 0, socket.MSG_WAITALL) == 2 and buf[:2] == b"xy"
    rx.settimeout(None)
    # The end of the stream cuts it short, and stays.
    tx.sendall(b"last")
    tx.shutdown(socket.SHUT_WR)
    assert rx.recv_into(buf, 0, socket.MSG_WAITALL) == 4 and buf[:4] == b"last"
    assert rx.recv_into(buf, 0, socket.MSG_WAITALL) == 0
    assert rx.recv(1, socket.MSG_WAITALL) == b""

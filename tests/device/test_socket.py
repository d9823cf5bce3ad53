"""The socket facade on the device: stream semantics, errors, selectors, makefile."""
import errno
import hashlib
import os
import random
import selectors
import signal
import socket
import struct
import threading
import time

import pytest

import rdmamsg
from support.peers import run_in_thread, spawn
from support.streams import (check_recv_flags, check_send_flags, recv_randomly, reply_digest,
                             send_for_digest, send_randomly)

IP = os.environ.get("RDMAMSG_SELF", "")


@pytest.fixture(params=["send", "write"])
def channel(request):
    return request.param


def socket_pair(**options):
    """(client, server-side) RdmaSockets, connected."""
    with rdmamsg.create_server((IP, 0), **options) as srv:
        accepted = run_in_thread(srv.accept)
        cli = rdmamsg.create_connection(srv.getsockname(), timeout=60, **options)
        conn, addr = accepted.result()
    assert addr == cli.getsockname() and conn.getpeername() == cli.getsockname()
    cli.settimeout(None)
    return cli, conn


def test_stream_integrity_with_random_chunking_both_ways(channel):
    cli, conn = socket_pair(channel=channel)
    with cli, conn:
        for size in (1, 1000, 65536, 1 << 20, 5 << 20):
            data = random.Random(size).randbytes(size)
            sender = run_in_thread(send_randomly, cli, data, random.Random(1))
            echoed = recv_randomly(conn, size, random.Random(2))
            sender.result()
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
            back = run_in_thread(send_randomly, conn, echoed, random.Random(3))
            assert recv_randomly(cli, size, random.Random(4)) == data
            back.result()


def test_half_close_delivers_eof_and_the_other_way_stays_open():
    cli, conn = socket_pair()
    with cli, conn:
        cli.sendall(b"request")
        cli.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := conn.recv(100):
            got += chunk
        assert got == b"request"
        assert conn.recv(10) == b""                       # EOF stays EOF
        conn.sendall(b"reply after your EOF")
        conn.close()
        assert cli.recv(100) == b"reply after your EOF"
        assert cli.recv(100) == b""
        with pytest.raises(BrokenPipeError):
            cli.send(b"more")


def test_the_blocking_fast_paths_keep_stream_semantics():
    # Blocking sockets send and receive through the engine directly; every
    # case they do not cover must still behave as the general path does.
    import array
    cli, conn = socket_pair()
    with cli, conn:
        if cli._ep.poller == "cython":                 # the C methods are the socket's own
            assert cli.sendall == cli._fast.sendall and conn.recv_into == conn._fast.recv_into
        cli.sendall(b"0123456789")                      # longer than the buffer below
        small = bytearray(4)
        assert conn.recv_into(small) == 4 and small == b"0123"
        assert conn.recv(3) == b"456"                  # the rest of that message, in order
        assert conn.recv_into(small) == 3 and small[:3] == b"789"
        with pytest.raises((TypeError, BufferError)):
            cli.sendall(memoryview(b"abcdefgh")[::2])  # not contiguous: as the socket module
        cli.sendall(array.array("i", [1, 2]))          # a typed buffer: its bytes
        cli.send(memoryview(bytearray(b"xyz")))
        cli.sendall(b"")                               # nothing, not an end of stream
        got = bytearray(64)
        n = 0
        while n < 8 + 3:
            n += conn.recv_into(memoryview(got)[n:])
        assert bytes(got[:n]) == array.array("i", [1, 2]).tobytes() + b"xyz"
        with pytest.raises(TypeError):
            conn.recv_into(b"read-only")
        with pytest.raises((TypeError, ValueError, BufferError)):
            conn.recv_into(memoryview(bytearray(8))[::2])
        conn.settimeout(0.2)                           # leaves the fast path
        with pytest.raises(TimeoutError):
            conn.recv_into(got)
        conn.settimeout(None)                          # and comes back to it
        cli.sendall(b"again")
        assert conn.recv_into(got) == 5 and got[:5] == b"again"
        cli.shutdown(socket.SHUT_WR)
        assert conn.recv_into(got) == 0
        assert conn.recv_into(got) == 0 and conn.recv(5) == b""     # EOF stays EOF
        conn.sendall(b"back")                          # the other way stays open
        assert cli.recv_into(got) == 4 and got[:4] == b"back"
        with pytest.raises(BrokenPipeError):
            cli.sendall(b"after SHUT_WR")
        conn.close()
        with pytest.raises(OSError) as e:
            conn.sendall(b"x")
        assert e.value.errno == errno.EBADF
        with pytest.raises(OSError) as e:
            conn.recv_into(got)
        assert e.value.errno == errno.EBADF


def test_send_and_recv_flags():
    cli, conn = socket_pair()
    with cli, conn:
        check_send_flags(cli, conn)
        check_recv_flags(cli, conn)


def test_so_linger_zero_aborts_so_the_peer_knows_the_stream_was_cut():
    cli, conn = socket_pair()
    with conn:
        cli.sendall(b"x" * 1000)
        cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        cli.close()
        conn.settimeout(10)
        with pytest.raises(ConnectionResetError):
            while conn.recv(4096):
                pass


def test_timeouts_and_non_blocking():
    cli, conn = socket_pair()
    with cli, conn:
        conn.settimeout(0.3)
        assert conn.gettimeout() == 0.3
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.recv(10)
        assert 0.25 < time.monotonic() - t0 < 5
        conn.setblocking(False)
        assert conn.gettimeout() == 0.0 and not conn.getblocking()
        with pytest.raises(BlockingIOError) as e:
            conn.recv(10)
        assert e.value.errno == errno.EAGAIN
        cli.sendall(b"x")
        deadline = time.monotonic() + 30
        while True:
            try:
                assert conn.recv(10) == b"x"
                break
            except BlockingIOError:
                assert time.monotonic() < deadline
                time.sleep(0.01)


def test_errors_are_the_standard_ones():
    with pytest.raises(ConnectionRefusedError):
        probe = socket.socket()
        probe.bind((IP, 0))
        port = probe.getsockname()[1]
        probe.close()
        rdmamsg.create_connection((IP, port), timeout=10)
    cli, conn = socket_pair()
    conn.close()
    assert cli.recv(10) == b""
    with pytest.raises(BrokenPipeError):
        for _ in range(1000):
            cli.send(b"to nobody")
    cli.close()
    for call in (lambda: cli.recv(1), lambda: cli.send(b"x"), lambda: cli.getpeername()):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EBADF
    assert cli.fileno() == -1


PEER = """
import sys, rdmamsg
s = rdmamsg.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
print("connected", flush=True)
while True:
    s.sendall(b"y" * 4096)
"""


def test_a_peer_that_dies_gives_connection_reset_within_5s():
    with rdmamsg.create_server((IP, 0)) as srv:
        child = spawn(PEER, IP, srv.getsockname()[1])
        try:
            srv.settimeout(60)
            conn, _ = srv.accept()
            assert child.stdout.readline().strip() == "connected"
            with conn:
                assert conn.recv(4096)
                os.kill(child.pid, signal.SIGKILL)
                t0 = time.monotonic()
                with pytest.raises(ConnectionResetError):
                    while conn.recv(1 << 16):
                        pass
                assert time.monotonic() - t0 < 5
        finally:
            child.kill()
            child.wait()


def test_a_selectors_echo_server():
    """A textbook selectors echo server: non-blocking sockets, EVENT_READ only."""
    srv = rdmamsg.create_server((IP, 0))
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.2):
                if key.fileobj is srv:
                    try:
                        conn, _ = srv.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(1000)             # less than arrives: data waits above
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    continue
                conn.setblocking(True)
                conn.sendall(data)
                conn.setblocking(False)

    server = run_in_thread(serve)
    clients = [rdmamsg.create_connection(srv.getsockname(), timeout=60) for _ in range(3)]
    try:
        for round_ in range(20):
            for i, c in enumerate(clients):
                msg = f"{i}:{round_}:".encode() * (1 + round_ * 50)
                c.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    got += c.recv(1 << 16)
                assert got == msg
    finally:
        for c in clients:
            c.close()
        stop.set()
        server.result()
        sel.close()
        srv.close()



@pytest.mark.parametrize("channel", ["send", "write"])
def test_credits_a_recv_took_still_make_the_fd_readable(channel):
    """A blocked non-blocking sender whose credits come back while it polls
    for data (the recv takes the completion, and the fd's event with it)
    must still see its fd readable: the lost wake-up that hung asyncio."""
    cli, conn = socket_pair(channel=channel)
    with cli, conn, selectors.DefaultSelector() as sel:
        cli.setblocking(False)
        sel.register(cli, selectors.EVENT_READ)
        chunk = bytes(cli.endpoint.fragment)
        sent = 0
        with pytest.raises(BlockingIOError):
            while sent < 1 << 30:
                sent += cli.send(chunk)
        assert recv_randomly(conn, sent, random.Random(5)) == bytes(sent)
        time.sleep(0.5)                        # the peer's credit returns arrive
        with pytest.raises(BlockingIOError):
            cli.recv(10)                       # ... and this recv takes them
        assert sel.select(timeout=5), "credits came back but the fd stayed silent"
        assert cli.send(chunk) == len(chunk)
        assert conn.recv(len(chunk)) == chunk

@pytest.mark.parametrize("channel", ["send", "write"])
def test_shutdown_of_a_non_blocking_socket_never_blocks(channel):
    """With the peer out of room, the end of stream cannot go: a
    non-blocking shutdown says so (BlockingIOError, nothing shut) instead of
    waiting, and goes once the peer has read (what hung an asyncio echo in
    one event loop)."""
    cli, conn = socket_pair(channel=channel)
    with cli, conn, selectors.DefaultSelector() as sel:
        cli.setblocking(False)
        sel.register(cli, selectors.EVENT_READ)
        sent = 0
        for piece in (bytes(cli.endpoint.fragment), b"\0"):   # then no room for even a byte
            with pytest.raises(BlockingIOError):
                while sent < 1 << 30:
                    sent += cli.send(piece)
        t0 = time.monotonic()
        with pytest.raises(BlockingIOError):
            cli.shutdown(socket.SHUT_WR)
        assert time.monotonic() - t0 < 1
        assert recv_randomly(conn, sent, random.Random(6)) == bytes(sent)
        deadline = time.monotonic() + 30
        while True:
            assert sel.select(timeout=5), "room came back but the fd stayed silent"
            try:
                cli.shutdown(socket.SHUT_WR)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline
        conn.settimeout(30)
        assert conn.recv(10) == b""
        with pytest.raises(BrokenPipeError):
            cli.send(b"x")


def test_a_line_protocol_over_makefile():
    cli, conn = socket_pair()
    with cli, conn:
        def server():
            with conn.makefile("rb") as rf, conn.makefile("w", encoding="utf-8") as wf:
                for line in rf:
                    wf.write(line.decode().upper())
                    wf.flush()
        t = run_in_thread(server)
        rf = cli.makefile("r", encoding="utf-8", newline="\n")
        wf = cli.makefile("wb", buffering=0)
        for i in range(200):
            wf.write(f"line {i} of the protocol\n".encode())
            assert rf.readline() == f"LINE {i} OF THE PROTOCOL\n"
        cli.shutdown(socket.SHUT_WR)
        t.result()
        rf.close()
        wf.close()


def test_sockopts_and_names():
    cli, conn = socket_pair()
    with cli, conn:
        cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cli.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        assert cli.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        assert cli.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        assert cli.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 1 << 20
        assert cli.getpeername() == conn.getsockname()
        assert cli.family == socket.AF_INET and cli.type == socket.SOCK_STREAM
        cli.sendmsg([b"one ", bytearray(b"two "), memoryview(b"three")])
        got = b""
        while len(got) < 13:
            got += conn.recv(100)
        assert got == b"one two three"


def test_sixty_four_connections_each_moving_1_mib():
    blob = random.Random(64).randbytes(1 << 20)
    digest = hashlib.sha256(blob).digest()
    with rdmamsg.create_server((IP, 0), backlog=64) as srv:
        def acceptor():
            done = []
            for _ in range(64):
                conn, _ = srv.accept()
                done.append(run_in_thread(reply_digest, conn))
            for d in done:
                d.result(timeout=600)

        acc = run_in_thread(acceptor)

        results = [run_in_thread(send_for_digest, srv.getsockname(), blob, 120)
                   for _ in range(64)]
        for r in results:
            assert r.result(timeout=600) == digest
        acc.result(timeout=60)

"""A peer that dies, tokens, and garbage at the listener."""
import os
import signal
import socket
import time

import pytest

import rdmamsg
import rdmamsg.rpc
from rdmamsg.errors import AuthenticationError, HandshakeError
from rdmamsg.protocol import handshake as hs
from support.peers import counter, endpoint_pair, run_in_thread, spawn_stream_peer

IP = os.environ.get("RDMAMSG_SELF", "")


@pytest.mark.parametrize("child_does", ["send", "recv"])
def test_peer_killed_mid_stream_is_noticed_within_5s(child_does):
    with rdmamsg.listen((IP, 0)) as ln:
        child = spawn_stream_peer(IP, ln.address[1], child_does)
        try:
            ep = ln.accept(timeout=60)
            assert child.stdout.readline().strip() == "connected"
            with ep:
                for i in range(2000):
                    if child_does == "send":
                        assert ep.recv(timeout=30) == counter(i, 512)
                    else:
                        ep.send(counter(i, 512))
                os.kill(child.pid, signal.SIGKILL)
                t0 = time.monotonic()
                with pytest.raises(ConnectionResetError):
                    for i in range(2000, 10**9):
                        if child_does == "send":
                            assert ep.recv(timeout=30) == counter(i, 512)
                        else:
                            ep.send(counter(i, 512), timeout=30)
                assert time.monotonic() - t0 < 5
        finally:
            child.kill()
            child.wait()


def test_token_is_checked_and_the_listener_keeps_serving():
    with rdmamsg.listen((IP, 0), token="s3cret") as ln:
        good = run_in_thread(ln.accept, 60)
        with pytest.raises(AuthenticationError, match="token is wrong"):
            rdmamsg.connect(ln.address, timeout=30, token="wrong")
        with pytest.raises(AuthenticationError, match="requires a token"):
            rdmamsg.connect(ln.address, timeout=30)
        with socket.create_connection(ln.address) as raw:          # garbage
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n" * 100)
            raw.recv(100)
        with socket.create_connection(ln.address) as raw:          # a future version
            raw.settimeout(10)
            dec = hs.FrameDecoder()
            hello = dec.feed(raw.recv(4096))[0]
            info = hs.QPInfo(1, 1, bytes(16), 0, 5, 4, 4096, 1000)
            raw.sendall(hs.encode(dict(hs.conn(info, hello["nonce"], bytes(16), b"s3cret"), v=2)))
            reply = dec.feed(raw.recv(4096))[0]
            assert reply["t"] == "refuse" and "protocol 2" in reply["reason"]
        with rdmamsg.connect(ln.address, timeout=30, token="s3cret") as c, good.result() as s:
            c.send(b"authenticated")
            assert s.recv(timeout=30) == b"authenticated"
        assert ln.refused >= 3


def test_client_refuses_a_server_speaking_another_version():
    with socket.create_server((IP, 0)) as srv:
        def fake_server():
            conn, _ = srv.accept()
            with conn:
                conn.sendall(hs.encode(dict(hs.hello(hs.new_nonce(), False), v=7)))
                conn.recv(100)
        h = run_in_thread(fake_server)
        with pytest.raises(HandshakeError, match="protocol 7"):
            rdmamsg.connect(srv.getsockname(), timeout=30)
        h.result()


def test_connect_timeout_on_a_silent_server():
    with socket.create_server((IP, 0)) as srv:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            rdmamsg.connect(srv.getsockname(), timeout=0.5)
        assert time.monotonic() - t0 < 5


def test_without_a_timeout_the_handshake_is_still_bounded():
    # A TCP server that is not an rdmamsg listener and never speaks.
    with socket.create_server((IP, 0)) as srv:
        for connect in (lambda: rdmamsg.connect(srv.getsockname(), handshake_timeout=1.0),
                        lambda: rdmamsg.create_connection(srv.getsockname(),
                                                          handshake_timeout=1.0),
                        lambda: rdmamsg.rpc.Client(srv.getsockname(), connect_timeout=None,
                                                   handshake_timeout=1.0)):
            t0 = time.monotonic()
            with pytest.raises(TimeoutError, match="rdmamsg endpoint"):
                connect()
            assert time.monotonic() - t0 < 5

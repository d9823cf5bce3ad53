"""A peer that dies (mid-stream, mid-handshake on either side, mid-call),
tokens, and garbage at the listener.  The survivor raises the documented
error within 5 s and its verbs resources go back to what they were."""
import os
import signal
import socket
import time

import pytest

import rdmamsg
import rdmamsg.rpc
from rdmamsg.errors import AuthenticationError, HandshakeError
from rdmamsg.protocol import handshake as hs
from support.bed import verbs_counts
from support.peers import counter, endpoint_pair, run_in_thread, spawn, spawn_stream_peer
from support.rpc_handlers import make_server

IP = os.environ.get("RDMAMSG_SELF", "")


@pytest.mark.parametrize("child_does", ["send", "recv"])
def test_peer_killed_mid_stream_is_noticed_within_5s(child_does, report):
    with rdmamsg.listen((IP, 0)) as ln:
        base = verbs_counts()
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
                took = time.monotonic() - t0
                assert took < 5
            assert verbs_counts() == base
            report(f"peer SIGKILLed while it {'sent' if child_does == 'send' else 'received'}: "
                   f"ConnectionResetError after {took:.2f} s, resources back to baseline")
        finally:
            child.kill()
            child.wait()


def _wait_for(cond, seconds: float, what: str) -> float:
    """Poll ``cond`` until true; the seconds it took (AssertionError after ``seconds``)."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < seconds, f"{what} took over {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - t0


# A client that gets as far as the server's accept (so the server has made
# and connected its QP) and then waits to be killed.
CLIENT_IN_HANDSHAKE = """
import socket, sys, time
from rdmamsg.protocol import handshake as hs
raw = socket.create_connection((sys.argv[1], int(sys.argv[2])))
dec = hs.FrameDecoder()
def frame():
    while True:
        msgs = dec.feed(raw.recv(4096))
        if msgs:
            return msgs[0]
hello = frame()
gid = bytes(10) + b"\\xff\\xff" + socket.inet_aton(sys.argv[1])
info = hs.QPInfo(qpn=0x77, psn=1, gid=gid, lid=0, mtu=3, depth=32, bufsize=32768,
                 max_message=1 << 26, extra={"rma": {"qpn": 0x78, "psn": 2}})
raw.sendall(hs.encode(hs.conn(info, hello["nonce"], hs.new_nonce(), None)))
print(frame()["t"], flush=True)
time.sleep(600)
"""

# A server that takes the client's conn message and then waits to be killed.
SERVER_IN_HANDSHAKE = """
import socket, sys, time
from rdmamsg.protocol import handshake as hs
srv = socket.create_server((sys.argv[1], 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.sendall(hs.encode(hs.hello(hs.new_nonce(), False)))
dec = hs.FrameDecoder()
while not dec.feed(conn.recv(4096)):
    pass
print("conn", flush=True)
time.sleep(600)
"""


def test_a_client_killed_mid_handshake_is_refused_freed_and_the_listener_serves_on(report):
    with rdmamsg.listen((IP, 0)) as ln:
        base = verbs_counts()
        accepted = run_in_thread(ln.accept, 120)
        child = spawn(CLIENT_IN_HANDSHAKE, IP, ln.address[1])
        try:
            assert child.stdout.readline().strip() == "accept"
            assert verbs_counts()["qp"] >= base["qp"] + 2   # its QPs exist on our side
            os.kill(child.pid, signal.SIGKILL)
            took = _wait_for(lambda: ln.refused == 1, 5, "refusing the dead client")
            assert isinstance(ln.last_refusal, HandshakeError), repr(ln.last_refusal)
            freed = took + _wait_for(lambda: verbs_counts() == base, 5 - took,
                                     "freeing its QPs and MRs")
            report(f"client SIGKILLed mid-handshake: refused after {took:.2f} s, its QPs and "
                   f"MRs freed after {freed:.2f} s")
        finally:
            child.kill()
            child.wait()
        with rdmamsg.connect(ln.address, timeout=60) as c, accepted.result() as s:
            c.send(b"the next client is served")
            assert s.recv(timeout=30) == b"the next client is served"
    assert verbs_counts() == base


def test_a_server_killed_mid_handshake_fails_the_connect_within_5s(report):
    base = verbs_counts()
    child = spawn(SERVER_IN_HANDSHAKE, IP)
    try:
        port = int(child.stdout.readline())
        pending = run_in_thread(lambda: rdmamsg.connect((IP, port)))
        assert child.stdout.readline().strip() == "conn"
        os.kill(child.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(HandshakeError, match="closed the connection during the handshake"):
            pending.result(30)
        took = time.monotonic() - t0
        assert took < 5
        report(f"server SIGKILLed mid-handshake: HandshakeError after {took:.2f} s")
    finally:
        child.kill()
        child.wait()
    assert verbs_counts() == base


CALLER = """
import sys, time
import rdmamsg.rpc
client = rdmamsg.rpc.Client((sys.argv[1], int(sys.argv[2])))
assert client.call("add", 1, 1) == 2
pending = client.call_async("sleep", 30)
print("calling", flush=True)
time.sleep(600)
"""


def test_a_client_killed_mid_call_is_freed_and_the_server_serves_its_other_clients(report):
    with make_server((IP, 0), workers=4).start() as server, \
            rdmamsg.rpc.Client(server.address, timeout=30) as other:
        assert other.call("add", 2, 2) == 4
        with_one = verbs_counts()
        child = spawn(CALLER, IP, server.address[1])
        try:
            assert child.stdout.readline().strip() == "calling"
            assert server.connections == 2
            busy = run_in_thread(lambda: [other.call("add", i, i) for i in range(300)])
            os.kill(child.pid, signal.SIGKILL)
            took = _wait_for(lambda: server.connections == 1, 5, "dropping the dead client")
            # Its handler still sleeps; the connection's QPs and MRs go regardless.
            freed = took + _wait_for(lambda: verbs_counts() == with_one, 5 - took,
                                     "freeing its resources")
            report(f"RPC client SIGKILLed mid-call: its connection dropped after {took:.2f} s, "
                   f"freed after {freed:.2f} s, the other client served throughout")
            assert busy.result(120) == [2 * i for i in range(300)]
        finally:
            child.kill()
            child.wait()
        assert other.call("add", 5, 5) == 10


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

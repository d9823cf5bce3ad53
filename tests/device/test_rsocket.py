"""The socket facade speaking rsockets (``protocol="rsocket"``) on the device:
ours against ours, against rdma-core's C programs (rstream, and unmodified
socket programs under librspreload.so), and against a peer that breaks the
rules or dies."""
import asyncio
import os
import random
import selectors
import signal
import socket
import sys
import time

import pytest

import rdmamsg
import rdmamsg.aio
from rdmamsg.channel.rsocket_setup import RsListener, rs_connect
from rdmamsg.errors import ProtocolError
from rdmamsg.protocol import rsocket as rs
from support.peers import run_in_thread
from support.rsocket_peers import (PRELOAD, Rogue, finish, kernel_refused, ours, results,
                                   rogue_connect, run, wait_ready, warm_up_librdmacm)
from support.streams import check_recv_flags, check_send_flags, recv_randomly, send_randomly

IP = os.environ.get("RDMAMSG_SELF", "")


@pytest.fixture(scope="module", autouse=True)
def _librdmacm_opened():
    warm_up_librdmacm(IP)


def _port() -> int:
    with socket.socket() as s:
        s.bind((IP, 0))
        return s.getsockname()[1]


def _pair():
    """(client, server) RdmaSockets over rsockets."""
    srv = rdmamsg.create_server((IP, 0), protocol="rsocket")
    srv.settimeout(60)
    box = run_in_thread(srv.accept)
    try:
        client = rdmamsg.create_connection(srv.getsockname(), 60, protocol="rsocket")
    finally:
        conn, _ = box.result()
        srv.close()
    return client, conn


def test_stream_integrity_with_random_chunking():
    client, server = _pair()
    with client, server:
        for size in (1, 100, 65536, 3 << 20):
            data = random.Random(size).randbytes(size)
            tx = run_in_thread(send_randomly, client, data, random.Random(size + 1))
            got = recv_randomly(server, size, random.Random(size + 2))
            tx.result()
            assert got == data
            tx = run_in_thread(send_randomly, server, got, random.Random(size + 3))
            assert recv_randomly(client, size, random.Random(size + 4)) == data
            tx.result()


def test_both_directions_at_once_on_each_socket():
    """A sending and a receiving thread on each socket: four threads share two
    C data paths (one sleeps in epoll, the others on its condition)."""
    client, server = _pair()
    size = 4 << 20
    with client, server:
        a, b = random.Random(1).randbytes(size), random.Random(2).randbytes(size)
        senders = [run_in_thread(send_randomly, client, a, random.Random(3)),
                   run_in_thread(send_randomly, server, b, random.Random(4))]
        from_client = run_in_thread(recv_randomly, server, size, random.Random(5))
        assert recv_randomly(client, size, random.Random(6)) == b
        assert from_client.result() == a
        for tx in senders:
            tx.result()


def test_send_and_recv_flags():
    client, server = _pair()
    with client, server:
        check_send_flags(client, server)
        check_recv_flags(client, server)


def test_half_close_addresses_and_makefile():
    client, server = _pair()
    with client, server:
        assert client.getpeername() == server.getsockname()
        assert server.getpeername() == client.getsockname()
        assert client.getsockname()[0] == IP
        client.sendall(b"line one\nline two\n")
        client.shutdown(socket.SHUT_WR)
        with server.makefile("rb") as f:
            assert f.readline() == b"line one\n"
            assert f.read() == b"line two\n"
        server.sendall(b"still open the other way")
        assert client.recv(100) == b"still open the other way"
        with pytest.raises(BrokenPipeError):
            client.sendall(b"x")
        server.close()
        assert client.recv(100) == b""


def test_timeouts_nonblocking_and_selectors():
    client, server = _pair()
    with client, server:
        # A non-blocking sender stops when the peer lends no more room.  (First,
        # while the peer's ring is idle: its second half is lent once the peer
        # takes data, and a send soon after that could race the lending write.)
        client.setblocking(False)
        sent = 0
        with pytest.raises(BlockingIOError):
            for _ in range(10_000):
                sent += client.send(b"z" * 65536)
        assert sent >= 65536                   # half the peer's ring, lent at connect
        server.settimeout(60)
        got = 0
        while got < sent:
            got += len(server.recv(1 << 20))
        assert got == sent
        client.setblocking(True)
        server.settimeout(0.3)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            server.recv(10)
        assert 0.25 < time.monotonic() - t0 < 5
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.recv(10)
        sel = selectors.DefaultSelector()
        sel.register(server, selectors.EVENT_READ)
        assert sel.select(0.2) == []
        client.sendall(b"wake")
        assert sel.select(30)
        assert server.recv(10) == b"wake"
        with pytest.raises(BlockingIOError):
            server.recv(10)
        sel.close()


def test_asyncio_streams():
    async def main():
        async def echo(reader, writer):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await rdmamsg.aio.start_server(echo, IP, 0, protocol="rsocket")
        port = server.sockets[0].getsockname()[1]
        reader, writer = await rdmamsg.aio.open_connection(IP, port, protocol="rsocket")
        payload = os.urandom(1 << 20)
        writer.write(payload)
        await writer.drain()
        got = await reader.readexactly(len(payload))
        writer.close()
        server.close()
        await server.wait_closed()
        return got == payload

    assert asyncio.run(asyncio.wait_for(main(), 120))


def test_options_the_protocol_cannot_carry_are_refused():
    with pytest.raises(ValueError, match="token"):
        rdmamsg.RdmaSocket(protocol="rsocket", token="secret")
    with pytest.raises(ValueError, match="channel"):
        rdmamsg.create_connection((IP, 1), protocol="rsocket", channel="write")
    with pytest.raises(ValueError, match="protocol"):
        rdmamsg.RdmaSocket(protocol="sdp")


def test_connect_to_nothing_is_refused():
    with pytest.raises(ConnectionRefusedError):
        rdmamsg.create_connection((IP, _port()), 30, protocol="rsocket")


# -- against rdma-core's C implementation ---------------------------------------------

def _rstream_pair(server_cmd, client_cmd, port, timeout=900):
    server = run(server_cmd)
    try:
        wait_ready(server)
        client = run(client_cmd)
        client_out = finish(client, timeout)
    finally:
        if server.poll() is None:
            try:
                server.wait(60)
            except Exception:
                server.kill()
    server_out = server.communicate()[0]
    assert server.returncode == 0, server_out
    return results(client_out), results(server_out)


@pytest.mark.timeout(900)         # about 3 minutes here, above ci/test's 300 s default elsewhere
@pytest.mark.parametrize("we_are", ["client", "server"])
def test_rstream_interop_verified(we_are):
    """rstream -T v (every byte checked on both sides) over its default size
    list: a latency connection, then a bandwidth one (about 3 minutes)."""
    port = _port()
    c_side = ["rstream", "-T", "v", "-p", str(port)]
    py_side = ours("-T", "v", "-p", str(port))
    if we_are == "client":
        srv, cli = c_side + ["-b", IP], py_side + ["-s", IP]
    else:
        srv, cli = py_side + ["-b", IP], c_side + ["-s", IP]
    got, seen = _rstream_pair(srv, cli, port)
    names = [f"{n}_{kind}" for kind in ("lat", "bw") for n in ("64", "4k", "64k", "1m")]
    assert list(got) == names and list(seen) == names, (got, seen)


@pytest.mark.parametrize("preloaded", ["client", "server"])
def test_unmodified_programs_under_the_preload(preloaded):
    """rstream -T s (plain sockets) under librspreload.so against our rstream
    -T s (plain sockets) under python -m rdmamsg.run --protocol rsocket.
    The listener refuses kernel TCP: the bytes went over rsockets.  (CPython
    programs are no C peer here before rdma-core 63: CPython asks socket()
    for SOCK_STREAM | SOCK_CLOEXEC, which rsocket() refused until then, so
    the preload left them on kernel sockets.)"""
    port = _port()
    args = ["-T", "s", "-T", "v", "-p", str(port), "-S", "65536", "-C", "100"]
    c_side = ["rstream", *args]
    py_side = ours(*args, transparent=True)
    if preloaded == "server":
        server = run(c_side + ["-b", IP], env={"LD_PRELOAD": PRELOAD})
        client_cmd = py_side + ["-s", IP]
    else:
        server = run(py_side + ["-b", IP])
        client_cmd = c_side + ["-s", IP]
    server_out = ""
    try:
        server_out = wait_ready(server)
        assert kernel_refused(IP, port)
        env = {"LD_PRELOAD": PRELOAD} if preloaded == "client" else None
        client_out = finish(run(client_cmd, env=env), 600)
        assert "custom" in results(client_out)
    finally:
        if server.poll() is None:
            server.kill()
        server_out += server.communicate()[0]
    if preloaded == "client":
        assert f"listening on {IP}:{port} over RDMA" in server_out
    else:
        assert f"connected to {IP}:{port} over RDMA" in client_out


# -- hostile or broken peers ----------------------------------------------------------

def _good_conn_data() -> bytes:
    return rs.ConnData(16, rs.Sge(0x1000, 1, 2), rs.Sge(0x2000, 1, 65536)).pack()


@pytest.mark.parametrize("bad", ["version", "short"])
def test_bad_private_data_is_refused_and_the_listener_goes_on(bad):
    data = _good_conn_data()
    data = b"\x02" + data[1:] if bad == "version" else data[:10]
    with RsListener((IP, 0)) as ln:
        box = run_in_thread(ln.accept, 60)
        with pytest.raises(ConnectionRefusedError):
            rogue_connect(ln.address, data)
        with rs_connect(ln.address, 30) as good:
            with box.result() as ep:
                good.send(b"fine")
                assert ep.recv(5) == b"fine"
        assert ln.refused == 1


def _rogue_pair():
    ln = RsListener((IP, 0))
    box = run_in_thread(ln.accept, 60)
    try:
        rogue = rs_connect(ln.address, 30)
    finally:
        victim = box.result()
        ln.close()
    return Rogue(rogue), victim


def test_a_write_across_the_lent_slot_is_a_protocol_error():
    rogue, victim = _rogue_pair()
    with rogue.ep, victim:
        rogue.write_data(b"x" * 1000, offset=rs.MAX_TRANSFER - 10)   # lands in the ring
        rogue.write_data(b"y" * (rs.MAX_TRANSFER + 100))              # claims past the slot
        assert victim.recv_into(bytearray(2000), 30) == 1000
        with pytest.raises(ProtocolError, match="slot"):
            victim.recv_into(bytearray(2000), 30)
        with pytest.raises(ProtocolError):
            victim.send(b"no", 5)


def test_a_write_outside_the_ring_never_lands():
    rogue, victim = _rogue_pair()
    with rogue.ep, victim:
        ring = victim._res.ring
        tail = bytes(ring.view[-16:])
        rogue.write_data(b"!" * 64, offset=2 * rs.MAX_TRANSFER)     # one byte past the ring
        with pytest.raises(ConnectionError):
            victim.recv_into(bytearray(100), 30)
        with pytest.raises(ConnectionError):          # the rogue's write failed too
            rogue.ep.recv_into(bytearray(100), 30)
        assert bytes(ring.view[-16:]) == tail


def test_credits_from_the_past_are_a_protocol_error():
    rogue, victim = _rogue_pair()
    with rogue.ep, victim:
        victim.send(b"a" * 10, 30)
        rogue.credits(1)            # the victim has sent 1; this lends nothing new: fine
        rogue.credits(0xFFF0)       # far behind what it already allowed
        with pytest.raises(ProtocolError, match="past"):
            victim.recv_into(bytearray(10), 30)


CHILD = """
import sys, time, rdmamsg
s = rdmamsg.create_connection((sys.argv[1], int(sys.argv[2])), 60, protocol="rsocket")
s.sendall(b"hello")
print("connected", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("peer", ["python", "rstream"])
def test_a_peer_killed_is_a_reset_within_5_s(peer, tmp_path, report):
    with RsListener((IP, 0)) as ln:
        port = ln.address[1]
        if peer == "python":
            script = tmp_path / "child.py"
            script.write_text(CHILD)
            child = run([sys.executable, str(script), IP, str(port)])
        else:
            child = run(["rstream", "-s", IP, "-p", str(port), "-S", "65536", "-C", "100000"])
        try:
            ep = ln.accept(60)
            with ep:
                assert ep.recv_into(bytearray(16), 60) > 0
                t0 = time.monotonic()
                os.kill(child.pid, signal.SIGKILL)
                with pytest.raises(ConnectionResetError):
                    buf = bytearray(1 << 20)
                    while True:
                        ep.recv_into(buf, 30)
                took = time.monotonic() - t0
                report(f"rsocket: a {peer} peer was a reset {took:.2f} s after its SIGKILL")
                assert took < 5
        finally:
            if child.poll() is None:
                child.kill()
            child.communicate()

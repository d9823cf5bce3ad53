"""The socket facade, asyncio streams and the transparent mode between the two
VMs (one side of each test per VM: host 0 serves, host 1 connects)."""
import asyncio
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

import rdmamsg
import rdmamsg.aio
from support.peers import TESTS_DIR, run_in_thread, spawn
from support.streams import recv_randomly, reply_digest, send_for_digest, send_randomly

SIZES = (1, 65536, 1 << 20, 4 << 20)


def stream(pair, **options) -> rdmamsg.RdmaSocket:
    """This host's connected RdmaSocket."""
    if pair.is_server:
        with rdmamsg.create_server((pair.self_ip, pair.data_port), **options) as srv:
            srv.settimeout(120)
            pair.barrier()
            conn, _ = srv.accept()
    else:
        pair.barrier()
        conn = rdmamsg.create_connection((pair.peer_ip, pair.data_port), 120, **options)
    conn.settimeout(120)
    return conn


@pytest.mark.parametrize("channel", ["send", "write"])
def test_stream_integrity_with_random_chunking(pair, channel):
    with stream(pair, channel=channel) as s:
        for size in SIZES:
            if pair.is_server:
                got = recv_randomly(s, size, random.Random(size))
                send_randomly(s, got, random.Random(size + 1))
            else:
                data = random.Random(-size).randbytes(size)
                tx = run_in_thread(send_randomly, s, data, random.Random(size + 2))
                assert recv_randomly(s, size, random.Random(size + 3)) == data
                tx.result()


def test_half_close(pair):
    with stream(pair) as s:
        if pair.is_server:
            got = b""
            while chunk := s.recv(100):
                got += chunk
            s.sendall(got.upper())
        else:
            s.sendall(b"request")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b"REQUEST"
            assert s.recv(100) == b""


PEER = """
import sys, rdmamsg
s = rdmamsg.create_connection((sys.argv[1], int(sys.argv[2])), timeout=120)
print("connected", flush=True)
while True:
    s.sendall(b"y" * 4096)
"""


def test_a_peer_that_dies(pair):
    """Host 1's child process is SIGKILLed; host 0's recv raises
    ConnectionResetError within 5 s."""
    if pair.is_server:
        with rdmamsg.create_server((pair.self_ip, pair.data_port)) as srv:
            srv.settimeout(120)
            pair.barrier()
            conn, _ = srv.accept()
            with conn:
                assert conn.recv(4096)
                pair.exchange("kill now")
                t0 = time.monotonic()
                with pytest.raises(ConnectionResetError):
                    while conn.recv(1 << 16):
                        pass
                elapsed = time.monotonic() - t0
                pair.exchange(elapsed)
                assert elapsed < 5
    else:
        pair.barrier()
        child = spawn(PEER, pair.peer_ip, pair.data_port)
        try:
            assert child.stdout.readline().strip() == "connected"
            assert pair.exchange("ready") == "kill now"
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            assert pair.exchange("killed") < 5
        finally:
            child.kill()
            child.wait()


def test_sixty_four_connections_each_moving_1_mib(pair):
    blob = random.Random(64).randbytes(1 << 20)
    if pair.is_server:
        with rdmamsg.create_server((pair.self_ip, pair.data_port), backlog=64) as srv:
            srv.settimeout(300)
            pair.barrier()
            served = [run_in_thread(reply_digest, srv.accept()[0]) for _ in range(64)]
            for s in served:
                s.result(timeout=600)
        pair.barrier()
    else:
        pair.barrier()
        results = [run_in_thread(send_for_digest, (pair.peer_ip, pair.data_port), blob, 300)
                   for _ in range(64)]
        digest = hashlib.sha256(blob).digest()
        assert [r.result(timeout=600) for r in results] == [digest] * 64
        pair.barrier()


def test_asyncio_echo(pair):
    data = random.Random(7).randbytes(3 << 20)

    async def server():
        done = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            got = await reader.read()
            writer.write(got)
            await writer.drain()
            writer.close()
            await writer.wait_closed()        # the transport still holds what did not fit
            done.set_result(len(got))

        async with await rdmamsg.aio.start_server(handle, pair.self_ip, pair.data_port):
            await asyncio.get_running_loop().run_in_executor(None, pair.barrier)
            n = await asyncio.wait_for(done, 300)
            await asyncio.get_running_loop().run_in_executor(None, pair.exchange, n)

    async def client():
        await asyncio.get_running_loop().run_in_executor(None, pair.barrier)
        reader, writer = await rdmamsg.aio.open_connection(pair.peer_ip, pair.data_port)
        writer.write(data)
        writer.write_eof()
        got = await reader.read()
        server_got = await asyncio.get_running_loop().run_in_executor(None, pair.exchange, 0)
        assert server_got == len(data)
        assert len(got) == len(data) and got == data
        writer.close()
        await writer.wait_closed()

    asyncio.run(server() if pair.is_server else client())


def test_http_server_and_client_through_the_transparent_mode(pair, tmp_path):
    """``python -m http.server`` on host 0, an http.client GET of 10 MiB from
    host 1, both unmodified under ``python -m rdmamsg.run``."""
    body = random.Random(10).randbytes(10 << 20)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run = [sys.executable, "-m", "rdmamsg.run", "-v", "--match"]
    if pair.is_server:
        (tmp_path / "big.bin").write_bytes(body)
        server = subprocess.Popen(
            run + [pair.self_ip, "-m", "http.server", "--bind", pair.self_ip,
                   str(pair.data_port), "--directory", str(tmp_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            assert "Serving HTTP" in server.stdout.readline()
            pair.barrier()
            assert pair.exchange("done") == "done"
        finally:
            server.terminate()
            _, err = server.communicate(timeout=30)
        assert f"listening on {pair.self_ip}:{pair.data_port} over RDMA" in err
    else:
        pair.barrier()
        client = subprocess.run(
            run + [pair.peer_ip, os.path.join(TESTS_DIR, "support", "http_get.py"),
                   f"http://{pair.peer_ip}:{pair.data_port}/big.bin"],
            capture_output=True, text=True, env=env, timeout=300)
        pair.exchange("done")
        assert client.returncode == 0, client.stderr
        assert client.stdout.split() == ["200", str(len(body)), hashlib.sha256(body).hexdigest()]
        assert "over RDMA" in client.stderr

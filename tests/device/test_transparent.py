"""The transparent mode on the device: unmodified standard-library code over
RDMA through ``python -m rdmamsg.run`` and ``rdmamsg.patch``."""
import asyncio
import hashlib
import os
import socket
import socketserver
import subprocess
import sys
import threading

import pytest

import rdmamsg
from rdmamsg.stream.transport import RdmaTransport
from support.peers import TESTS_DIR, run_in_thread

IP = os.environ.get("RDMAMSG_SELF", "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((IP, 0))
        return s.getsockname()[1]


def _run(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "rdmamsg.run", "-v", "--match", IP, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            **kwargs)


def test_http_server_and_client_unmodified_get_10_mib(tmp_path):
    body = os.urandom(10 << 20)
    (tmp_path / "big.bin").write_bytes(body)
    port = _free_port()
    server = _run("-m", "http.server", "--bind", IP, str(port), "--directory", str(tmp_path))
    try:
        assert "Serving HTTP" in server.stdout.readline()
        client = _run(os.path.join(TESTS_DIR, "support", "http_get.py"),
                      f"http://{IP}:{port}/big.bin")
        out, err = client.communicate(timeout=240)
        assert client.returncode == 0, err
        assert out.split() == ["200", str(len(body)), hashlib.sha256(body).hexdigest()]
        assert f"connected to {IP}:{port} over RDMA" in err
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert f"listening on {IP}:{port} over RDMA" in err
    assert '"GET /big.bin HTTP/1.1" 200' in err


@pytest.fixture
def patched():
    with rdmamsg.patch(match=[IP]) as p:
        yield p
    assert socket.socket is rdmamsg.channel.tcp.KernelSocket


class LineEcho(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line.upper())


def test_socketserver_and_create_connection(patched):
    with socketserver.ThreadingTCPServer((IP, 0), LineEcho) as srv:
        assert srv.socket.rdma is not None
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            lines = [f"line {i} ".encode() * (i % 50) + b"\n" for i in range(500)]
            with socket.create_connection(srv.server_address, timeout=60) as c:
                assert c.rdma is not None and isinstance(c, socket.socket)
                f = c.makefile("rwb")
                for line in lines:
                    f.write(line)
                f.flush()
                c.shutdown(socket.SHUT_WR)
                assert f.read() == b"".join(line.upper() for line in lines)
                f.close()
        finally:
            srv.shutdown()


def test_socket_bind_listen_accept_connect(patched):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((IP, 0))
        ls.listen()
        assert ls.rdma is not None
        accepted = run_in_thread(ls.accept)
        c = socket.socket()
        c.settimeout(60)
        assert c.connect_ex(ls.getsockname()) == 0
        conn, addr = accepted.result()
        assert addr == c.getsockname() and conn.rdma is not None
        data = os.urandom(3 << 20)
        sender = run_in_thread(c.sendall, data)
        got = bytearray()
        while len(got) < len(data):
            got += conn.recv(1 << 20)
        sender.result()
        assert got == data
        c.close()
        assert conn.recv(10) == b""
        conn.close()
    # Not matching: the loopback stays on the kernel.
    with socket.create_server(("127.0.0.1", 0)) as ks:
        assert ks.rdma is None


def test_asyncio_streams(patched):
    data = os.urandom(2 << 20)

    async def main():
        async def handle(reader, writer):
            writer.write(await reader.read())      # to EOF
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, IP, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection(IP, port)
            assert isinstance(writer.transport, RdmaTransport)
            writer.write(data)
            writer.write_eof()
            assert await reader.read() == data
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())

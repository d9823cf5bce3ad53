"""50,000 messages of random sizes between the two VMs while netem loses,
reorders and duplicates packets on both NICs, through each message channel,
the socket facade and RPC at once (one connection each, so that one waiting
out a retransmission does not hold up the others).  Everything arrives,
complete, in order and checksummed, and nothing hangs: every wait is
bounded.  Host 1 sends or calls; host 0 receives or serves."""
import collections
import concurrent.futures
import hashlib
import random
import socket
import time

import pytest

import rdmamsg
import rdmamsg.rpc
from support.rpc_handlers import make_server

N = 50_000
BLOCK = random.Random(0).randbytes(1 << 20)
pytestmark = pytest.mark.timeout(1500)


def messages(seed: int):
    """Message i of N: its index (8 bytes) and a slice of BLOCK of random
    length: 90% under 1 KiB, 9.9% up to 16 KiB, 0.1% up to 256 KiB."""
    rng = random.Random(seed)
    view = memoryview(BLOCK)
    for i in range(N):
        r = rng.random()
        n = (rng.randrange(1024) if r < 0.9 else rng.randrange(1024, 16384) if r < 0.999
             else rng.randrange(16384, 256 << 10))
        off = rng.randrange(len(BLOCK) - n)
        yield i.to_bytes(8, "little") + view[off:off + n]


# -- host 0: receive and check --------------------------------------------------------

def receive_messages(ln: rdmamsg.Listener) -> int:
    with ln, ln.accept(timeout=300) as ep:
        h, total = hashlib.sha256(), 0
        for i, want in enumerate(messages(1)):
            got = ep.recv(timeout=300)
            assert got == want, f"message {i}: {len(got)} bytes, index " \
                                f"{int.from_bytes(got[:8], 'little')}, want {len(want)}"
            h.update(got)
            total += len(got)
        ep.send(h.digest())
        return total


def receive_stream(srv: rdmamsg.RdmaSocket) -> int:
    with srv:
        srv.settimeout(300)
        conn, _ = srv.accept()
    with conn:
        conn.settimeout(300)
        expected, pending = messages(2), memoryview(b"")
        h, total, rng, buf = hashlib.sha256(), 0, random.Random(3), bytearray(1 << 20)
        while n := conn.recv_into(buf, rng.choice([1, 100, 4096, 65536, 1 << 20])):
            got = memoryview(buf)[:n]
            h.update(got)
            total += n
            while got:                          # compare with the stream sent, in order
                if not pending:
                    pending = memoryview(next(expected))
                k = min(len(pending), len(got))
                assert got[:k] == pending[:k], f"the stream differs near byte {total - n}"
                got, pending = got[k:], pending[k:]
        assert next(expected, None) is None and not pending, "the stream ended early"
        conn.sendall(h.digest())
        return total


# -- host 1: send or call -------------------------------------------------------------

def send_messages(address, channel: str) -> int:
    with rdmamsg.connect(address, timeout=300, channel=channel) as ep:
        h, total = hashlib.sha256(), 0
        for msg in messages(1):
            ep.send(msg, timeout=300)
            h.update(msg)
            total += len(msg)
        assert ep.recv(timeout=600) == h.digest()
        return total


def send_stream(address) -> int:
    with rdmamsg.create_connection(address, timeout=300) as sock:
        sock.settimeout(300)
        h, total = hashlib.sha256(), 0
        for msg in messages(2):
            sock.sendall(msg)
            h.update(msg)
            total += len(msg)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(64):
            got += chunk
        assert got == h.digest()
        return total


def call_all(address) -> int:
    with rdmamsg.rpc.Client(address, timeout=300) as client:
        total, window = 0, collections.deque()
        for i, msg in enumerate(messages(4)):
            data = bytes(msg)
            total += len(data)
            want = [i, hashlib.sha256(data).digest()]
            window.append((client.call_async("digest", i, data), want))
            if len(window) == 64:
                fut, want = window.popleft()
                assert fut.result() == want
        for fut, want in window:
            assert fut.result() == want
        return total


def test_everything_arrives(pair, netem, report):
    ports = [pair.data_port + k for k in range(4)]
    names = ["send channel", "write channel", "socket facade", "RPC calls"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        if pair.is_server:
            with make_server((pair.self_ip, ports[3])).start():
                here = [(pair.self_ip, port) for port in ports]
                jobs = [pool.submit(_timed, receive_messages, rdmamsg.listen(here[0])),
                        pool.submit(_timed, receive_messages, rdmamsg.listen(here[1])),
                        pool.submit(_timed, receive_stream, rdmamsg.create_server(here[2]))]
                pair.barrier()                           # all four listen
                done = [job.result(timeout=1400) for job in jobs]
                pair.barrier(timeout=1500)               # host 1 has its RPC replies
        else:
            pair.barrier()
            jobs = [pool.submit(_timed, send_messages, (pair.peer_ip, ports[0]), "send"),
                    pool.submit(_timed, send_messages, (pair.peer_ip, ports[1]), "write"),
                    pool.submit(_timed, send_stream, (pair.peer_ip, ports[2])),
                    pool.submit(_timed, call_all, (pair.peer_ip, ports[3]))]
            try:
                done = [job.result(timeout=1400) for job in jobs]
            finally:
                pair.barrier(timeout=1500)
    for name, (nbytes, took) in zip(names, done):
        report(f"lossy {netem}, {name}: {N} messages, {nbytes / 2**20:.0f} MiB, all in order "
               f"and checksummed, in {took:.0f} s (host {pair.index})")


def _timed(fn, *args) -> tuple[int, float]:
    """``fn(*args)`` (bytes moved) and the seconds it took."""
    t0 = time.monotonic()
    return fn(*args), time.monotonic() - t0

"""50,000 messages of random sizes between the two VMs while netem loses,
reorders and duplicates packets on both NICs: through each message channel,
the socket facade and RPC.  Everything arrives, complete, in order and
checksummed, and nothing hangs (every wait is bounded).  Host 1 sends or
calls; host 0 receives or serves."""
import collections
import hashlib
import random
import socket
import time

import pytest

import rdmamsg
from support.pair import connected
from support.rpc_handlers import served

N = 50_000
BLOCK = random.Random(0).randbytes(2 << 20)


def messages(seed: int):
    """Message i of N: its index (8 bytes) and a slice of BLOCK whose length is
    random: 90% under 1 KiB, 9.9% up to 64 KiB, 0.1% up to 1 MiB."""
    rng = random.Random(seed)
    view = memoryview(BLOCK)
    for i in range(N):
        r = rng.random()
        n = (rng.randrange(1024) if r < 0.9 else rng.randrange(1024, 65536) if r < 0.999
             else rng.randrange(65536, 1 << 20))
        off = rng.randrange(len(BLOCK) - n)
        yield i.to_bytes(8, "little") + view[off:off + n]


def _report(report, pair, netem, what, t0, nbytes):
    took = time.monotonic() - t0
    report(f"lossy {netem}, {what}: {N} messages, {nbytes / 2**20:.0f} MiB in {took:.0f} s "
           f"(host {pair.index})")


@pytest.mark.parametrize("channel", ["send", "write"])
def test_channel(pair, netem, channel, report):
    with connected(pair, channel=channel) as ep:
        t0, h, total = time.monotonic(), hashlib.sha256(), 0
        if pair.is_server:
            for i, want in enumerate(messages(1)):
                got = ep.recv(timeout=120)
                assert got == want, f"message {i}: {len(got)} bytes, index " \
                                    f"{int.from_bytes(got[:8], 'little')}, want {len(want)}"
                h.update(got)
                total += len(got)
            ep.send(h.digest())
        else:
            for msg in messages(1):
                ep.send(msg, timeout=120)
                h.update(msg)
                total += len(msg)
            assert ep.recv(timeout=300) == h.digest()
        _report(report, pair, netem, f"{channel} channel", t0, total)


def test_socket_facade(pair, netem, report):
    t0, h, total = time.monotonic(), hashlib.sha256(), 0
    if pair.is_server:
        with rdmamsg.create_server((pair.self_ip, pair.data_port)) as srv:
            pair.barrier()
            srv.settimeout(120)
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(120)
                expected = messages(2)
                pending = memoryview(b"")
                rng = random.Random(3)
                buf = bytearray(1 << 20)
                while True:
                    n = conn.recv_into(buf, rng.choice([1, 100, 4096, 65536, 1 << 20]))
                    if not n:
                        break
                    got = memoryview(buf)[:n]
                    h.update(got)
                    total += n
                    while got:               # compare with the stream sent, in order
                        if not pending:
                            pending = memoryview(bytes(next(expected)))
                        k = min(len(pending), len(got))
                        assert got[:k] == pending[:k], f"stream differs at byte {total - n}"
                        got, pending = got[k:], pending[k:]
                assert next(expected, None) is None and not pending, "the stream ended early"
                conn.sendall(h.digest())
    else:
        pair.barrier()
        with rdmamsg.create_connection((pair.peer_ip, pair.data_port), timeout=120) as sock:
            sock.settimeout(120)
            for msg in messages(2):
                sock.sendall(msg)
                h.update(msg)
                total += len(msg)
            sock.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := sock.recv(64):
                got += chunk
            assert got == h.digest()
    _report(report, pair, netem, "socket facade", t0, total)


def test_rpc(pair, netem, report):
    def body(client):
        t0, total, window = time.monotonic(), 0, collections.deque()
        for i, msg in enumerate(messages(4)):
            data = bytes(msg)
            total += len(data)
            window.append((client.call_async("digest", i, data),
                           [i, hashlib.sha256(data).digest()]))
            if len(window) == 64:
                fut, want = window.popleft()
                assert fut.result() == want
        for fut, want in window:
            assert fut.result() == want
        _report(report, pair, netem, "RPC calls", t0, total)

    served(pair, body)

"""The message channels between the two VMs (one side of each test per VM)."""
import os
import signal
import time

import pytest

import rdmamsg
from support.pair import connected
from support.peers import counter, run_in_thread, spawn_stream_peer

SIZES = [0, 1, 64, 257, 1000, 1024, 4096, 4097, 16384, 16385, 65536, 524_288, 1 << 20,
         (2 << 20) + 5, 16 << 20]     # around buffer, fragment and (write) ring-quarter sizes
CHANNELS = pytest.mark.parametrize("channel", ["send", "write"])


@CHANNELS
def test_integrity_across_sizes(pair, channel):
    with connected(pair, channel=channel) as ep:
        for n in SIZES:
            if pair.is_server:
                ep.send(ep.recv(timeout=120))
            else:
                data = os.urandom(n)
                ep.send(data)
                assert ep.recv(timeout=120) == data, n


@CHANNELS
def test_100k_small_messages_in_order(pair, channel):
    n = 100_000
    with connected(pair, channel=channel) as ep:
        if pair.is_server:
            for i in range(n):
                assert ep.recv(timeout=120) == counter(i, 8 + i % 57), i
            ep.send(b"done")
        else:
            for i in range(n):
                ep.send(counter(i, 8 + i % 57))
            assert ep.recv(timeout=120) == b"done"


def test_both_directions_at_once(pair):
    n = 5000
    with connected(pair) as ep:
        tag, other = (b"S", b"C") if pair.is_server else (b"C", b"S")
        tx = run_in_thread(lambda: [ep.send(tag + counter(i, 300)) for i in range(n)])
        for i in range(n):
            assert ep.recv(timeout=120) == other + counter(i, 300)
        tx.result(timeout=300)


@pytest.mark.parametrize("child_does", ["send", "recv"])
def test_peer_killed_mid_stream(pair, child_does):
    """Host 1 runs the peer in a child process and SIGKILLs it; host 0 must
    raise ConnectionResetError within 5 s."""
    if pair.is_server:
        with rdmamsg.listen((pair.self_ip, pair.data_port)) as ln:
            pair.barrier()
            with ln.accept(timeout=120) as ep:
                for i in range(1000):
                    if child_does == "send":
                        assert ep.recv(timeout=60) == counter(i, 512)
                    else:
                        ep.send(counter(i, 512), timeout=60)
                pair.exchange("kill now")
                t0 = time.monotonic()
                with pytest.raises(ConnectionResetError):
                    for i in range(1000, 10**9):
                        if child_does == "send":
                            assert ep.recv(timeout=30) == counter(i, 512)
                        else:
                            ep.send(counter(i, 512), timeout=30)
                elapsed = time.monotonic() - t0
                pair.exchange(elapsed)
                assert elapsed < 5
    else:
        pair.barrier()
        child = spawn_stream_peer(pair.peer_ip, pair.data_port, child_does, 120)
        try:
            assert child.stdout.readline().strip() == "connected"
            assert pair.exchange("ready to kill") == "kill now"
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            assert pair.exchange("killed") < 5
        finally:
            child.kill()
            child.wait()

"""msgpack RPC between the two VMs (host 0 serves, host 1 calls)."""
import collections
import concurrent.futures
import hashlib
import random
import signal
import time

import numpy as np
import pytest

import rdmamsg
import rdmamsg.rpc
from support.peers import spawn
from support.rpc_handlers import SERVE_IN_CHILD, make_server, served

SIZES = (0, 1, 65535, 65536, 1 << 20, 16 << 20)


def test_ten_thousand_calls_32_at_a_time(pair):
    def body(client):
        rng = random.Random(2)
        window = collections.deque()
        for _ in range(10_000):
            a, b = rng.randrange(-2 ** 40, 2 ** 40), rng.randrange(-2 ** 40, 2 ** 40)
            window.append((client.call_async("add", a, b), a + b))
            if len(window) == 32:
                fut, want = window.popleft()
                assert fut.result() == want
        for fut, want in window:
            assert fut.result() == want

    served(pair, body)


@pytest.mark.parametrize("channel", ["write", "send"])
def test_payloads_from_0_b_to_16_mib(pair, channel):
    def body(client):
        for size in SIZES:
            data = random.Random(size).randbytes(size)
            got = client.call("echo", data)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            arr = np.frombuffer(data[: size - size % 4], dtype=np.int32)
            assert (client.call("echo", arr) == arr).all()

    served(pair, body, channel=channel)


def test_128_outstanding_calls_and_remote_errors(pair):
    def body(client):
        futures = [client.call_async("nap", i, random.Random(i).uniform(0, 0.3))
                   for i in range(128)]
        done = [f.result() for f in concurrent.futures.as_completed(futures, timeout=120)]
        assert sorted(done) == list(range(128)) and done != list(range(128))
        with pytest.raises(rdmamsg.RemoteError, match="builtins.ValueError: across"):
            client.call("fail", "across")
        with pytest.raises(TimeoutError):
            client.with_timeout(0.2).call("sleep", 1)
        assert client.call("add", 1, 2) == 3

    served(pair, body)


def test_a_server_killed_mid_call(pair):
    """Host 0's server process is SIGKILLed while host 1 waits on a call;
    the call fails with ConnectionResetError within 5 s."""
    if pair.is_server:
        child = spawn(SERVE_IN_CHILD, pair.self_ip, pair.data_port)
        try:
            assert int(child.stdout.readline()) == pair.data_port
            pair.barrier()
            assert pair.exchange("ready") == "kill now"
            child.send_signal(signal.SIGKILL)
            child.wait()
            pair.exchange("killed")
        finally:
            child.kill()
            child.wait()
    else:
        pair.barrier()
        with rdmamsg.rpc.Client((pair.peer_ip, pair.data_port), timeout=60) as client:
            assert client.call("add", 1, 1) == 2
            pending = client.call_async("sleep", 60)
            pair.exchange("kill now")
            t0 = time.monotonic()
            with pytest.raises(ConnectionResetError):
                pending.result(30)
            elapsed = time.monotonic() - t0
            pair.exchange("done")
            assert elapsed < 5

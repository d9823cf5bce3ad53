"""msgpack RPC on the device: calls, payloads up to 16 MiB, concurrency,
remote errors, deadlines, cancellation, dead servers and malformed frames."""
import asyncio
import concurrent.futures
import gc
import hashlib
import os
import random
import signal
import time

import numpy as np
import pytest

import rdmamsg
import rdmamsg.rpc
from support.peers import spawn
from support.rpc_handlers import SERVE_IN_CHILD, make_server

IP = os.environ.get("RDMAMSG_SELF", "")
SIZES = (0, 1, 1000, 65535, 65536, 1 << 20, 16 << 20)


@pytest.fixture
def server():
    with make_server((IP, 0), workers=4).start() as srv:
        yield srv


@pytest.fixture(params=["write", "send"])
def client(server, request):
    with rdmamsg.rpc.Client(server.address, timeout=60, channel=request.param) as c:
        yield c


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.randrange(-2 ** 63, 2 ** 64)
    if kind == 1:
        return rng.random()
    if kind == 2:
        return "".join(chr(rng.randrange(32, 0x2000)) for _ in range(rng.randrange(20)))
    if kind == 3:
        return rng.randbytes(rng.choice([0, 5, 100, 5000, 70000]))
    if kind == 4:
        return rng.choice([None, True, False])
    if kind in (5, 6):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {str(rng.randrange(100)): random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_ten_thousand_calls_with_random_arguments(client):
    rng = random.Random(1)
    for i in range(10_000):
        args = [random_value(rng) for _ in range(rng.randrange(1, 4))]
        if i % 2:
            a, b = rng.randrange(-10 ** 9, 10 ** 9), rng.randrange(-10 ** 9, 10 ** 9)
            assert client.call("add", a, b) == a + b
        else:
            expected = args[0] if len(args) == 1 else args
            assert client.call("echo", *args) == expected


def test_echo_of_payloads_from_0_b_to_16_mib_arrives_checked(client):
    for size in SIZES:
        data = random.Random(size).randbytes(size)
        for value in (data, bytearray(data)):
            got = client.call("echo", value)
            assert type(got) is type(value) and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        arr = np.frombuffer(data[: size - size % 8], dtype=np.float64).reshape(-1, 1)
        got = client.call("echo", arr)
        assert isinstance(got, np.ndarray) and got.dtype == arr.dtype and got.shape == arr.shape
        assert got.tobytes() == arr.tobytes()
    matrix = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert client.call("describe", matrix) == ["<i4", [3, 4], 66.0]


def test_128_outstanding_calls_complete_out_of_order(client):
    delays = [random.Random(i).uniform(0, 0.5) for i in range(128)]
    futures = [client.call_async("nap", i, d) for i, d in enumerate(delays)]
    order = []
    for fut in concurrent.futures.as_completed(futures, timeout=60):
        order.append(fut.result())
    assert sorted(order) == list(range(128))
    assert order != list(range(128)), "replies came in request order: nothing ran concurrently"
    assert [f.result() for f in futures] == list(range(128))


def test_calls_nobody_waits_for_complete_all_the_same(client):
    # No result(), no callback, no wait(): the parked reader receives these
    # replies once they have waited a moment with nobody receiving them.
    futures = [client.call_async("add", i, i) for i in range(64)]
    time.sleep(3)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [2 * i for i in range(64)]


def test_sync_callers_async_calls_and_a_long_call_share_one_connection(client):
    # A synchronous caller receives replies itself while it waits: its turn
    # must pass to other callers and to the reader, and no reply may be lost.
    slow = client.call_async("sleep", 0.5)                  # the reader receives this one
    long_wait = concurrent.futures.ThreadPoolExecutor(1).submit(client.call, "nap", -1, 1.0)
    time.sleep(0.1)                                         # it holds the turn

    def caller(t):
        for i in range(300):
            assert client.call("add", t, i) == t + i
            if i % 50 == 0:
                assert client.call_async("add", i, -t).result(timeout=60) == i - t
        return t

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(caller, range(4))) == [0, 1, 2, 3]
    assert long_wait.result(timeout=60) == -1
    assert slow.result(timeout=60) == 0.5
    time.sleep(1.5)                                         # the reader, parked, unparks
    assert client.call_async("add", 2, 2).result(timeout=10) == 4
    assert client.call("add", 3, 3) == 6


def test_an_unclosed_client_warns_and_its_connection_ends(server):
    c = rdmamsg.rpc.Client(server.address, timeout=30)
    assert c.call("add", 1, 2) == 3
    assert c.call_async("add", 2, 2).result(timeout=30) == 4
    assert server.connections == 1
    with pytest.warns(ResourceWarning, match="unclosed rdmamsg.rpc.Client"):
        del c
        gc.collect()
    deadline = time.monotonic() + 10
    while server.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.connections == 0


def test_remote_exceptions_and_unknown_methods(client):
    with pytest.raises(rdmamsg.RemoteError) as info:
        client.call("fail", "it broke")
    err = info.value
    assert (err.type_name, err.message) == ("builtins.ValueError", "it broke")
    assert "raise ValueError(message)" in err.remote_traceback
    with pytest.raises(rdmamsg.rpc.UnknownMethodError, match="no_such"):
        client.call("no_such")
    with pytest.raises(rdmamsg.RemoteError, match="TypeError"):
        client.call("add", 1)                      # a wrong signature is the handler's error
    with pytest.raises(TypeError, match="cannot send"):
        client.call("echo", object())
    assert client.call("add", 2, 3) == 5           # the connection is fine


def test_a_timeout_is_a_timeout_error_and_the_server_skips_expired_work(server):
    with rdmamsg.rpc.Client(server.address) as client:
        busy = [client.call_async("sleep", 1.0) for _ in range(4)]     # every worker
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            client.with_timeout(0.3).call("record", "late")
        assert time.monotonic() - t0 < 1.0
        late = client.with_timeout(0.3).call_async("record", "late-async")
        with pytest.raises(TimeoutError):
            late.result(5)
        assert [f.result(10) for f in busy] == [1.0] * 4
        time.sleep(0.2)
        assert client.call("records") == []         # both expired before a worker was free


def test_a_cancelled_call_does_not_run(server):
    with rdmamsg.rpc.Client(server.address) as client:
        busy = [client.call_async("sleep", 0.5) for _ in range(4)]
        doomed = client.call_async("record", "cancelled")
        assert doomed.cancel()
        [f.result(10) for f in busy]
        assert client.call("record", "kept") == "kept"
        assert client.call("records") == ["kept"]


def test_asyncio_client_and_asyncio_handlers(server):
    async def main():
        async with rdmamsg.rpc.AsyncClient(server.address, timeout=30) as client:
            assert await client.call("add", 1, 2) == 3
            got = await asyncio.gather(*(client.call("nap", i, 0.1) for i in range(64)))
            assert got == list(range(64))
            task = asyncio.ensure_future(client.call("nap", 0, 10))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(TimeoutError):
                await client.with_timeout(0.2).call("sleep", 1)
            assert await client.call("echo", b"x" * 100_000) == b"x" * 100_000

    asyncio.run(main())


def test_handlers_on_the_event_loop():
    with make_server((IP, 0), handlers="asyncio").start() as srv, \
            rdmamsg.rpc.Client(srv.address, timeout=30) as client:
        assert client.call("add", 5, 6) == 11
        assert client.call("nap", 7, 0.01) == 7


def test_inline_handlers_run_one_at_a_time_in_order():
    with make_server((IP, 0), handlers="inline").start() as srv, \
            rdmamsg.rpc.Client(srv.address, timeout=30) as client:
        futures = [client.call_async("record", i) for i in range(50)]
        assert [f.result() for f in futures] == list(range(50))
        assert client.call("records") == list(range(50))      # ran in arrival order
        assert client.call("echo", b"y" * 200_000) == b"y" * 200_000
        assert client.call("nap", 3, 0.01) == 3                 # coroutines: the loop still
        with pytest.raises(rdmamsg.RemoteError, match="boom"):
            client.call("fail", "boom")
        assert client.call("add", 1, 2) == 3


def test_pool_handlers_run_at_most_workers_at_once_while_the_connection_keeps_reading():
    # With the Cython poller the reader that receives a request runs it and
    # the connection's second reader receives meanwhile (relaying); the
    # slots still bound the handlers to ``workers``.
    with make_server((IP, 0), workers=3).start() as srv, \
            rdmamsg.rpc.Client(srv.address, timeout=30) as client:
        names = [client.call("thread_name") for _ in range(20)]
        if client._link.ep.poller == "cython":
            assert names == ["rdmamsg-rpc-conn"] * 20
            # Quick handlers: the reader that runs them reads on; the reading
            # moves only when one lasts 1 ms (which a busy host may cause).
            ids = [client.call("thread_id") for _ in range(20)]
            assert sum(a != b for a, b in zip(ids, ids[1:])) <= 3, ids
        else:
            assert all(n.startswith("rdmamsg-rpc-handler") for n in names), names
        for _ in range(3):
            t0 = time.monotonic()
            held = [client.call_async("hold", 0.4) for _ in range(7)]
            assert [f.result(10) for f in held] == [0.4] * 7
            assert 1.2 <= time.monotonic() - t0 < 3          # three waves of three
            assert client.call("peak") == 3
        long = client.call_async("hold", 1.0)
        time.sleep(0.1)
        t0 = time.monotonic()
        assert [client.call("add", i, 1) for i in range(20)] == list(range(1, 21))
        assert time.monotonic() - t0 < 0.9                    # read while the handler runs
        assert long.result(10) == 1.0
        with pytest.raises(rdmamsg.RemoteError, match="boom"):
            client.call("fail", "boom")
        assert client.call("add", 2, 2) == 4


def test_closing_a_server_does_not_wait_for_a_running_handler():
    srv = make_server((IP, 0), workers=2).start()
    try:
        with rdmamsg.rpc.Client(srv.address, timeout=30) as client:
            assert client.call("add", 1, 1) == 2
            pending = client.call_async("sleep", 3)
            time.sleep(0.3)
            t0 = time.monotonic()
            srv.close()
            assert time.monotonic() - t0 < 1.5
            with pytest.raises(ConnectionResetError):
                pending.result(10)
    finally:
        srv.close()


def test_the_c_fast_paths_hand_what_they_do_not_cover_to_the_general_path():
    # With the Cython poller, an inline server and a synchronous caller with
    # nothing else pending run in ext/rpc/_rpcfast; frames outside its codec's
    # subset (ext types, out-of-band buffers, errors, late replies) go to
    # wire.py in the middle of those loops.  The Python poller runs the
    # general path throughout: the same assertions hold.
    with make_server((IP, 0), handlers="inline").start() as srv, \
            rdmamsg.rpc.Client(srv.address, timeout=30) as client:
        rng = random.Random(3)
        for _ in range(2000):
            args = [random_value(rng) for _ in range(rng.randrange(1, 4))]
            assert client.call("echo", *args) == (args[0] if len(args) == 1 else args)
        assert client.call("echo", 1, k=[b"v", 2.5]) == [[1], {"k": [b"v", 2.5]}]
        assert type(client.call("echo", bytearray(b"ba"))) is bytearray
        big = random.Random(4).randbytes(300_000)
        assert client.call("echo", big) == big
        pair = [b"a" * 40_000, b"b" * 40_000]       # inline, in frames over 64 KiB
        assert client.call("echo", *pair) == pair
        with pytest.raises(rdmamsg.RemoteError, match="boom"):
            client.call("fail", "boom")
        with pytest.raises(rdmamsg.rpc.UnknownMethodError):
            client.call("no_such")
        with pytest.raises(TypeError, match="cannot send"):
            client.call("echo", 1 << 64)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            client.with_timeout(0.2).call("sleep", 0.6)
        assert time.monotonic() - t0 < 0.5
        assert client.call("add", 2, 3) == 5       # the timed-out call's late reply is dropped
        assert client.call_async("add", 1, 1).result(10) == 2
        assert client.call("add", 4, 4) == 8
    with pytest.raises(OSError):
        client.call("add", 1, 2)


def serve_in_child():
    child = spawn(SERVE_IN_CHILD, IP, 0)
    port = int(child.stdout.readline())
    return child, (IP, port)


@pytest.mark.parametrize("sig, why", [(signal.SIGKILL, None), (signal.SIGSTOP, "silent")],
                         ids=["killed", "hung (keepalive)"])
def test_a_server_killed_or_hung_mid_call_fails_the_call_within_5s(sig, why, report):
    child, address = serve_in_child()
    try:
        with rdmamsg.rpc.Client(address) as client:
            assert client.call("add", 1, 1) == 2
            pending = client.call_async("sleep", 60)
            time.sleep(0.3)
            child.send_signal(sig)
            t0 = time.monotonic()
            with pytest.raises(ConnectionResetError, match=why):
                pending.result(10)
            took = time.monotonic() - t0
            assert took < 5
            report(f"RPC server {'hung (SIGSTOP)' if why else 'SIGKILLed'} mid-call: the call "
                   f"failed with ConnectionResetError after {took:.2f} s")
            with pytest.raises(ConnectionResetError):
                client.call("add", 1, 1)
    finally:
        child.kill()
        child.wait()


def test_a_malformed_frame_closes_that_connection_only(server):
    with rdmamsg.rpc.Client(server.address, timeout=30) as good:
        assert good.call("add", 1, 2) == 3
        with rdmamsg.connect(server.address, timeout=30) as bad:
            bad.send(b"\x95\x00\x01garbage")
            with pytest.raises((ConnectionResetError, EOFError)):
                bad.recv(timeout=10)
        assert good.call("add", 3, 4) == 7
        deadline = time.monotonic() + 5
        while server.connections != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_closed_client_fails_its_pending_calls_and_refuses_new_ones(server):
    client = rdmamsg.rpc.Client(server.address)
    pending = client.call_async("sleep", 2)
    client.close()
    with pytest.raises(OSError):
        pending.result(5)
    with pytest.raises(OSError):
        client.call("add", 1, 2)

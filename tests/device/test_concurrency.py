"""RPC under concurrency, on the device: many threads and tasks on one
client, a server and its clients in one process, and close() with calls in
flight.  Every result is checked; no thread may be left waiting.

RDMAMSG_REPEAT runs each test that many times in one go (ci/test --full
sets it), to catch a lost wake-up that one run would miss.
"""
import asyncio
import concurrent.futures
import os
import threading
import time

import pytest

import rdmamsg.rpc
from support.rpc_handlers import make_server

IP = os.environ.get("RDMAMSG_SELF", "")
REPEAT = int(os.environ.get("RDMAMSG_REPEAT", "1"))
THREADS, CALLS = 16, 2000


@pytest.fixture
def server():
    with make_server((IP, 0), workers=4).start() as srv:
        yield srv


def repeated(test):
    return pytest.mark.parametrize("repetition", range(REPEAT))(test)


def _mixed_calls(client: rdmamsg.rpc.Client, t: int, calls: int) -> int:
    """``calls`` calls from thread ``t``: sync and async, results checked."""
    for i in range(calls):
        payload = f"{t}:{i}".encode()
        if i % 4 == 0:
            assert client.call_async("add", t, i).result(timeout=60) == t + i
        elif i % 4 == 1:
            assert client.call("echo", payload) == payload
        elif i % 4 == 2:
            futures = [client.call_async("add", i, k) for k in range(3)]
            assert [f.result(timeout=60) for f in futures] == [i, i + 1, i + 2]
        else:
            assert client.call("add", i, -t) == i - t
    return t


# 32,000 calls: minutes under TCG, more on the pure-pyverbs poller.
@repeated
@pytest.mark.timeout(900)
def test_16_threads_of_mixed_sync_and_async_calls_share_one_client(server, repetition):
    with rdmamsg.rpc.Client(server.address, timeout=60) as client:
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            done = pool.map(_mixed_calls, [client] * THREADS, range(THREADS), [CALLS] * THREADS)
            assert sorted(done) == list(range(THREADS))
        # Nothing is left pending, and the connection still serves.
        assert client.call("add", 1, 2) == 3


@repeated
def test_1000_concurrent_asyncio_tasks_on_one_async_client(server, repetition):
    async def main():
        async with rdmamsg.rpc.AsyncClient(server.address, timeout=60) as client:
            return await asyncio.gather(*(client.call("add", i, i) for i in range(1000)))

    assert asyncio.run(asyncio.wait_for(main(), 300)) == [2 * i for i in range(1000)]


@repeated
def test_a_server_and_four_clients_in_one_process(repetition):
    # Every end (the server's readers and pool, each client's reader and
    # callers) is a thread of this one process.
    with make_server((IP, 0), workers=4).start() as srv:
        clients = [rdmamsg.rpc.Client(srv.address, timeout=60) for _ in range(4)]
        try:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                done = pool.map(_mixed_calls, clients * 2, range(8), [200] * 8)
                assert sorted(done) == list(range(8))
        finally:
            for c in clients:
                c.close()


def _callers_until_closed(client, n: int) -> tuple[list, list]:
    """``n`` threads calling until the client fails them: (threads, errors)."""
    errors: list = []

    def caller():
        try:
            while True:
                client.call("sleep", 0.05)
        except BaseException as exc:       # noqa: BLE001 (checked by the test)
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, errors


def _ended(threads: list, within: float) -> bool:
    deadline = time.monotonic() + within
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)


@repeated
def test_closing_a_client_fails_every_call_in_flight_and_no_thread_hangs(server, repetition):
    client = rdmamsg.rpc.Client(server.address, timeout=60)
    futures = [client.call_async("sleep", 1) for _ in range(32)]
    threads, errors = _callers_until_closed(client, 8)
    time.sleep(0.3)
    client.close()
    assert _ended(threads, 5), "a caller still waits after close()"
    # The documented error: OSError(EBADF) ("closed"), for every pending call.
    assert len(errors) == 8 and all(isinstance(e, OSError) for e in errors), errors
    for fut in futures:
        with pytest.raises(OSError):
            fut.result(timeout=5)
    with pytest.raises(OSError):
        client.call("add", 1, 2)


@repeated
def test_closing_the_server_fails_every_call_in_flight_with_connection_reset(repetition):
    srv = make_server((IP, 0), workers=4).start()
    client = rdmamsg.rpc.Client(srv.address, timeout=60)
    try:
        futures = [client.call_async("sleep", 1) for _ in range(32)]
        threads, errors = _callers_until_closed(client, 8)
        time.sleep(0.3)
        closing = threading.Thread(target=srv.close)
        closing.start()
        assert _ended(threads, 5), "a caller still waits after the server closed"
        assert len(errors) == 8, errors
        assert all(isinstance(e, ConnectionResetError) for e in errors), errors
        for fut in futures:
            with pytest.raises(ConnectionResetError):
                fut.result(timeout=5)
        assert _ended([closing], 10), "Server.close() hangs with calls in flight"
    finally:
        client.close()
        srv.close()


@repeated
def test_an_async_client_whose_server_closes_fails_every_task_and_lets_go_of_its_fd(repetition):
    # The loop receives the replies itself (it watches the endpoint's fd):
    # losing the server must still fail every task, and leave no fd behind.
    fds = len(os.listdir("/proc/self/fd"))
    srv = make_server((IP, 0), workers=4).start()

    async def main():
        async with rdmamsg.rpc.AsyncClient(srv.address, timeout=60) as client:
            assert await asyncio.gather(*(client.call("add", i, i) for i in range(64))) \
                == [2 * i for i in range(64)]
            tasks = [asyncio.ensure_future(client.call("sleep", 1)) for _ in range(32)]
            await asyncio.sleep(0.3)
            closing = threading.Thread(target=srv.close)
            closing.start()
            got = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
            assert all(isinstance(e, ConnectionResetError) for e in got), got
            closing.join(10)
            assert not closing.is_alive(), "Server.close() hangs with calls in flight"

    try:
        asyncio.run(main())
    finally:
        srv.close()
    deadline = time.monotonic() + 5
    while len(os.listdir("/proc/self/fd")) > fds and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(os.listdir("/proc/self/fd")) <= fds

"""The rdma:// comm backend against distributed's Comm contract, on the device."""
import asyncio
import os
import time

import numpy as np
import pytest

import dask
from distributed.comm import connect, listen, parse_address
from distributed.comm.core import CommClosedError, FatalCommClosedError
from distributed.comm.registry import get_backend
from distributed.protocol import Serialized, to_serialize

IP = os.environ.get("RDMAMSG_SELF", "")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 240))


async def echo(comm):
    try:
        while True:
            await comm.write(await comm.read())
    except CommClosedError:
        pass
    finally:
        await comm.close()


def test_the_entry_point_finds_the_backend():
    backend = get_backend("rdma")
    assert type(backend).__module__ == "rdmamsg.dask.backend"
    assert backend.resolve_address("localhost:8786") == "127.0.0.1:8786"
    assert backend.get_address_host_port(f"{IP}:99") == (IP, 99)
    assert backend.get_local_address_for(f"{IP}:1") == IP


@pytest.mark.parametrize("clients", [1, 20])
def test_ping_pong_with_many_clients_at_once(clients):
    async def client(address, i):
        comm = await connect(address)
        try:
            for n in range(20):
                msg = {"op": "ping", "i": i, "n": n, "data": b"x" * (n * 97)}
                await comm.write(msg)
                assert await comm.read() == msg
        finally:
            await comm.close()

    async def main():
        async with listen(f"rdma://{IP}:0", echo) as listener:
            await asyncio.gather(*(client(listener.contact_address, i) for i in range(clients)))

    run(main())


def test_addresses_are_real_on_both_ends_and_repr_names_them():
    async def main():
        seen = asyncio.get_running_loop().create_future()

        async def handle(comm):
            seen.set_result((comm.local_address, comm.peer_address))
            await echo(comm)

        async with listen(f"rdma://{IP}:0", handle) as listener:
            port = int(listener.listen_address.rsplit(":", 1)[1])
            assert listener.listen_address == listener.contact_address == f"rdma://{IP}:{port}"
            assert listener.prefix == "rdma://"
            comm = await connect(listener.contact_address)
            server_local, server_peer = await seen
            assert server_local == f"rdma://{IP}:{port}"
            assert server_peer == comm.local_address
            assert comm.peer_address == server_local
            assert parse_address(comm.local_address)[1].startswith(IP + ":")
            assert comm.local_info["address"] == comm.local_address
            assert f"local={comm.local_address}" in repr(comm)
            assert comm.same_host
            await comm.close()
            assert comm.closed() and "(closed)" in repr(comm)

    run(main())


def test_a_listener_on_every_interface_gives_out_the_rdma_address():
    async def main():
        async with listen("rdma://0.0.0.0:0", echo) as listener:
            assert listener.listen_address.startswith("rdma://0.0.0.0:")
            host = parse_address(listener.contact_address)[1].rsplit(":", 1)[0]
            assert host == IP
            comm = await connect(listener.contact_address)
            await comm.write(1)
            assert await comm.read() == 1
            await comm.close()

    run(main())


def test_a_host_name_and_the_loopback_address_work():
    async def main():
        async with listen("rdma://localhost:0", echo) as listener:
            port = listener.listen_address.rsplit(":", 1)[1]
            comm = await connect(f"rdma://localhost:{port}")
            assert comm.peer_address == f"rdma://127.0.0.1:{port}"
            await comm.write("over loopback")
            assert await comm.read() == "over loopback"
            await comm.close()

    run(main())


def test_a_close_by_the_peer_ends_a_waiting_read_and_later_calls():
    async def main():
        async def close_soon(comm):
            await comm.read()
            await comm.close()

        async with listen(f"rdma://{IP}:0", close_soon) as listener:
            comm = await connect(listener.contact_address)
            reading = asyncio.ensure_future(comm.read())
            await asyncio.sleep(0.2)
            assert not reading.done()
            await comm.write("bye")
            with pytest.raises(CommClosedError):
                await asyncio.wait_for(reading, 10)
            assert comm.closed()
            with pytest.raises(CommClosedError):
                await comm.read()
            with pytest.raises(CommClosedError):
                await comm.write("again")

    run(main())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_our_own_close_ends_a_waiting_read(how):
    async def main():
        async with listen(f"rdma://{IP}:0", echo) as listener:
            comm = await connect(listener.contact_address)
            reading = asyncio.ensure_future(comm.read())
            await asyncio.sleep(0.2)
            start = time.monotonic()
            if how == "close":
                await comm.close()
            else:
                comm.abort()
            with pytest.raises(CommClosedError):
                await asyncio.wait_for(reading, 10)
            assert time.monotonic() - start < 3
            with pytest.raises(CommClosedError):
                await comm.write("x")

    run(main())


def test_connecting_to_nothing_times_out_with_oserror():
    async def main():
        async with listen(f"rdma://{IP}:0", echo) as listener:
            address = listener.contact_address
        start = time.monotonic()
        with pytest.raises(OSError, match="Timed out trying to connect"):
            await connect(address, timeout=1.5)
        assert time.monotonic() - start < 6

    run(main())


def test_a_cancelled_connect_leaves_nothing_behind():
    async def main():
        async with listen(f"rdma://{IP}:0", echo) as listener:
            for _ in range(5):
                task = asyncio.ensure_future(connect(listener.contact_address))
                await asyncio.sleep(0.01)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            await asyncio.sleep(2)      # the handshakes the cancels left go on, then close

    run(main())


def test_a_wrong_token_is_refused_at_once():
    async def main():
        with dask.config.set({"distributed.comm.rdma.token": "right"}):
            listener = await listen(f"rdma://{IP}:0", echo)
        try:
            with dask.config.set({"distributed.comm.rdma.token": "wrong"}):
                start = time.monotonic()
                with pytest.raises(FatalCommClosedError, match="token"):
                    await connect(listener.contact_address, timeout=20)
                assert time.monotonic() - start < 10
            with dask.config.set({"distributed.comm.rdma.token": "right"}):
                comm = await connect(listener.contact_address)
                await comm.write("in")
                assert await comm.read() == "in"
                await comm.close()
        finally:
            listener.stop()

    run(main())


def test_a_hundred_listeners():
    async def main():
        listeners = [await listen(f"rdma://{IP}:0", echo) for _ in range(100)]
        try:
            assert len({ln.contact_address for ln in listeners}) == 100
            for ln in listeners[::10]:
                comm = await connect(ln.contact_address)
                await comm.write(ln.contact_address)
                assert await comm.read() == ln.contact_address
                await comm.close()
        finally:
            for ln in listeners:
                ln.stop()

    run(main())


@pytest.mark.parametrize("deserialize", [True, False])
def test_deserialize_on_and_off(deserialize):
    async def main():
        got = asyncio.get_running_loop().create_future()

        async def handle(comm):
            got.set_result(await comm.read())
            await comm.close()

        arr = np.arange(1000)
        async with listen(f"rdma://{IP}:0", handle, deserialize=deserialize) as listener:
            comm = await connect(listener.contact_address)
            await comm.write({"x": to_serialize(arr), "y": 5})
            msg = await got
            await comm.close()
        assert msg["y"] == 5
        if deserialize:
            assert (msg["x"] == arr).all()
        else:
            assert isinstance(msg["x"], Serialized)

    run(main())


def test_eight_mib_payloads_both_ways():
    async def main():
        async with listen(f"rdma://{IP}:0", echo) as listener:
            comm = await connect(listener.contact_address)
            for seed in range(3):
                blob = np.random.default_rng(seed).bytes(8 << 20)
                await comm.write({"blob": blob})
                assert (await comm.read())["blob"] == blob
            await comm.close()

    run(main())


def test_arrays_arrive_in_buffers_of_their_own():
    async def main():
        got = asyncio.get_running_loop().create_future()

        async def handle(comm):
            got.set_result(await comm.read())
            await comm.close()

        a = np.arange(100_000, dtype=np.float64)
        b = np.arange(50_000, dtype=np.int32)
        async with listen(f"rdma://{IP}:0", handle) as listener:
            comm = await connect(listener.contact_address)
            await comm.write({"a": to_serialize(a), "b": to_serialize(b), "tag": "t" * 100})
            msg = await got
            await comm.close()
        ra, rb = msg["a"], msg["b"]
        assert (ra == a).all() and (rb == b).all()
        assert not np.shares_memory(ra, rb)
        for arr in (ra, rb):
            base = arr
            while getattr(base, "base", None) is not None:
                base = base.base
            assert memoryview(base).nbytes == arr.nbytes    # nothing else in its buffer
            assert arr.flags.writeable

    run(main())

"""asyncio streams over RDMA on the device (rdmamsg.aio)."""
import asyncio
import hashlib
import os
import random
import time

import pytest

import rdmamsg
import rdmamsg.aio

IP = os.environ.get("RDMAMSG_SELF", "")


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("channel", ["send", "write"])
def test_an_asyncio_echo_with_every_reader_call(channel):
    async def main():
        async with await rdmamsg.aio.start_server(_echo, IP, 0, channel=channel) as server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await rdmamsg.aio.open_connection(IP, port, channel=channel)
            assert writer.get_extra_info("peername") == (IP, port)
            assert isinstance(writer.get_extra_info("socket"), rdmamsg.RdmaSocket)
            writer.write(b"hello\nworld\n")
            assert await reader.readline() == b"hello\n"
            assert await reader.readuntil(b"ld") == b"world"
            assert await reader.readexactly(1) == b"\n"
            blob = random.Random(7).randbytes(6 << 20)
            async def pump():
                for i in range(0, len(blob), 100_000):
                    writer.write(blob[i:i + 100_000])
                    await writer.drain()
                writer.write_eof()
            sender = asyncio.create_task(pump())
            got = await reader.read()                   # to EOF
            await sender
            assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
            assert reader.at_eof()
            writer.close()
            await writer.wait_closed()
    asyncio.run(asyncio.wait_for(main(), 300))


def test_write_eof_with_the_peer_out_of_room_does_not_block_the_loop():
    """write_eof() right after a burst the peer has not read: the end of
    stream waits for room without blocking the loop that must read it."""
    async def main():
        got = asyncio.get_running_loop().create_future()

        async def slow_reader(reader, writer):
            await got                      # read nothing until the sender is done
            data = await reader.read()
            writer.close()
            got_all.set_result(len(data))

        got_all = asyncio.get_running_loop().create_future()
        async with await rdmamsg.aio.start_server(slow_reader, IP, 0, recv_depth=4) as server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await rdmamsg.aio.open_connection(IP, port, recv_depth=4)
            writer.write(bytes(4 << 20))
            writer.write_eof()             # must return at once, the data still queued
            got.set_result(None)
            assert await asyncio.wait_for(got_all, 120) == 4 << 20
            writer.close()
            await writer.wait_closed()
    asyncio.run(asyncio.wait_for(main(), 300))


def test_many_asyncio_clients_and_an_idle_connection_burns_no_cpu():
    async def main():
        server = await rdmamsg.aio.start_server(_echo, IP, 0)
        port = server.sockets[0].getsockname()[1]

        async def client(i):
            reader, writer = await rdmamsg.aio.open_connection(IP, port)
            for n in range(20):
                line = f"{i}:{n}\n".encode()
                writer.write(line)
                await writer.drain()
                assert await reader.readline() == line
            return reader, writer

        pairs = await asyncio.gather(*(client(i) for i in range(8)))
        await asyncio.sleep(0.5)
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(2.0)                        # 8 idle connections, reads pending
        cpu = time.process_time() - cpu0
        assert cpu < 0.5 * (time.monotonic() - t0), f"{cpu:.2f}s of CPU while idle"
        for reader, writer in pairs:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
    asyncio.run(asyncio.wait_for(main(), 300))

"""A client for aio_echo_server.py.

    python examples/aio_echo_client.py HOST [PORT]
"""
import asyncio
import sys

import rdmamsg.aio


async def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 7473
    reader, writer = await rdmamsg.aio.open_connection(host, port)
    for word in ("zero-copy", "kernel-bypass", "asyncio"):
        writer.write(word.encode() + b"\n")
        await writer.drain()
        print("echoed:", (await reader.readline()).decode().rstrip())
    writer.close()
    await writer.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())

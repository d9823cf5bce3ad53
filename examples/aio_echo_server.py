"""An asyncio echo server over RDMA (rdmamsg.aio): asyncio's own streams.

    python examples/aio_echo_server.py [HOST [PORT]]
"""
import asyncio
import os
import sys

import rdmamsg.aio


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()
    await writer.wait_closed()
    print(f"{peer[0]}:{peer[1]} closed", flush=True)


async def main() -> None:
    host = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("RDMAMSG_SELF", "0.0.0.0")
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 7473
    server = await rdmamsg.aio.start_server(echo, host, port)
    print(f"asyncio echo server on {host}:{port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())

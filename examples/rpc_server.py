"""An rdmamsg.rpc server: a few functions any client host can call.

    python examples/rpc_server.py [HOST [PORT]]      (HOST: the RDMA device's IP)

RPC_ONCE=1 makes it exit after its first client leaves (for ci/demo).
"""
import os
import sys
import threading
import time

import rdmamsg.rpc


def main() -> None:
    host = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("RDMAMSG_SELF", "0.0.0.0")
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 7480
    server = rdmamsg.rpc.Server((host, port))

    @server.register
    def add(a, b):
        return a + b

    @server.register
    def checksum(data):
        """Large bytes or arrays arrive out of band, straight into their objects."""
        import hashlib
        return hashlib.sha256(data).hexdigest()

    @server.register
    def scale(array, factor):
        return array * factor                      # a numpy array goes back as one

    @server.register
    def divide(a, b):
        return a / b                               # b=0: the client gets a RemoteError

    @server.register
    async def wait(seconds):
        import asyncio
        await asyncio.sleep(seconds)
        return f"waited {seconds} s"

    print(f"rpc server on {host}:{port}", flush=True)
    if os.environ.get("RPC_ONCE") == "1":
        server.start()
        while server.connections == 0:
            time.sleep(0.1)
        while server.connections:
            time.sleep(0.1)
        server.close()
        return
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()

"""The RPC handlers the device and two-host tests call."""
from __future__ import annotations

import asyncio
import hashlib
import threading
import time

import rdmamsg.rpc


def make_server(address, **kw) -> rdmamsg.rpc.Server:
    server = rdmamsg.rpc.Server(address, **kw)
    ran: list = []
    lock = threading.Lock()

    @server.register
    def echo(*args, **kwargs):
        return [list(args), kwargs] if kwargs else (args[0] if len(args) == 1 else list(args))

    @server.register
    def add(a, b):
        return a + b

    @server.register
    def fail(message):
        raise ValueError(message)

    @server.register
    def sleep(seconds):
        time.sleep(seconds)
        return seconds

    @server.register("record")
    def record(tag):
        with lock:
            ran.append(tag)
        return tag

    @server.register
    def records():
        with lock:
            return list(ran)

    running = [0, 0]                                 # now, most at once

    @server.register
    def hold(seconds):
        with lock:
            running[0] += 1
            running[1] = max(running)
        time.sleep(seconds)
        with lock:
            running[0] -= 1
        return seconds

    @server.register
    def peak():
        with lock:
            most, running[1] = running[1], running[0]
            return most

    @server.register
    def thread_name():
        return threading.current_thread().name

    @server.register
    def thread_id():
        return threading.get_ident()

    @server.register
    async def nap(i, seconds):
        await asyncio.sleep(seconds)
        return i

    @server.register
    def digest(i, data):
        return [i, hashlib.sha256(data).digest()]

    @server.register
    def describe(arr):
        return [arr.dtype.str, list(arr.shape), float(arr.sum())]

    return server


def served(pair, body, **client_kw) -> None:
    """A two-host RPC test: host 0 serves, host 1 runs ``body(client)`` on a
    Client made with ``client_kw`` (channel=...)."""
    if pair.is_server:
        with make_server((pair.self_ip, pair.data_port)).start():
            pair.barrier()
            pair.barrier(timeout=1200)              # host 1 is done
    else:
        pair.barrier()
        try:
            with rdmamsg.rpc.Client((pair.peer_ip, pair.data_port), timeout=120,
                                    **client_kw) as client:
                body(client)
        finally:
            pair.barrier()


# Takes the host, the port and, optionally, make_server's options as JSON.
SERVE_IN_CHILD = """
import json, sys
from support.rpc_handlers import make_server
options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
server = make_server((sys.argv[1], int(sys.argv[2])), **options)
print(server.address[1], flush=True)
server.serve_forever()
"""

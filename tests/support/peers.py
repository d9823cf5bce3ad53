"""Connected endpoints for device tests, and peers in child processes."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading

import rdmamsg


@contextlib.contextmanager
def endpoint_pair(ip: str, token=None, client_kw=None, **kw):
    """(client, server) endpoints connected through a listener on ``ip``."""
    with rdmamsg.listen((ip, 0), token=token, **kw) as ln:
        box: dict = {}

        def accept():
            try:
                box["ep"] = ln.accept(timeout=60)
            except BaseException as exc:  # reported below
                box["err"] = exc

        t = threading.Thread(target=accept)
        t.start()
        try:
            client = rdmamsg.connect(ln.address, timeout=60, token=token, **{**kw, **(client_kw or {})})
        finally:
            t.join()
        if "err" in box:
            client.close()
            raise box["err"]
        server = box["ep"]
        try:
            yield client, server
        finally:
            client.close()
            server.close()


def run_in_thread(fn, *args):
    """Start fn(*args) in a thread; .result() joins it and re-raises its error."""
    box: dict = {}

    def body():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:
            box["err"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()

    class Handle:
        def result(self, timeout=120):
            t.join(timeout)
            if t.is_alive():
                raise TimeoutError(f"{fn.__name__} did not finish")
            if "err" in box:
                raise box["err"]
            return box.get("value")

    return Handle()


TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spawn(code: str, *args) -> subprocess.Popen:
    """Run ``code`` in a new Python process (argv[1:] = args; it can import
    ``support``); stdout is piped."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS_DIR, env.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, env=env, text=True)


STREAM_PEER = """
import sys, rdmamsg
from support.peers import counter
ep = rdmamsg.connect((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
print("connected", flush=True)
i = 0
while True:
    if sys.argv[3] == "send":
        ep.send(counter(i, 512))
    else:
        assert ep.recv() == counter(i, 512)
    i += 1
"""


def spawn_stream_peer(ip: str, port: int, does: str, connect_timeout: float = 60):
    """A child process that connects and then sends (or receives and checks)
    ``counter(i, 512)`` forever: a peer to kill mid-stream.  It prints
    "connected" once it is."""
    return spawn(STREAM_PEER, ip, port, does, connect_timeout)


def echo(ep, n: int) -> None:
    """Send back each of the next ``n`` messages."""
    for _ in range(n):
        ep.send(ep.recv(timeout=60))


def counter(i: int, size: int = 64) -> bytes:
    """Message i: its number, repeated to ``size`` bytes (checkable in order)."""
    return (i.to_bytes(8, "little") * (size // 8 + 1))[:size]

"""Limits: a locked-memory limit too small to register the pool, and a pool
that runs out of buffers for new connections."""
import os
import shlex
import subprocess
import sys
import textwrap

import pytest

import rdmamsg
from rdmamsg.errors import HandshakeError, PoolExhaustedError
from rdmamsg.verbs import context
from support.peers import counter, endpoint_pair, run_in_thread, spawn

IP = os.environ.get("RDMAMSG_SELF", "")
# As root the memlock limit does not apply (CAP_IPC_LOCK): drop the capability,
# as a user has none, and set the limit to 1 MiB (a pool chunk is 4 MiB).
SMALL_MEMLOCK = "ulimit -l 1024 && exec setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock "


def _run_limited(code: str, *args) -> str:
    cmd = SMALL_MEMLOCK + shlex.join([sys.executable, "-c", textwrap.dedent(code), *map(str, args)])
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_client_under_a_small_memlock_limit_gets_an_error_naming_it():
    with rdmamsg.listen((IP, 0)) as ln:
        out = _run_limited("""
            import sys, rdmamsg
            try:
                rdmamsg.connect((sys.argv[1], int(sys.argv[2])), timeout=60)
            except rdmamsg.RdmaError as exc:
                print(exc.call, exc.errno, exc, flush=True)
            """, IP, ln.address[1])
    assert out.startswith("ibv_reg_mr 12 ibv_reg_mr failed: Cannot allocate memory"), out
    assert "RLIMIT_MEMLOCK is 1048576 bytes" in out and "ulimit -l unlimited" in out


def test_a_listener_under_a_small_memlock_limit_refuses_with_the_reason():
    server = """
        import sys, rdmamsg
        with rdmamsg.listen((sys.argv[1], 0)) as ln:
            print(ln.address[1], flush=True)
            try:
                ln.accept(timeout=60)
            except TimeoutError:
                pass
        """
    cmd = SMALL_MEMLOCK + shlex.join([sys.executable, "-c", textwrap.dedent(server), IP])
    child = subprocess.Popen(["bash", "-c", cmd], stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        with pytest.raises(HandshakeError, match="refused the connection: ibv_reg_mr failed.*"
                                                 "RLIMIT_MEMLOCK is 1048576 bytes"):
            rdmamsg.connect((IP, port), timeout=60)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


# A listener whose pool holds 8 MiB: four send-channel connections of the
# default 2 MiB (64 buffers of 32 KiB) each.  It echoes until each peer closes.
SMALL_POOL_SERVER = """
import sys, threading
import rdmamsg
rdmamsg.configure_pool(max_bytes=8 << 20)
ln = rdmamsg.listen((sys.argv[1], 0))
print(ln.address[1], flush=True)
def echo(ep):
    with ep:
        try:
            while True:
                ep.send(ep.recv())
        except (EOFError, ConnectionError):
            pass
while True:
    threading.Thread(target=echo, args=(ln.accept(),), daemon=True).start()
"""


def test_a_listener_out_of_pool_memory_refuses_new_clients_and_serves_again_after_a_close():
    child = spawn(SMALL_POOL_SERVER, IP)
    try:
        address = (IP, int(child.stdout.readline()))
        clients = [rdmamsg.connect(address, timeout=60) for _ in range(4)]
        with pytest.raises(HandshakeError, match="memory pool exhausted"):
            rdmamsg.connect(address, timeout=60)
        for i, c in enumerate(clients):          # those in use are unaffected
            c.send(counter(i, 50_000))
            assert c.recv(timeout=30) == counter(i, 50_000)
        clients.pop().close()
        late = None
        for _ in range(50):                      # the server frees it once it sees the CLOSE
            try:
                late = rdmamsg.connect(address, timeout=60)
                break
            except HandshakeError:
                pass
        assert late is not None, "the pool did not serve again after a connection closed"
        clients.append(late)
        late.send(b"served again")
        assert late.recv(timeout=30) == b"served again"
    finally:
        for c in clients:
            c.close()
        child.kill()
        child.wait()


def test_a_connect_that_finds_its_own_pool_exhausted_raises_pool_exhausted_error(monkeypatch):
    monkeypatch.setitem(context._pool_options, "max_bytes", 4 << 20)   # one pair: 2 x 2 MiB
    with endpoint_pair(IP) as (c, s):
        with rdmamsg.listen((IP, 0)) as ln:
            pending = run_in_thread(ln.accept, 5)
            with pytest.raises(PoolExhaustedError, match="memory pool exhausted"):
                rdmamsg.connect(ln.address, timeout=30)
            with pytest.raises(TimeoutError):
                pending.result()
        c.send(b"unaffected")
        assert s.recv(timeout=30) == b"unaffected"

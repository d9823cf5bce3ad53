"""fork(): a child must not disturb its parent's connections, using an
inherited object in the child is a clear InheritedError, and workers that
make their own endpoints work (multiprocessing, fork and spawn)."""
import os
import pickle
import subprocess
import sys

import pytest

import rdmamsg
import rdmamsg.rpc
from rdmamsg.errors import InheritedError
from support.peers import TESTS_DIR, endpoint_pair, run_in_thread, spawn
from support.rpc_handlers import make_server

IP = os.environ.get("RDMAMSG_SELF", "")

# A whole program: the child drops everything it inherited, closes it
# explicitly too, collects, and exits normally (interpreter finalization
# included); only then does the parent use its connections again.
CHILD_EXITS = """
import gc, os, sys
import rdmamsg
from support.peers import endpoint_pair, counter
IP = sys.argv[1]
with endpoint_pair(IP) as (c, s), endpoint_pair(IP, channel="write") as (wc, ws):
    target = bytearray(4096)
    grant = s.expose(target, access="write")
    c.send(b"x"); assert s.recv(timeout=30) == b"x"
    pid = os.fork()
    if pid == 0:
        for ep in (c, s, wc, ws):
            ep.close()
            # What the child's garbage collector does once nothing refers to them:
            ep._parts.qp.qp = ep._parts.cq.cq = ep._parts.cq.channel = None
        try:
            grant.revoke()
            sys.exit(3)                 # it must not deregister the parent's memory
        except rdmamsg.InheritedError:
            pass
        del c, s, wc, ws, grant
        gc.collect()
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
    for i in range(200):
        c.send(counter(i, 3000)); assert s.recv(timeout=30) == counter(i, 3000)
        ws.send(counter(i, 70000)); assert wc.recv(timeout=30) == counter(i, 70000)
    c.write(grant.descriptor, b"one-sided still works")
    assert bytes(target[:21]) == b"one-sided still works"
    grant.revoke()
print("parent ok", flush=True)
"""


def test_a_child_that_closes_drops_and_exits_leaves_the_parent_alone():
    child = spawn(CHILD_EXITS, IP)
    out, _ = child.communicate(timeout=240)
    assert child.returncode == 0 and out.strip() == "parent ok"


# The same for rsockets (their QP and rdma_cm ids): the child's uses are an
# InheritedError, its close() and exit destroy nothing of the parent's.
RS_CHILD_EXITS = """
import gc, os, socket, sys, threading
import rdmamsg
IP = sys.argv[1]
srv = rdmamsg.create_server((IP, 0), protocol="rsocket")
srv.settimeout(60)
box = []
t = threading.Thread(target=lambda: box.append(srv.accept()[0]))
t.start()
cli = rdmamsg.create_connection(srv.getsockname(), 60, protocol="rsocket")
t.join(60)
conn = box.pop()
cli.sendall(b"x"); assert conn.recv(1) == b"x"
pid = os.fork()
if pid == 0:
    for use in (lambda: cli.sendall(b"child"), lambda: conn.recv(1), srv.accept):
        try:
            use()
            sys.exit(3)
        except rdmamsg.InheritedError:
            pass
    for sock in (cli, conn, srv):
        sock.close()
    del cli, conn, srv, sock
    gc.collect()
    sys.exit(0)
_, status = os.waitpid(pid, 0)
assert status == 0, status
for i in range(100):
    cli.sendall(b"%06d" % i); assert conn.recv(6, socket.MSG_WAITALL) == b"%06d" % i
t = threading.Thread(target=lambda: box.append(srv.accept()[0]))
t.start()
again = rdmamsg.create_connection(srv.getsockname(), 60, protocol="rsocket")
t.join(60)
again.sendall(b"still listening"); assert box.pop().recv(15, socket.MSG_WAITALL) == b"still listening"
print("parent ok", flush=True)
"""


def test_a_child_with_inherited_rsockets_leaves_the_parent_alone():
    child = spawn(RS_CHILD_EXITS, IP)
    out, _ = child.communicate(timeout=240)
    assert child.returncode == 0 and out.strip() == "parent ok"


def _in_child(fn) -> list:
    """Fork; run ``fn()`` in the child, which sends back what it returns (or
    raises) and leaves at once with os._exit."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                result = fn()
            except BaseException as exc:     # reported to the parent
                result = [("raised", type(exc).__name__, str(exc))]
            os.write(w, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def _attempt(name, fn):
    try:
        fn()
    except InheritedError as exc:
        return (name, "InheritedError", str(exc))
    except BaseException as exc:
        return (name, type(exc).__name__, str(exc))
    return (name, "no error", "")


def test_an_inherited_object_used_in_the_child_raises_inherited_error():
    with endpoint_pair(IP) as (c, s), make_server((IP, 0), workers=2).start() as server, \
            rdmamsg.rpc.Client(server.address, timeout=30) as client, \
            rdmamsg.create_server((IP, 0)) as srv:
        sock_peer = run_in_thread(srv.accept)
        sock = rdmamsg.create_connection(srv.getsockname(), timeout=30)
        conn, _ = sock_peer.result()
        target = bytearray(64)
        grant = s.expose(target, access="write")
        assert client.call("add", 1, 2) == 3
        # A thread of the parent waits in recv (inside the engine) during the fork.
        waiting = run_in_thread(s.recv, 60)

        def uses():
            return [_attempt("send", lambda: c.send(b"from the child")),
                    _attempt("recv", lambda: s.recv(timeout=1)),
                    _attempt("write", lambda: c.write(grant.descriptor, b"child")),
                    _attempt("revoke", grant.revoke),
                    _attempt("rpc call", lambda: client.call("add", 2, 2)),
                    _attempt("rpc call_async", lambda: client.call_async("add", 2, 2)),
                    _attempt("sendall", lambda: sock.sendall(b"child")),
                    _attempt("close", lambda: (c.close(), client.close(), sock.close()))]

        got = _in_child(uses)
        assert [g[:2] for g in got] == [
            ("send", "InheritedError"), ("recv", "InheritedError"), ("write", "InheritedError"),
            ("revoke", "InheritedError"), ("rpc call", "InheritedError"),
            ("rpc call_async", "InheritedError"), ("sendall", "InheritedError"),
            ("close", "no error")], got
        assert "before fork()" in got[0][2] and str(os.getpid()) in got[0][2]
        # The parent carries on: its waiting receive, messages, one-sided, RPC, sockets.
        c.send(b"to the waiting thread")
        assert waiting.result(30) == b"to the waiting thread"
        c.write(grant.descriptor, b"parent")
        assert bytes(target[:6]) == b"parent"
        grant.revoke()
        assert client.call("add", 3, 4) == 7
        sock.sendall(b"parent's stream")
        assert conn.recv(100) == b"parent's stream"
        sock.close()
        conn.close()


# A whole program, so that multiprocessing's own pipes and helper processes
# stay out of the test process (whose fds are counted).
WORKERS = """
import multiprocessing, sys, threading
import rdmamsg
from support.bed import resource_counts
from support.peers import counter, echo, endpoint_pair
from support.workers import connect_and_echo
IP, method = sys.argv[1], sys.argv[2]
N_WORKERS, N_MSGS = 3, 20
if __name__ == "__main__":
    base = resource_counts()
    with endpoint_pair(IP) as (c, s), rdmamsg.listen((IP, 0)) as ln:
        def serve():
            eps = [ln.accept(timeout=120) for _ in range(N_WORKERS)]
            threads = [threading.Thread(target=echo, args=(ep, N_MSGS)) for ep in eps]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for ep in eps:
                ep.close()
        server = threading.Thread(target=serve)
        server.start()
        with multiprocessing.get_context(method).Pool(N_WORKERS) as pool:
            digests = pool.starmap(connect_and_echo, [(ln.address, N_MSGS)] * N_WORKERS)
        server.join(120)
        assert len(set(digests)) == N_WORKERS, digests
        for i in range(100):                        # the parent's own connection
            c.send(counter(i, 500))
            assert s.recv(timeout=30) == counter(i, 500)
    after = resource_counts()
    assert {k: after[k] for k in ("qp", "mr", "cq", "pd")} == \\
        {k: base[k] for k in ("qp", "mr", "cq", "pd")}, (base, after)
    print("workers ok", flush=True)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_workers_make_their_own_endpoints(method, tmp_path):
    script = tmp_path / "workers.py"      # spawn needs a main module it can import
    script.write_text(WORKERS)
    path = os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    out = subprocess.run([sys.executable, str(script), IP, method], capture_output=True,
                         text=True, env=env, timeout=240)
    assert out.returncode == 0 and out.stdout.strip() == "workers ok", out.stderr[-3000:]

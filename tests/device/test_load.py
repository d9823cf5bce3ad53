"""Load: 256 concurrent connections to one server, over the socket facade and
over RPC, each carrying traffic for a bounded time; every one is served.
The memory each connection costs the server (and the client) is measured
and reported (docs/reliability.md quotes it)."""
import concurrent.futures
import json
import os
import random
import resource
import time

import pytest

import rdmamsg
import rdmamsg.rpc
from support.bed import device_memory, process_memory
from support.peers import spawn
from support.rpc_handlers import SERVE_IN_CHILD

IP = os.environ.get("RDMAMSG_SELF", "")
N = 256
# Under TCG two vCPUs serve both processes here, and Python runs some ten
# times slower than natively: a handshake step can take longer than the
# default 10 s limit, and an idle RPC connection's keepalive (a PING each way
# every second) costs each side about 5 ms of CPU a second, so 256 of them
# alone would need more than the two vCPUs (measured; see the report).
# Those limits are raised, on both sides, so that the test measures service,
# not the emulator; everything else is the default.  The defaults themselves
# are tested by test_faults.py and test_rpc.py.
SLOW = {"handshake_timeout": 60}
SLOW_RPC = {"handshake_timeout": 60, "keepalive": 5, "dead_after": 30}
pytestmark = pytest.mark.timeout(900)
TRAFFIC_SECONDS = 15
SIZES = (1, 100, 4096, 65536, 200_000)

# Both take the host, the port and the options (JSON) to serve with.
NOFILE = """
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
"""

STREAM_SERVER = NOFILE + """
import json, sys, threading
import rdmamsg
srv = rdmamsg.create_server((sys.argv[1], int(sys.argv[2])), backlog=512,
                            **json.loads(sys.argv[3]))
print(srv.getsockname()[1], flush=True)
def serve(conn):
    with conn:
        while data := conn.recv(1 << 16):
            conn.sendall(data)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

RPC_SERVER = NOFILE + SERVE_IN_CHILD


@pytest.fixture(autouse=True)
def many_fds():
    # Each connection holds about 6 fds on each side (TCP, completion channel,
    # epoll and eventfds): 256 need more than the usual soft limit of 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Footprint:
    """What N connections cost the server (a child process) and the client
    (this one): registered memory, resident memory and QPs, per connection."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.before = self._now()

    def _now(self):
        return process_memory(self.pid), process_memory(os.getpid()), device_memory()

    def idle_cpu(self, seconds: float = 2.0) -> str:
        """CPU the two processes use over ``seconds`` with every connection idle."""
        a, b = _cpu_seconds(self.pid), _cpu_seconds(os.getpid())
        time.sleep(seconds)
        return (f"idle CPU server {(_cpu_seconds(self.pid) - a) / seconds:.2f}, client "
                f"{(_cpu_seconds(os.getpid()) - b) / seconds:.2f} of a vCPU")

    def per_connection(self) -> str:
        (s0, c0, d0), (s1, c1, d1) = self.before, self._now()
        server_reg = s1["registered"] - s0["registered"]
        client_reg = d1["registered"] - d0["registered"] - server_reg   # threads of ours exited
        client_qps = d1["qps"] - d0["qps"] - (s1["qps"] - s0["qps"])
        return (f"server {server_reg / N / 2**20:.2f} MiB registered, "
                f"{(s1['rss'] - s0['rss']) / N / 2**20:.2f} MiB resident, "
                f"{(s1['qps'] - s0['qps']) / N:g} QPs; client {client_reg / N / 2**20:.2f} MiB "
                f"registered, {(c1['rss'] - c0['rss']) / N / 2**20:.2f} MiB resident, "
                f"{client_qps / N:g} QPs")


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drive(conns: list, exchange, seconds: float) -> list[int]:
    """Run ``exchange(conn, rng)`` round robin over ``conns`` from 4 threads
    for ``seconds`` (and at least twice on each); exchanges per connection."""
    counts = [0] * len(conns)
    end = time.monotonic() + seconds

    def worker(k: int) -> None:
        rng = random.Random(k)
        mine = range(k, len(conns), 4)
        rounds = 0
        while rounds < 2 or time.monotonic() < end:
            for i in mine:
                exchange(conns[i], rng)
                counts[i] += 1
            rounds += 1

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(worker, k) for k in range(4)]:
            f.result()
    return counts


def _open(make, n: int) -> list:
    # Two at a time: the VM has two vCPUs, and more threads only contend.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda _: make(), range(n)))


def _load(report, what: str, server: str, options: dict, connect, exchange) -> None:
    """Start ``server`` in a child with ``options``, open N connections to it
    with ``connect(address)``, drive ``exchange`` over all of them, and report."""
    child = spawn(server, IP, 0, json.dumps(options))
    conns = []
    try:
        address = (IP, int(child.stdout.readline()))
        time.sleep(0.5)
        footprint = Footprint(child.pid)
        t0 = time.monotonic()
        conns = _open(lambda: connect(address), N)
        setup = time.monotonic() - t0
        cost = footprint.per_connection()
        idle = footprint.idle_cpu()
        counts = _drive(conns, exchange, TRAFFIC_SECONDS)
        assert min(counts) >= 2, "a connection was not served"
        report(f"load, {what}: {N} connections opened in {setup:.1f} s, {sum(counts)} "
               f"exchanges in {TRAFFIC_SECONDS} s (each connection {min(counts)}.."
               f"{max(counts)}); per connection: {cost}; with all {N} idle: {idle}")
    finally:
        for c in conns:
            c.close()
        child.kill()
        child.wait()


def test_256_socket_connections_to_one_server_are_all_served(report):
    def exchange(conn, rng):
        data = rng.randbytes(rng.choice(SIZES))
        conn.sendall(data)
        got = bytearray()
        while len(got) < len(data):
            chunk = conn.recv(len(data) - len(got))
            assert chunk, "the server closed a connection"
            got += chunk
        assert got == data

    _load(report, "socket facade (echo)", STREAM_SERVER, SLOW,
          lambda address: rdmamsg.create_connection(address, timeout=120, **SLOW), exchange)


def test_256_rpc_clients_of_one_server_are_all_served(report):
    def exchange(client, rng):
        if rng.random() < 0.5:
            a, b = rng.randrange(1 << 30), rng.randrange(1 << 30)
            assert client.call("add", a, b) == a + b
        else:
            data = rng.randbytes(rng.choice(SIZES))
            assert client.call("echo", data) == data

    _load(report, "RPC (add and echo calls)", RPC_SERVER, SLOW_RPC,
          lambda address: rdmamsg.rpc.Client(address, timeout=120, connect_timeout=120,
                                             **SLOW_RPC), exchange)

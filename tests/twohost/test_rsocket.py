"""rsockets between the two VMs: rdma-core's C programs on one host, ours on
the other (host 0 serves, host 1 connects), in both roles."""
import os
import signal
import time

import pytest

from rdmamsg.channel.rsocket_setup import RsListener
from support.rsocket_peers import (PRELOAD, finish, kernel_refused, ours, results, run,
                                   wait_ready, warm_up_librdmacm)

FULL = os.environ.get("RDMAMSG_FULL") == "1"
#: CI: 64 KiB transfers; --full: rstream's default size list (slow across 1-vCPU VMs).
ARGS = ["-T", "v"] + ([] if FULL else ["-S", "65536", "-C", "100"])
LIMIT = 3300 if FULL else 900


@pytest.fixture(scope="module", autouse=True)
def _librdmacm_opened():
    warm_up_librdmacm(os.environ["RDMAMSG_SELF"])


def _serve_and_connect(pair, server_cmd, client_cmd, env=None):
    """Host 0 runs ``server_cmd``, host 1 ``client_cmd`` once it listens."""
    if pair.is_server:
        server = run(server_cmd, env=env if env and env.get("role") == "server" else None)
        try:
            out = wait_ready(server)
            assert kernel_refused(pair.self_ip, pair.data_port)
            pair.barrier()
            pair.barrier(LIMIT)                    # the client finished
            out += finish(server, 120)
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()
        return out
    pair.barrier()
    out = finish(run(client_cmd, env=env if env and env.get("role") == "client" else None), LIMIT)
    pair.barrier()
    return out


@pytest.mark.timeout(LIMIT + 300)
@pytest.mark.parametrize("ours_is", ["server", "client"])
def test_rstream_verified_across_hosts(pair, ours_is):
    port = ["-p", str(pair.data_port)]
    c_side, py_side = ["rstream", *ARGS, *port], ours(*ARGS, *port)
    server = (py_side if ours_is == "server" else c_side) + ["-b", pair.self_ip]
    client = (c_side if ours_is == "server" else py_side) + ["-s", pair.peer_ip]
    out = _serve_and_connect(pair, server, client)
    assert results(out), out


@pytest.mark.parametrize("preloaded", ["server", "client"])
def test_unmodified_programs_across_hosts(pair, preloaded):
    """rstream -T s under librspreload.so on one host, our rstream -T s under
    python -m rdmamsg.run --protocol rsocket on the other."""
    args = ["-T", "s", "-T", "v", "-S", "65536", "-C", "100", "-p", str(pair.data_port)]
    c_side, py_side = ["rstream", *args], ours(*args, transparent=True)
    server = (c_side if preloaded == "server" else py_side) + ["-b", pair.self_ip]
    client = (py_side if preloaded == "server" else c_side) + ["-s", pair.peer_ip]
    env = {"LD_PRELOAD": PRELOAD, "role": preloaded}
    out = _serve_and_connect(pair, server, client, env)
    assert "custom" in results(out), out
    mine = "server" if pair.is_server else "client"
    if mine != preloaded:
        assert "over RDMA" in out, out


def test_a_peer_killed_across_hosts(pair, report):
    """Host 1's rstream is SIGKILLed mid-transfer; host 0 sees a reset within 5 s."""
    if pair.is_server:
        with RsListener((pair.self_ip, pair.data_port)) as ln:
            pair.barrier()
            with ln.accept(120) as ep:
                assert ep.recv_into(bytearray(16), 60) > 0
                pair.barrier()
                pair.barrier(60)                   # killed
                t0 = time.monotonic()
                with pytest.raises(ConnectionResetError):
                    buf = bytearray(1 << 20)
                    while True:
                        ep.recv_into(buf, 30)
                took = time.monotonic() - t0
                report(f"rsocket: a SIGKILLed rstream on the other host was a reset after "
                       f"{took:.2f} s")
                assert took < 5
        return
    pair.barrier()
    child = run(["rstream", "-s", pair.peer_ip, "-p", str(pair.data_port), "-S", "65536",
                 "-C", "100000"])
    pair.barrier(120)
    time.sleep(1)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate()
    pair.barrier()

"""A host that vanishes: host 1's NIC drops everything it sends.  An idle
endpoint on each side notices through TCP keepalive on the bootstrap
connection (bootstrap.HOST_TIMEOUT) and raises ConnectionResetError, and
its verbs resources go back to what they were."""
import contextlib
import time

import pytest

import rdmamsg
from rdmamsg.channel.bootstrap import HOST_TIMEOUT
from support.bed import verbs_counts


def test_an_idle_endpoint_notices_a_vanished_host(pair, cut_off, report):
    base = verbs_counts()
    if pair.is_server:
        with rdmamsg.listen((pair.self_ip, pair.data_port)) as ln:
            pair.barrier()
            ep = ln.accept(timeout=120)
    else:
        pair.barrier()
        ep = rdmamsg.connect((pair.peer_ip, pair.data_port), timeout=120)
    with ep:
        ep.send(b"here")
        assert ep.recv(timeout=60) == b"here"
        pair.barrier()
        with cut_off() if not pair.is_server else contextlib.nullcontext():
            t0 = time.monotonic()
            with pytest.raises(ConnectionResetError, match="host is unreachable"):
                ep.recv(timeout=120)
            took = time.monotonic() - t0
    assert verbs_counts() == base
    peer_took = pair.exchange(took, timeout=120)
    report(f"host 1 vanished (netem loss 100%): host {pair.index}'s idle receive raised "
           f"ConnectionResetError after {took:.1f} s (the peer's after {peer_took:.1f} s), "
           "resources back to baseline")
    assert took < HOST_TIMEOUT + 5

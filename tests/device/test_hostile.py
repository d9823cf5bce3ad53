"""Hostile input on the device: garbage at a live listener, random fragments
and ring writes from a peer that breaks the rules (both pollers' decoders),
random RPC frames, and a client without the token."""
import os
import random
import socket
import time

import pytest

import rdmamsg
import rdmamsg.rpc
from rdmamsg.errors import AuthenticationError, ProtocolError
from rdmamsg.protocol import frames, handshake as hs, ring
from support.bed import user_qps
from support.peers import counter, endpoint_pair, run_in_thread
from support.rawverbs import open_side
from support.rogue import post_behind
from support.rpc_handlers import make_server

IP = os.environ.get("RDMAMSG_SELF", "")
TOKEN = "s3cret"
# What a receiver may do with input that breaks the protocol: drop the
# connection with ProtocolError, or report the device's refusal (a work
# completion error is a ConnectionResetError), or, for input that happens to
# be valid but incomplete, wait for the rest and time out.  Never anything else.
CLEAN = (ProtocolError, ConnectionResetError, TimeoutError, EOFError)


def _drain(ep, limit: int = 40) -> BaseException | None:
    """Receive until the connection fails (its error) or goes quiet (None)."""
    for _ in range(limit):
        try:
            ep.recv(timeout=1.5)
        except TimeoutError:
            return None
        except BaseException as exc:         # judged by the caller
            return exc
    return None


def _random_imm(rng: random.Random, kinds: int = 16) -> int:
    if rng.random() < 0.3:
        return rng.getrandbits(32)
    value = rng.choice([0, 1, 2, 31, 32, 33, 1000, (1 << 28) - 1, rng.getrandbits(28)])
    return (value << frames.KIND_BITS) | rng.randrange(kinds)


@pytest.mark.parametrize("seed", range(24))
def test_random_fragments_from_a_rogue_peer_end_the_connection_cleanly(seed):
    rng = random.Random(seed)
    with endpoint_pair(IP, recv_depth=16) as (c, s):
        c.send(b"before")
        assert s.recv(timeout=30) == b"before"
        for _ in range(rng.randrange(1, 12)):
            size = rng.choice([0, 1, 8, 100, 4096, 32767, 32768, 32769, rng.randrange(40000)])
            post_behind(c, rng.randbytes(size), _random_imm(rng))
        err = _drain(s)
        assert err is None or isinstance(err, CLEAN), repr(err)
        if isinstance(err, ProtocolError):
            with pytest.raises(ConnectionError):
                s.send(b"after", timeout=5)


@pytest.mark.parametrize("seed", range(24))
def test_random_ring_writes_and_reports_from_a_rogue_peer_end_the_connection_cleanly(seed):
    rng = random.Random(seed)
    with endpoint_pair(IP, channel="write", ring_size=64 << 10, ring_cells=16) as (c, s):
        c.send(b"before")
        assert s.recv(timeout=30) == b"before"
        peer = c._peer.extra["ring"]
        cell = peer["size"] // peer["cells"]
        victim = bytes(s._parts.send_bufs[0].view[:64])
        for _ in range(rng.randrange(1, 10)):
            if rng.random() < 0.25:           # a control: a report of freed cells, or CLOSE
                post_behind(c, b"", _random_imm(rng))
                continue
            kind = rng.choice(ring.DATA_KINDS + (rng.randrange(16),))
            offset, ncells = rng.randrange(1 << 14), rng.randrange(1 << 14)
            imm = ((ncells << (frames.KIND_BITS + ring.FIELD_BITS))
                   | (offset << frames.KIND_BITS) | kind) & 0xFFFFFFFF
            size = rng.choice([0, 1, cell, cell + 1, 4 * cell, rng.randrange(5 * cell)])
            at = peer["addr"] + (offset % peer["cells"]) * cell if rng.random() < 0.8 else \
                peer["addr"] + rng.randrange(peer["size"])
            post_behind(c, rng.randbytes(size), imm, (at, peer["rkey"]))
        err = _drain(s)
        assert err is None or isinstance(err, CLEAN), repr(err)
        assert bytes(s._parts.send_bufs[0].view[:64]) == victim    # the pool stays untouched


def test_random_bytes_at_a_listener_are_refused_and_it_keeps_serving():
    rng = random.Random(8)
    with rdmamsg.listen((IP, 0), handshake_timeout=2) as ln:
        def attacks():
            for i in range(60):
                with socket.create_connection(ln.address, timeout=10) as raw:
                    raw.recv(4096)                                  # the hello
                    if i % 3 == 0:       # a frame that claims too much
                        raw.sendall(rng.getrandbits(32).to_bytes(4, "big") + rng.randbytes(64))
                    elif i % 3 == 1:     # a well-framed map with random fields
                        body = {"t": "conn", "v": 1, "nonce": rng.randbytes(rng.choice([0, 16])),
                                "qpn": rng.choice([0, 5, 1 << 25]), "gid": rng.randbytes(16),
                                "depth": rng.choice([0, 3, 1 << 20]), "extra": rng.randbytes(5)}
                        raw.sendall(hs.encode(body))
                    else:                # random bytes
                        raw.sendall(rng.randbytes(rng.randrange(1, 5000)))
                    try:
                        raw.recv(4096)
                    except OSError:
                        pass
        h = run_in_thread(attacks)
        good = run_in_thread(lambda: rdmamsg.connect(ln.address, timeout=120))
        with ln.accept(timeout=120) as ep:
            h.result(timeout=300)
            with good.result() as c:
                c.send(b"served")
                assert ep.recv(timeout=30) == b"served"
        assert ln.refused >= 1


def test_random_rpc_frames_close_only_their_connection():
    rng = random.Random(3)
    with make_server((IP, 0), workers=4).start() as server, \
            rdmamsg.rpc.Client(server.address, timeout=30) as good:
        for i in range(20):
            with rdmamsg.connect(server.address, timeout=30, channel="write") as bad:
                for _ in range(rng.randrange(1, 4)):
                    try:
                        bad.send(rng.randbytes(rng.choice([0, 1, 5, 40, 300, 70000])), timeout=5)
                    except ConnectionError:
                        break
                err = _drain(bad, limit=3)
                assert err is None or isinstance(err, CLEAN + (EOFError,)), repr(err)
            assert good.call("add", i, 1) == i + 1
        deadline = time.monotonic() + 10
        while server.connections != 1:
            assert time.monotonic() < deadline, server.connections
            time.sleep(0.05)


# -- a client without the token ---------------------------------------------------

def _recv_frame(raw: socket.socket) -> dict:
    dec = hs.FrameDecoder()
    while True:
        data = raw.recv(4096)
        assert data, "the listener closed without answering"
        msgs = dec.feed(data)
        if msgs:
            return msgs[0]


def test_a_client_without_the_token_gets_no_qp_and_cannot_write(rdma_addr, monkeypatch):
    import rdmamsg.channel.bootstrap as bootstrap

    with rdmamsg.listen((IP, 0), token=TOKEN) as ln:
        h = run_in_thread(ln.accept, 60)
        legit = rdmamsg.connect(ln.address, timeout=60, token=TOKEN, channel="write")
        with legit, h.result() as server_ep:
            made = []
            real_parts = bootstrap.Parts
            monkeypatch.setattr(bootstrap, "Parts",
                                lambda *a, **k: made.append(a) or real_parts(*a, **k))
            before = {r["lqpn"] for r in user_qps()}
            attacker = open_side(rdma_addr)
            try:
                for mac in (b"", b"\x00" * 32):        # no token, a forged one
                    refused = ln.refused
                    pending = run_in_thread(ln.accept, 3)
                    with socket.create_connection(ln.address, timeout=10) as raw:
                        hello = _recv_frame(raw)
                        assert hello["auth"] is True
                        info = hs.QPInfo(attacker.qp.qp_num, attacker.psn, rdma_addr.gid,
                                         rdma_addr.lid, rdma_addr.mtu, 16, 4096, 1 << 20)
                        msg = hs.conn(info, hello["nonce"], hs.new_nonce(), None)
                        msg["mac"] = mac
                        raw.sendall(hs.encode(msg))
                        reply = _recv_frame(raw)
                    # A refusal carries a reason and nothing to aim at.
                    assert reply["t"] == "refuse" and set(reply) == {"t", "reason", "auth"}
                    with pytest.raises(TimeoutError):
                        pending.result()
                    assert ln.refused == refused + 1
                    assert isinstance(ln.last_refusal, AuthenticationError)
                assert made == [], "the listener made verbs resources for a refused client"
                after = user_qps()
                assert {r["lqpn"] for r in after} == before | {attacker.qp.qp_num}
                assert not [r for r in after if r.get("rqpn") == attacker.qp.qp_num]

                # It tries anyway, told more than a refused client can learn: the
                # server QP's number and its ring's address and key (not the PSN).
                sring = server_ep._parts.ring
                snapshot = bytes(sring.view)
                srv_qp = [r for r in after if r["lqpn"] == server_ep._parts.qp.qp_num][0]
                wrong_psn = (srv_qp["rq-psn"] + (1 << 22)) & 0xFFFFFF
                attacker.connect(rdma_addr, {"qpn": server_ep._parts.qp.qp_num,
                                             "psn": wrong_psn, "gid": rdma_addr.gid,
                                             "lid": rdma_addr.lid, "mtu": rdma_addr.mtu},
                                 timeout=8, retry_cnt=1)
                rinfo = server_ep._parts.ring_info(server_ep._opts)
                attacker.post_write(b"intruder" * 8, rinfo.addr, rinfo.rkey)
                attacker.wait_one()                     # any status: it is over
                assert bytes(sring.view) == snapshot
                legit.send(b"still fine")
                assert server_ep.recv(timeout=30) == b"still fine"
                server_ep.send(counter(1, 5000))
                assert legit.recv(timeout=30) == counter(1, 5000)
            finally:
                attacker.close()

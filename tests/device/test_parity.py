"""The parity table: each row runs on both engines (the Cython poller and the
pure-pyverbs one) and must end the same way on each.  The rows are the places
where the twins once disagreed (issue 27), and the rules both must keep:
fragmentation at every boundary, inline sends, a close in the middle of a
message, EOF with and without CLOSE, and the error type of a failed post."""
import os
import select
import signal
import time

import pytest

import rdmamsg
from rdmamsg.errors import PeerClosedError, ProtocolError, RdmaError
from rdmamsg.protocol import frames
from rdmamsg.verbs import _pyverbs as pv
from support.peers import counter, endpoint_pair, run_in_thread, spawn_stream_peer
from support.rogue import post_behind

IP = os.environ.get("RDMAMSG_SELF", "")
BUF = 4096
INLINE = 256           # Options.max_inline's default; rxe grants more


@pytest.fixture(params=["cython", "python"])
def poller(request, monkeypatch):
    monkeypatch.setenv("RDMAMSG_POLLER", request.param)
    return request.param


def _pair(**kw):
    return endpoint_pair(IP, buffer_size=BUF, **kw)


def _boundaries(frag: int) -> list[int]:
    """Sizes at and either side of every edge the fragment planner has."""
    edges = [0, 1, INLINE, INLINE + 1]
    for k in (1, 2, 3):
        edges += [k * frag - 9, k * frag - 8, k * frag - 7, k * frag - 1, k * frag, k * frag + 1]
    return edges


@pytest.mark.parametrize("channel", ["send", "write"])
def test_fragments_at_every_boundary_and_inline_sends(poller, channel):
    with _pair(channel=channel) as (c, s):
        assert c.poller == s.poller == poller
        sizes = _boundaries(c.fragment)

        def receive():
            for i, n in enumerate(sizes):
                if i % 2:
                    buf = bytearray(n)
                    assert s.recv_into(buf, timeout=30) == n and buf == counter(i, n), n
                else:
                    assert s.recv(timeout=30) == counter(i, n), n

        rx = run_in_thread(receive)
        for i, n in enumerate(sizes):
            c.send(counter(i, n), timeout=30)
        rx.result()
        sent, got = c.stats(), s.stats()
        assert sent["messages_sent"] == got["messages_received"] == len(sizes)
        assert sent["bytes_sent"] == got["bytes_received"] == sum(sizes)
        # Every message that fits inline goes inline, the empty one included.
        assert sent["inline_sends"] == sum(n <= INLINE for n in sizes)


def test_a_close_in_the_middle_of_a_message_drops_the_connection(poller):
    with _pair() as (c, s):
        c.send(b"before")
        assert s.recv(timeout=30) == b"before"
        post_behind(c, bytes(c.fragment), frames.pack_imm(frames.FIRST, 3 * c.fragment))
        post_behind(c, b"", frames.pack_imm(frames.CLOSE, 0))
        with pytest.raises(ProtocolError, match="middle of a message"):
            s.recv(timeout=30)
        # Dropped, not left half open: the peer hears of it at once.
        with pytest.raises(ConnectionResetError):
            c.recv(timeout=5)
        with pytest.raises(ProtocolError):
            s.send(b"after", timeout=5)


def test_eof_after_close_is_the_orderly_end(poller):
    with _pair() as (c, s):
        c.send(b"last")
        c.close()
        assert s.recv(timeout=30) == b"last"
        end = time.monotonic() + 1.0          # well past EOF's grace
        while time.monotonic() < end:
            s.wait(0.1)
        assert s.poll() == 1
        with pytest.raises(PeerClosedError):
            s.recv(timeout=5)
        with pytest.raises(BrokenPipeError):
            s.send(b"after", timeout=5)


def test_eof_without_close_is_reported_by_poll(poller):
    with rdmamsg.listen((IP, 0), buffer_size=BUF) as ln:
        child = spawn_stream_peer(IP, ln.address[1], "recv")
        try:
            with ln.accept(timeout=60) as ep:
                assert child.stdout.readline().strip() == "connected"
                ep.send(counter(0, 512))
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
                t0 = time.monotonic()
                # A selector's loop: wait for the fd, then poll.
                while not ep.poll():
                    assert time.monotonic() - t0 < 5, "poll() never reported the peer gone"
                    select.select([ep], [], [], 0.5)
                with pytest.raises(ConnectionResetError):
                    ep.recv(timeout=5)
                with pytest.raises(ConnectionResetError):
                    ep.send(b"after", timeout=5)
        finally:
            child.kill()
            child.wait()


def test_a_failed_one_sided_post_is_an_rdma_error(poller):
    with _pair() as (c, s):
        target = bytearray(1 << 16)
        with s.expose(target, access="rw") as grant:
            c.write(grant.descriptor, b"x" * 64)
            assert target[:64] == b"x" * 64
            qp = c._parts.one_sided.qp          # behind its back: a QP no longer ready
            qp.modify(pv.qp.QPAttr(qp_state=pv.enums.IBV_QPS_RESET), pv.enums.IBV_QP_STATE)
            with pytest.raises(RdmaError) as err:
                c.write(grant.descriptor, bytes(1 << 15))
            assert err.value.call == "ibv_post_send"

"""Zero-copy on the device: sends from the caller's memory, receives lent in place."""
import os

import numpy as np
import pytest

from rdmamsg.verbs.context import DeviceContext
from support.peers import counter, endpoint_pair, run_in_thread

IP = os.environ.get("RDMAMSG_SELF", "")


@pytest.fixture
def pair():
    with endpoint_pair(IP) as p:
        yield p


def test_large_sends_skip_the_pool_and_are_intact(pair):
    c, s = pair
    data = os.urandom(1 << 20)
    pool_before = c._parts.dctx.pool.stats()
    rx = run_in_thread(lambda: [s.recv(timeout=60) for _ in range(2)])
    c.send(data)
    c.send(data)                                  # the second send hits the cache
    assert rx.result() == [data, data]
    st = c.stats()
    assert st["zerocopy_sends"] == 2
    cache = c._parts.dctx.regcache.stats()
    assert cache["misses"] >= 1 and cache["hits"] >= 1
    assert c._parts.dctx.pool.stats().classes == pool_before.classes   # no pool buffer grew
    small = os.urandom(1000)
    c.send(small)
    assert s.recv(timeout=30) == small and c.stats()["zerocopy_sends"] == 2


def test_a_mutable_buffer_is_free_again_when_send_returns(pair):
    c, s = pair
    rx = run_in_thread(lambda: [s.recv(timeout=60) for _ in range(2)])
    buf = bytearray(os.urandom(300_000))
    want = bytes(buf)
    c.send(buf)
    buf[:] = bytes(len(buf))                      # send() returned: changing it is safe
    arr = np.arange(200_000, dtype=np.int32)
    c.send(arr)
    arr[:] = -1
    got = rx.result()
    assert got[0] == want
    assert np.frombuffer(got[1], dtype=np.int32).tolist() == list(range(200_000))


def test_zerocopy_can_be_turned_off():
    with endpoint_pair(IP, zerocopy_min=0) as (c, s):
        data = os.urandom(1 << 20)
        rx = run_in_thread(s.recv, 60)
        c.send(data)
        assert rx.result() == data and c.stats()["zerocopy_sends"] == 0


def test_recv_view_lends_the_buffer_and_holding_it_holds_a_credit():
    with endpoint_pair(IP, recv_depth=4) as (c, s):
        for i in range(3):                        # the 4th credit waits for one to come back
            c.send(counter(i, 100))
        views = [s.recv_view(timeout=30) for _ in range(2)]
        assert [bytes(v.data) for v in views] == [counter(i, 100) for i in range(2)]
        with pytest.raises(TypeError):
            views[0].data[0] = 1                  # lent read-only
        with s.recv_view(timeout=30) as data:
            assert bytes(data) == counter(2, 100)
        with pytest.raises(TimeoutError):         # two buffers are still lent
            c.send(counter(3, 100), timeout=0.5)
        for v in views:
            v.release()
            v.release()                           # idempotent
        c.send(counter(3, 100), timeout=30)
        assert s.recv(timeout=30) == counter(3, 100)


def test_recv_view_of_a_multi_fragment_message(pair):
    c, s = pair
    data = os.urandom(200_000)                    # under the window: fits without a reader
    c.send(data)
    with s.recv_view(timeout=30) as got:
        assert got == data


def test_a_message_over_256_mib_uses_a_length_header():
    n = (256 << 20) + 12345
    with endpoint_pair(IP, max_message=300 << 20) as (c, s):
        data = np.random.default_rng(7).integers(0, 255, n, dtype=np.uint8).tobytes()
        rx = run_in_thread(s.recv, 300)
        c.send(data, timeout=300)
        got = rx.result(timeout=320)
        assert len(got) == n and got == data

"""The send/recv channel on the device (runs once per poller); a few tests run on both
channels."""
import gc
import hashlib
import os
import selectors
import threading
import time

import numpy as np
import pytest

import rdmamsg
from rdmamsg.errors import PeerClosedError
from support.peers import counter, echo, endpoint_pair, run_in_thread

IP = os.environ.get("RDMAMSG_SELF", "")
SIZES = [0, 1, 63, 64, 255, 256, 257, 4096, 16375, 16376, 16377, 16384, 16385, 65536,
         1 << 20, (1 << 20) + 3, 16 << 20]


@pytest.fixture
def pair():
    with endpoint_pair(IP) as p:
        yield p


def test_integrity_across_sizes_both_ways(pair):
    c, s = pair
    srv = run_in_thread(echo, s, len(SIZES))
    for n in SIZES:
        data = os.urandom(n)
        c.send(data)
        assert c.recv(timeout=60) == data, n
    srv.result()


@pytest.mark.parametrize("channel", ["send", "write"])
def test_100k_small_messages_in_order(channel):
    n = 100_000

    def receive(s):
        for i in range(n):
            m = s.recv(timeout=60)
            assert m == counter(i, 8 + i % 57), i

    with endpoint_pair(IP, channel=channel) as (c, s):
        rx = run_in_thread(receive, s)
        for i in range(n):
            c.send(counter(i, 8 + i % 57))
        rx.result(timeout=600)
        assert c.stats()["messages_sent"] == n and s.stats()["messages_received"] == n


def test_bytes_like_objects(pair):
    c, s = pair
    arr = np.arange(10_000, dtype=np.float64).reshape(100, 100)
    for obj, want in [(bytearray(b"ba"), b"ba"), (memoryview(b"mv"), b"mv"),
                      (arr, arr.tobytes()), (memoryview(arr)[10:20], arr[10:20].tobytes())]:
        c.send(obj)
        assert s.recv(timeout=30) == want
    with pytest.raises(BufferError):
        c.send(arr[:, ::2])       # not contiguous
    with pytest.raises(TypeError):
        c.send("text")


def test_recv_into_and_a_buffer_too_small(pair):
    c, s = pair
    big = os.urandom(100_000)
    c.send(big)
    c.send(b"small")
    small = bytearray(10)
    with pytest.raises(ValueError, match="100000 bytes"):
        s.recv_into(small, timeout=30)
    buf = np.zeros(200_000, dtype=np.uint8)
    assert s.recv_into(buf, timeout=30) == len(big)
    assert buf[:len(big)].tobytes() == big
    assert s.recv_into(small, timeout=30) == 5 and small[:5] == b"small"


def test_messages_above_the_limit_are_refused_before_sending():
    with endpoint_pair(IP, max_message=1000) as (c, s):
        with pytest.raises(ValueError, match="limit of 1000"):
            c.send(bytes(1001))
        c.send(bytes(1000))
        assert len(s.recv(timeout=30)) == 1000


def test_timeouts(pair):
    c, s = pair
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        s.recv(timeout=0.3)
    assert 0.25 < time.monotonic() - t0 < 5


def test_send_timeout_under_back_pressure_loses_nothing():
    with endpoint_pair(IP, recv_depth=4, buffer_size=4096) as (c, s):
        sent = 0
        with pytest.raises(TimeoutError):
            while True:
                c.send(counter(sent, 3000), timeout=0.5)
                sent += 1
        big = os.urandom(50_000)          # multi-fragment: may stop part-way
        with pytest.raises(TimeoutError):
            c.send(big, timeout=0.3)
        got = [s.recv(timeout=30) for _ in range(sent)]
        assert got == [counter(i, 3000) for i in range(sent)]
        c.send(b"after")                  # also pushes out the rest of `big`
        rest = s.recv(timeout=30)
        if rest == big:
            rest = s.recv(timeout=30)
        assert rest == b"after"


def test_orderly_close_delivers_everything_then_eof(pair):
    c, s = pair
    n = 4 * rdmamsg.Options().recv_depth     # more than the peer's credits: flow control

    def drain():
        got = []
        with pytest.raises(PeerClosedError):
            while True:
                got.append(s.recv(timeout=30))
        return got

    h = run_in_thread(drain)
    for i in range(n):
        c.send(counter(i, 1000), timeout=30)
    c.close()
    assert h.result() == [counter(i, 1000) for i in range(n)]
    with pytest.raises(BrokenPipeError):
        s.send(b"x")
    with pytest.raises(OSError) as err:
        c.send(b"x")
    assert err.value.errno == 9


def test_close_is_idempotent_and_context_managers_work():
    with rdmamsg.listen((IP, 0)) as ln:
        h = run_in_thread(ln.accept, 30)
        with rdmamsg.connect(ln.address, timeout=30) as c:
            with h.result() as s:
                c.send(b"hi")
                assert s.recv(timeout=30) == b"hi"
        c.close()
        s.close()
        assert c.closed and s.closed


def test_leaked_endpoint_warns():
    with rdmamsg.listen((IP, 0)) as ln:
        h = run_in_thread(ln.accept, 30)
        c = rdmamsg.connect(ln.address, timeout=30)
        s = h.result()
        with pytest.warns(ResourceWarning, match="unclosed"):
            del c
            gc.collect()
        s.close()


def test_interrupt_makes_a_waiting_receive_step_aside(pair):
    c, s = pair
    waiting = run_in_thread(lambda: s.recv(timeout=30))
    time.sleep(0.3)                      # asleep in epoll by now
    t0 = time.monotonic()
    s.interrupt()
    with pytest.raises(InterruptedError):
        waiting.result()
    assert time.monotonic() - t0 < 5
    c.send(b"queued")
    while not s.poll():
        s.wait(1)
    s.interrupt()                        # nobody waits: the next receive that would wait
    assert s.recv(timeout=10) == b"queued"   # a ready message is not held up
    with pytest.raises(InterruptedError):
        s.recv(timeout=10)
    c.interrupt()                        # senders are not interrupted
    c.send(b"after")
    assert s.recv(timeout=10) == b"after"
    with pytest.raises(InterruptedError):
        c.recv(timeout=10)


def test_selectors_with_fileno(pair):
    c, s = pair
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    s.poll()
    assert sel.select(timeout=0.2) == [] or s.poll() == 0
    threading.Timer(0.2, c.send, args=(b"wake",)).start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sel.select(timeout=1) and s.poll():
            break
    assert s.recv(timeout=0) == b"wake"
    sel.close()


def test_both_directions_at_once_from_many_threads(pair):
    c, s = pair
    n = 2000

    def pump(src, dst, tag):
        for i in range(n):
            src.send(tag + counter(i, 200))

    def drain(ep, tag):
        for i in range(n):
            assert ep.recv(timeout=60) == tag + counter(i, 200)

    jobs = [run_in_thread(pump, c, s, b"c"), run_in_thread(pump, s, c, b"s"),
            run_in_thread(drain, s, b"c"), run_in_thread(drain, c, b"s")]
    for j in jobs:
        j.result(timeout=300)


def test_two_receivers_of_large_messages_each_get_whole_ones(pair):
    # Two threads receive from one endpoint, one into its own buffer and one
    # as bytes: a message arriving in fragments into one caller's buffer is
    # that caller's, and no message is lost, torn or given to both.
    c, s = pair
    n, size = 80, 200_000
    got: list[int] = []
    lock = threading.Lock()

    def check(data: bytes) -> None:
        i = int.from_bytes(data[:8], "little")
        assert len(data) == size and data == counter(i, size), i
        with lock:
            got.append(i)

    def into_buffer():
        buf = bytearray(size)
        while True:
            try:
                k = s.recv_into(buf, timeout=5)
            except TimeoutError:
                return
            check(bytes(buf[:k]))

    def as_bytes():
        while True:
            try:
                check(s.recv(timeout=5))
            except TimeoutError:
                return

    jobs = [run_in_thread(into_buffer), run_in_thread(as_bytes)]
    for i in range(n):
        c.send(counter(i, size), timeout=30)
    for j in jobs:
        j.result(timeout=120)
    assert sorted(got) == list(range(n))


@pytest.mark.parametrize("channel, small", [("send", {"recv_depth": 4}),
                                            ("write", {"ring_size": 1 << 18, "ring_cells": 64})],
                         ids=["send", "write"])
def test_two_senders_never_interleave_their_messages(channel, small):
    # Room runs short part-way through the messages (few credits, a small
    # ring), so each sender waits with the engine's lock let go: each
    # message still arrives whole, and in its sender's order.
    n, size = 40, 150_000
    with endpoint_pair(IP, channel=channel, **small) as (c, s):
        def pump(tag):
            for i in range(n):
                c.send(tag + counter(i, size - 1), timeout=60)

        jobs = [run_in_thread(pump, b"a"), run_in_thread(pump, b"b")]
        seen = {b"a": 0, b"b": 0}
        for _ in range(2 * n):
            m = s.recv(timeout=60)
            tag = m[:1]
            assert m[1:] == counter(seen[tag], size - 1), (tag, seen[tag])
            seen[tag] += 1
        for j in jobs:
            j.result(timeout=120)


@pytest.mark.parametrize("depth", [3, 4, 32])
def test_four_threads_on_two_endpoints_never_miss_a_wakeup(depth):
    # A sender and a receiver on each side, often out of credits: each wait
    # must notice progress that another thread polled for it.
    for _ in range(4):
        with endpoint_pair(IP, recv_depth=depth) as (c, s):
            n = 1500

            def pump(src, tag):
                for i in range(n):
                    src.send(tag + counter(i, 100), timeout=20)

            def drain(ep, tag):
                for i in range(n):
                    assert ep.recv(timeout=20) == tag + counter(i, 100)

            jobs = [run_in_thread(pump, c, b"c"), run_in_thread(pump, s, b"s"),
                    run_in_thread(drain, s, b"c"), run_in_thread(drain, c, b"s")]
            for j in jobs:
                j.result(timeout=120)


def test_a_send_stalled_on_the_last_credit_wakes_when_this_side_receives():
    # The last credit may only carry credits back: a recv() on this side makes
    # it usable without any completion, so the waiting sender must be woken.
    with endpoint_pair(IP, recv_depth=4) as (c, s):
        for i in range(3):
            c.send(counter(i, 100), timeout=10)
        assert c._engine.credit_state == (1, 0)
        h = run_in_thread(c.send, counter(3, 100), 10)
        s.send(b"from s", timeout=10)
        time.sleep(0.5)                   # the sender is asleep by now
        assert c.recv(timeout=10) == b"from s"
        h.result(timeout=30)
        assert [s.recv(timeout=10) for _ in range(4)] == [counter(i, 100) for i in range(4)]


def test_200_endpoints_leave_nothing_behind():
    from support.bed import resource_counts

    base = resource_counts()
    for i in range(100):
        with endpoint_pair(IP, recv_depth=4, send_depth=4) as (c, s):
            c.send(b"%d" % i)
            assert s.recv(timeout=30) == b"%d" % i
    assert resource_counts() == base


def test_digest_of_a_stream(pair):
    c, s = pair
    h1, h2 = hashlib.sha256(), hashlib.sha256()
    rng = np.random.default_rng(1)
    sizes = rng.integers(0, 200_000, 200)

    def receive():
        for _ in sizes:
            h2.update(s.recv(timeout=60))

    rx = run_in_thread(receive)
    for n in sizes:
        data = rng.bytes(int(n))
        h1.update(data)
        c.send(data)
    rx.result(timeout=300)
    assert h1.digest() == h2.digest()

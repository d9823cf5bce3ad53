"""The memory pool's bookkeeping, with registration replaced (no device)."""
import threading
import time

import pytest

from rdmamsg.errors import PoolExhaustedError, PoolTimeoutError
from rdmamsg.verbs.pool import MemoryPool


class FakeMR:
    count = 0

    def __init__(self, addr, length):
        FakeMR.count += 1
        self.lkey = FakeMR.count
        self.closed = False

    def close(self):
        self.closed = True


def pool(**kw):
    kw.setdefault("size_classes", (4096, 65536))
    kw.setdefault("chunk_bytes", 1 << 16)
    return MemoryPool(None, register=FakeMR, **kw)


def test_smallest_class_that_fits_and_views_are_the_memory():
    with pool() as p:
        a = p.acquire(100)
        b = p.acquire(5000)
        assert (a.size, b.size) == (4096, 65536)
        a.view[:5] = b"hello"
        c = p.acquire(4096)
        assert c.addr == a.addr + 4096 or c.addr == a.addr - 4096
        assert bytes(a.view[:5]) == b"hello" and a.lkey == c.lkey
        with pytest.raises(ValueError):
            p.acquire(1 << 20)


def test_grows_a_chunk_at_a_time_and_reuses_released_buffers():
    with pool() as p:
        bufs = [p.acquire(4096) for _ in range(16)]
        assert p.stats().mrs == 1
        extra = p.acquire(4096)
        assert p.stats().mrs == 2
        p.release(extra)
        again = p.acquire(4096)
        assert again is extra
        for b in bufs + [again]:
            p.release(b)
        s = p.stats().classes[0]
        assert (s.in_use, s.total, s.peak_in_use) == (0, 32, 17)


def test_exhaustion_raises_clearly():
    with pool(max_bytes=1 << 16) as p:
        p.acquire_many(4096, 16)
        with pytest.raises(PoolExhaustedError, match="exhausted"):
            p.acquire(4096)


def test_acquire_many_is_all_or_nothing():
    with pool(max_bytes=1 << 16) as p:
        with pytest.raises(PoolExhaustedError):
            p.acquire_many(4096, 17)
        assert p.stats().in_use == 0


def test_wait_mode_waits_for_a_release_or_times_out():
    with pool(max_bytes=1 << 16, on_exhausted="wait", timeout=0.2) as p:
        bufs = p.acquire_many(4096, 16)
        t0 = time.monotonic()
        with pytest.raises(PoolTimeoutError):
            p.acquire(4096)
        assert time.monotonic() - t0 >= 0.19
        threading.Timer(0.1, p.release, args=(bufs[3],)).start()
        assert p.acquire(4096, timeout=5) is bufs[3]


def test_double_release_is_an_error():
    with pool() as p:
        b = p.acquire(10)
        p.release(b)
        with pytest.raises(ValueError):
            p.release(b)


def test_close_deregisters_and_is_idempotent():
    p = pool()
    b = p.acquire(10)
    mr = p._classes[0].chunks[0].mr
    p.close()
    p.close()
    assert mr.closed
    with pytest.raises(OSError):
        p.acquire(10)
    p.release(b)  # releasing into a closed pool is harmless


def test_unclosed_pool_warns():
    p = pool()
    p.acquire(10)
    with pytest.warns(ResourceWarning):
        p.__del__()


def test_bad_parameters():
    with pytest.raises(ValueError):
        pool(size_classes=(3000,))
    with pytest.raises(ValueError):
        pool(on_exhausted="maybe")

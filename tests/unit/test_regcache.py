"""The registration cache's bookkeeping, with registration replaced (no device)."""
import numpy as np
import pytest

from rdmamsg.errors import RdmaError
from rdmamsg.verbs.regcache import RegistrationCache, buffer_address


class FakeMR:
    def __init__(self, addr, length):
        self.addr, self.length, self.lkey, self.closed = addr, length, addr & 0xFFFF, False

    def close(self):
        self.closed = True


def acquire(cache, obj):
    return cache.acquire(obj, buffer_address(obj), memoryview(obj).nbytes)


def test_hits_reuse_the_registration_and_busy_entries_stay():
    cache = RegistrationCache(FakeMR, max_bytes=1 << 20)
    data = bytes(1000)
    a = acquire(cache, data)
    b = acquire(cache, data)
    assert a is b and a.busy == 2 and cache.stats()["hits"] == 1
    cache.release(a)
    cache.release(b)
    assert a.busy == 0 and cache.stats()["entries"] == 1


def test_lru_eviction_within_the_byte_budget_skips_busy_entries():
    cache = RegistrationCache(FakeMR, max_bytes=3000)
    bufs = [bytearray(1000) for _ in range(4)]
    regs = [acquire(cache, b) for b in bufs[:3]]
    cache.release(regs[1])
    cache.release(regs[2])
    fourth = acquire(cache, bufs[3])          # evicts regs[1], the LRU entry not busy
    assert fourth is not None and regs[1].mr.closed and not regs[0].mr.closed
    assert cache.registered_bytes == 3000 and cache.stats()["evictions"] == 1
    cache.release(fourth)


def test_refuses_when_everything_is_busy_or_too_big():
    cache = RegistrationCache(FakeMR, max_bytes=1500)
    a = acquire(cache, bytes(1000))
    assert acquire(cache, bytes(1000)) is None
    assert acquire(cache, bytes(2000)) is None
    assert cache.stats()["refusals"] == 2
    cache.release(a)


def test_a_cached_buffer_cannot_be_resized_or_freed_under_its_registration():
    cache = RegistrationCache(FakeMR)
    buf = bytearray(100)
    reg = acquire(cache, buf)
    with pytest.raises(BufferError):
        buf.extend(b"x")
    cache.release(reg)
    cache.close()
    buf.extend(b"x")                          # deregistered and released on close


def test_registration_failure_means_copy_instead():
    def refuse(addr, length):
        raise RdmaError("ibv_reg_mr", 12)

    cache = RegistrationCache(refuse)
    assert acquire(cache, bytes(10)) is None


def test_buffer_address_of_read_only_and_numpy_buffers():
    arr = np.arange(10, dtype=np.int64)
    assert buffer_address(arr) == arr.ctypes.data
    assert buffer_address(memoryview(arr)[2:]) == arr.ctypes.data + 16
    assert buffer_address(b"abc") != 0


def test_close_keeps_busy_entries_until_released():
    cache = RegistrationCache(FakeMR)
    reg = acquire(cache, bytes(10))
    cache.close()
    assert not reg.mr.closed
    cache.release(reg)
    assert reg.mr.closed

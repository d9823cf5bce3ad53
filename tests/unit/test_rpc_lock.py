"""The C lock of an RPC link (ext/_rpcfast Lock): the fast paths take it
in C, and link.py uses it as a threading.Lock, also under a Condition."""
import threading
import time

import pytest

from rdmamsg.rpc import _rpcfast


def test_it_behaves_as_a_threading_lock():
    lock = _rpcfast.Lock()
    assert not lock.locked()
    assert lock.acquire()
    assert lock.locked()
    assert lock.acquire(False) is False
    t0 = time.monotonic()
    assert lock.acquire(timeout=0.2) is False
    assert time.monotonic() - t0 >= 0.19
    lock.release()
    with pytest.raises(RuntimeError, match="unlocked"):
        lock.release()
    with lock:
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(ValueError):
        lock.acquire(False, 1.0)
    with pytest.raises(ValueError):
        lock.acquire(timeout=-2)


def test_a_waiter_gets_it_when_another_thread_releases_it():
    lock = _rpcfast.Lock()
    lock.acquire()
    got = []
    waiter = threading.Thread(target=lambda: got.append(lock.acquire(timeout=5)))
    waiter.start()
    time.sleep(0.2)
    assert got == []
    lock.release()
    waiter.join(5)
    assert got == [True]


def test_a_condition_over_it_waits_and_notifies():
    cond = threading.Condition(_rpcfast.Lock())
    ready = []

    def produce():
        time.sleep(0.1)
        with cond:
            ready.append(1)
            cond.notify_all()

    threading.Thread(target=produce).start()
    with cond:
        assert cond.wait_for(lambda: ready, timeout=5)
    with pytest.raises(RuntimeError):
        cond.notify()                    # not held

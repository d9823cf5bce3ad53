"""The socket's read lock (ext/stream.pxi): threading.Lock's behaviour."""
import signal
import threading
import time

import pytest

cpoller = pytest.importorskip("rdmamsg.transport._cpoller")


def test_acquire_release_and_the_context_manager():
    lock = cpoller.ReadLock()
    assert not lock.locked()
    assert lock.acquire() is True and lock.locked()
    assert lock.acquire(False) is False
    assert lock.acquire(blocking=False) is False
    assert lock.acquire(timeout=0.05) is False
    lock.release()
    with lock:
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()
    with pytest.raises(ValueError):
        lock.acquire(False, 1.0)
    with pytest.raises(ValueError):
        lock.acquire(timeout=-2)


def test_a_waiter_gets_it_when_it_is_released():
    lock = cpoller.ReadLock()
    lock.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=10)))
    t.start()
    time.sleep(0.1)
    assert not got                          # still waiting, without the GIL
    lock.release()
    t.join(10)
    assert got == [True] and lock.locked()


def test_a_signal_handler_runs_while_waiting():
    lock = cpoller.ReadLock()
    lock.acquire()

    def handler(signum, frame):
        raise InterruptedError("handler ran")
    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(InterruptedError):
            lock.acquire()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert lock.locked()

"""The C lock (ext/common/lock.pxi) of an RPC link (_rpcfast) and of a socket's
reads (_cpoller): the fast paths take it in C, Python code uses it as a
threading.Lock, also under a Condition."""
import signal
import sys
import sysconfig
import threading
import time

import pytest

MODULES = ["rdmamsg.rpc._rpcfast", "rdmamsg.transport._cpoller"]


@pytest.fixture(params=MODULES)
def Lock(request):
    return pytest.importorskip(request.param).Lock


def test_it_behaves_as_a_threading_lock(Lock):
    lock = Lock()
    assert not lock.locked()
    assert lock.acquire()
    assert lock.locked()
    assert lock.acquire(False) is False
    assert lock.acquire(blocking=False) is False
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


def test_a_waiter_gets_it_when_another_thread_releases_it(Lock):
    lock = Lock()
    lock.acquire()
    got = []
    waiter = threading.Thread(target=lambda: got.append(lock.acquire(timeout=5)))
    waiter.start()
    time.sleep(0.2)
    assert got == []                     # still waiting, without the GIL
    lock.release()
    waiter.join(5)
    assert got == [True]


def test_a_signal_handler_runs_while_waiting(Lock):
    lock = Lock()
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


def test_a_condition_over_it_waits_and_notifies(Lock):
    cond = threading.Condition(Lock())
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


@pytest.mark.parametrize("name", MODULES)
def test_the_waits_can_see_the_gil_on_every_cpython_whose_layout_is_known(name):
    # Without it, a thread woken while another holds the GIL sleeps in
    # take_gil again (gil_peek.h): correct, but a hand-off costs 100s of us.
    module = pytest.importorskip(name)
    known = (3, 11) <= sys.version_info[:2] <= (3, 14)
    free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    assert module.GIL_PEEK is (known and not free_threaded)

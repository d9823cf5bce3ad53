"""An RPC call's future in C (ext/rpc/rpc_future.pxi): a concurrent.futures.Future
that the standard library's wait(), as_completed() and asyncio.wrap_future
take, completed from other threads as a client's reader completes them."""
import asyncio
import concurrent.futures
import signal
import threading
import time

import pytest

rpcfast = pytest.importorskip("rdmamsg.rpc._rpcfast")


class Hooks:
    def __init__(self):
        self.cancelled, self.watched = [], 0

    def on_cancel(self, call_id):
        self.cancelled.append(call_id)

    def on_watch(self):
        self.watched += 1


@pytest.fixture
def hooks():
    return Hooks()


@pytest.fixture
def comp(hooks):
    return rpcfast.Completions(hooks.on_cancel, hooks.on_watch)


def later(delay, fn, *args):
    t = threading.Timer(delay, fn, args)
    t.start()
    return t


def test_it_is_a_future(comp):
    fut = rpcfast.make_future(comp, 7)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.call_id == 7
    assert not fut.done() and not fut.running() and not fut.cancelled()
    assert "state=pending" in repr(fut)
    fut.set_result(3)
    assert fut.done() and fut.result() == 3 and fut.exception() is None
    assert "returned int" in repr(fut)
    with pytest.raises(concurrent.futures.InvalidStateError):
        fut.set_result(4)
    with pytest.raises(concurrent.futures.InvalidStateError):
        fut.set_exception(ValueError())
    assert fut.result(timeout=0) == 3


def test_an_exception(comp):
    fut = rpcfast.make_future(comp)
    err = KeyError("k")
    fut.set_exception(err)
    assert fut.exception() is err
    with pytest.raises(KeyError):
        fut.result()
    assert "raised KeyError" in repr(fut)


def test_result_times_out(comp):
    fut = rpcfast.make_future(comp)
    t0 = time.monotonic()
    with pytest.raises(concurrent.futures.TimeoutError):
        fut.result(timeout=0.2)
    assert time.monotonic() - t0 >= 0.19
    with pytest.raises(concurrent.futures.TimeoutError):
        fut.exception(timeout=0)


def test_cancel_tells_the_client(comp, hooks):
    fut = rpcfast.make_future(comp, 5)
    assert fut.cancel() and fut.cancel()
    assert hooks.cancelled == [5]
    assert fut.cancelled() and fut.done()
    with pytest.raises(concurrent.futures.CancelledError):
        fut.result()
    with pytest.raises(concurrent.futures.CancelledError):
        fut.exception()
    with pytest.raises(concurrent.futures.InvalidStateError):
        fut.set_result(1)
    done = rpcfast.make_future(comp, 6)
    done.set_result(1)
    assert not done.cancel() and hooks.cancelled == [5]
    assert fut.set_running_or_notify_cancel() is False
    running = rpcfast.make_future(comp)
    assert running.set_running_or_notify_cancel() is True
    assert running.running() and not running.cancel()


def test_callbacks(comp, hooks, caplog):
    fut = rpcfast.make_future(comp)
    seen = []
    fut.add_done_callback(seen.append)
    fut.add_done_callback(lambda f: 1 / 0)                 # logged, not raised
    assert hooks.watched >= 2                              # the reader is asked to receive
    fut.set_result(1)
    assert seen == [fut]
    assert "exception calling callback" in caplog.text
    fut.add_done_callback(seen.append)                     # done: called at once
    assert seen == [fut, fut]
    cancelled = rpcfast.make_future(comp)
    cancelled.add_done_callback(seen.append)
    cancelled.cancel()
    assert seen[-1] is cancelled


def test_sleepers_wake_for_their_own_future_only(comp):
    futs = [rpcfast.make_future(comp, i) for i in range(4)]
    got = {}

    def wait(i):
        try:
            got[i] = futs[i].result(timeout=10)
        except (ValueError, concurrent.futures.CancelledError) as exc:
            got[i] = type(exc)
    threads = [threading.Thread(target=wait, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    for i in (2, 0):
        futs[i].set_result(i * 10)
    threads[2].join(5)
    threads[0].join(5)
    assert got == {2: 20, 0: 0}
    assert threads[1].is_alive() and threads[3].is_alive()
    futs[1].set_exception(ValueError("no"))
    futs[3].cancel()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)
    assert got == {2: 20, 0: 0, 1: ValueError, 3: concurrent.futures.CancelledError}


def test_many_threads_complete_many_futures(comp):
    futs = [rpcfast.make_future(comp, i) for i in range(2000)]
    results = [None] * len(futs)

    def waiter(k):
        for i in range(k, len(futs), 8):
            results[i] = futs[i].result(timeout=30)

    def completer(k):
        for i in range(k, len(futs), 4):
            futs[i].set_result(i)
    threads = [threading.Thread(target=waiter, args=(k,)) for k in range(8)]
    threads += [threading.Thread(target=completer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == list(range(len(futs)))


def test_wait_and_as_completed(comp, hooks):
    futs = [rpcfast.make_future(comp, i) for i in range(6)]
    later(0.1, futs[3].set_result, 3)
    done, pending = concurrent.futures.wait(futs, timeout=10,
                                            return_when=concurrent.futures.FIRST_COMPLETED)
    assert done == {futs[3]} and len(pending) == 5
    assert hooks.watched > 0                    # wait() asked for the replies
    later(0.1, futs[0].set_exception, ValueError())
    later(0.15, futs[1].cancel)
    for i in (2, 4, 5):
        later(0.2, futs[i].set_result, i)
    order = list(concurrent.futures.as_completed(futs, timeout=10))
    assert set(order) == set(futs) and order[0] is futs[3]
    done, pending = concurrent.futures.wait(futs, timeout=0)
    assert not pending


def test_asyncio_wrap_future(comp):
    fut = rpcfast.make_future(comp)
    cancelled = rpcfast.make_future(comp, 9)

    async def main():
        later(0.1, fut.set_result, "ok")
        assert await asyncio.wrap_future(fut) == "ok"
        task = asyncio.ensure_future(asyncio.wrap_future(cancelled))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(main())
    assert cancelled.cancelled()


def test_its_lock_is_reentrant(comp):
    fut = rpcfast.make_future(comp)
    lock = fut._condition
    with lock:
        with lock:
            assert lock.acquire(False)
            lock.release()
        other = []
        t = threading.Thread(target=lambda: other.append(lock.acquire(timeout=0.1)))
        t.start()
        t.join(5)
        assert other == [False]
    t = threading.Thread(target=lambda: other.append(lock.acquire(False)))
    t.start()
    t.join(5)
    assert other == [False, True]               # (that thread still holds it)
    with pytest.raises(RuntimeError):
        lock.release()


def test_a_signal_handler_runs_while_waiting(comp):
    fut = rpcfast.make_future(comp)

    def handler(signum, frame):
        raise InterruptedError("handler ran")
    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        t0 = time.monotonic()
        with pytest.raises(InterruptedError, match="handler ran"):
            fut.result(timeout=10)
        assert time.monotonic() - t0 < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    fut.set_result(1)                           # still usable: the sleeper was unlinked
    assert fut.result() == 1


def test_asyncio_twins_complete_on_their_loop(comp, hooks):
    futs = [rpcfast.make_future(comp, i) for i in range(5)]
    early = rpcfast.make_future(comp, 9)
    early.set_result("before")

    async def main():
        loop = asyncio.get_running_loop()
        writes = []
        real = loop.call_soon_threadsafe

        def counted(*args):
            writes.append(args)
            return real(*args)
        loop.call_soon_threadsafe = counted
        twins = [f.on_loop(loop) for f in futs]
        assert hooks.watched >= 5                        # the reader is asked to receive
        assert await early.on_loop(loop) == "before"     # done already: at once

        def complete_all():                              # a reader's batch
            for f in futs[:3]:
                f.set_result(f.call_id)
        threading.Thread(target=complete_all).start()
        assert await asyncio.gather(*twins[:3]) == [0, 1, 2]
        futs[3].set_exception(ValueError("no"))
        with pytest.raises(ValueError):
            await twins[3]
        futs[4].cancel()                                 # from this side: the twin too
        with pytest.raises(asyncio.CancelledError):
            await twins[4]
        # One per set_result in the other thread (a reader's batch: one in
        # all); those made on the loop's own thread settle their twins at once.
        assert len(writes) == 3
    asyncio.run(main())


@pytest.mark.parametrize("receives", [True, False])
def test_a_loop_that_receives_itself_is_not_watched_for(comp, hooks, receives):
    asked = []
    comp.on_loop_watch = lambda loop: asked.append(loop) or receives
    fut = rpcfast.make_future(comp, 1)

    async def main():
        twin = fut.on_loop(asyncio.get_running_loop())
        assert asked == [asyncio.get_running_loop()]
        assert hooks.watched == (0 if receives else 1)   # else the reader is asked
        fut.set_result("ok")                             # on the loop: settled at once
        assert twin.done() and twin.result() == "ok"
    asyncio.run(main())


def test_a_second_loop_gets_a_wrapped_future(comp):
    first = rpcfast.make_future(comp)

    async def on(fut):
        return await fut.on_loop(asyncio.get_running_loop())
    first.set_result(1)
    assert asyncio.run(on(first)) == 1
    second = rpcfast.make_future(comp)
    later(0.1, second.set_result, 2)
    assert asyncio.run(on(second)) == 2                  # another loop: wrap_future's way

"""The server's handler slots (ext/rpc/_rpcfast Slots): pool threads wait for a
free one; no more than ``workers`` are ever taken."""
import threading
import time

from rdmamsg.rpc import _rpcfast


def test_take_waits_for_a_give_and_never_hands_out_more_than_there_are():
    slots = _rpcfast.Slots(2)
    slots.take()
    slots.take()
    got = []
    waiters = [threading.Thread(target=lambda: (slots.take(), got.append(1))) for _ in range(3)]
    for t in waiters:
        t.start()
    time.sleep(0.2)
    assert got == []                     # none free: all three wait
    slots.give()
    time.sleep(0.2)
    assert got == [1]
    slots.give()
    slots.give()
    for t in waiters:
        t.join(5)
    assert got == [1, 1, 1]


def test_many_threads_taking_and_giving_stay_within_the_limit():
    slots = _rpcfast.Slots(3)
    lock = threading.Lock()
    now, most = [0], [0]

    def work():
        for _ in range(200):
            slots.take()
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            time.sleep(0)
            with lock:
                now[0] -= 1
            slots.give()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most[0] == 3 and now[0] == 0

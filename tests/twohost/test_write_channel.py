"""The write channel and remote buffers between the two VMs (one side of each test per VM).

Integrity across sizes and 100k messages run on both channels in test_endpoint.py."""
import random

import pytest

from rdmamsg import RemoteAccessError
from support.pair import connected
from support.peers import counter

SMALL_RING = {"channel": "write", "ring_size": 64 << 10, "ring_cells": 16}


def test_random_sizes_wrap_a_small_ring(pair):
    rng = random.Random(23)
    sizes = [rng.randrange(0, 40000) for _ in range(2000)]
    with connected(pair, **SMALL_RING) as ep:
        if pair.is_server:
            for i, n in enumerate(sizes):
                assert ep.recv(timeout=120) == counter(i, n), i
            ep.send(b"done")
        else:
            for i, n in enumerate(sizes):
                ep.send(counter(i, n), timeout=120)
            assert ep.recv(timeout=120) == b"done"


def test_remote_buffer_write_read_and_revoke(pair):
    with connected(pair) as ep:
        if pair.is_server:
            target = bytearray(1 << 20)
            grant = ep.expose(target, access="rw")
            ep.send(grant.descriptor)
            assert ep.recv(timeout=120) == b"written"
            assert target == counter(7, 1 << 20)
            grant.revoke()
            ep.send(b"revoked")
            assert ep.recv(timeout=120) == b"refused"
            assert target == counter(7, 1 << 20)
            ep.send(b"still talking")
        else:
            desc = ep.recv(timeout=120)
            ep.write(desc, counter(7, 1 << 20))
            back = bytearray(1 << 20)
            ep.read(desc, back)
            assert back == counter(7, 1 << 20)
            ep.send(b"written")
            assert ep.recv(timeout=120) == b"revoked"
            with pytest.raises(RemoteAccessError):
                ep.write(desc, b"too late")
            ep.send(b"refused")
            assert ep.recv(timeout=120) == b"still talking"


def _pipelined_writes(seed: int, size: int):
    """(offset, data) of the writes test_writes_that_do_not_wait... makes."""
    rng = random.Random(seed)
    for _ in range(20_000):
        n = rng.choice((8, 64, 256, 1000, 4096, 8192))
        yield rng.randrange(size - n), rng.randbytes(n)


def test_writes_that_do_not_wait_land_in_order(pair):
    size = 1 << 20
    with connected(pair) as ep:
        if pair.is_server:
            target = bytearray(size)
            with ep.expose(target, access="write") as grant:
                ep.send(grant.descriptor)
                assert ep.recv(timeout=300) == b"flushed"
                model = bytearray(size)
                for at, data in _pipelined_writes(5, size):
                    model[at:at + len(data)] = data
                assert target == model
            ep.send(b"checked")
        else:
            desc = ep.recv(timeout=120)
            src = bytearray(8192)
            for at, data in _pipelined_writes(5, size):
                src[:len(data)] = data
                ep.write(desc, memoryview(src)[:len(data)], offset=at, wait=False)
            ep.flush(timeout=120)
            ep.send(b"flushed")
            assert ep.recv(timeout=120) == b"checked"

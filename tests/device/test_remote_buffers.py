"""Remote buffers on the device: expose, one-sided write and read, revoke."""
import os
import random
import struct
import threading

import numpy as np
import pytest

import rdmamsg
from rdmamsg import RemoteAccessError, RemoteBuffer
from support.peers import endpoint_pair

IP = os.environ.get("RDMAMSG_SELF", "")


@pytest.fixture(params=["send", "write"])
def pair(request):
    with endpoint_pair(IP, channel=request.param) as p:
        yield p


def test_the_peer_writes_and_reads_an_exposed_buffer(pair):
    c, s = pair
    target = bytearray(1 << 20)
    with s.expose(target, access="rw") as grant:
        s.send(grant.descriptor)
        desc = c.recv(timeout=30)
        assert len(desc) == 32
        data = os.urandom(300_000)
        c.write(desc, data, offset=4096)
        assert target[4096:4096 + len(data)] == data and not any(target[:4096])
        arr = np.arange(1000, dtype=np.float64)
        c.write(desc, arr)                                   # any buffer, from its own memory
        assert np.frombuffer(target, dtype=np.float64, count=1000).tolist() == arr.tolist()
        target[-5:] = b"tail!"
        back = bytearray(5)
        assert c.read(desc, back, offset=len(target) - 5) == 5 and back == b"tail!"
        for n in (1, 63, 4096, 1 << 20):                     # sizes, whole grant included
            data = os.urandom(n)
            c.write(desc, data)
            got = np.empty(n, dtype=np.uint8)
            c.read(desc, got)
            assert got.tobytes() == data and target[:n] == data
    assert grant.revoked


def test_access_and_bounds_are_checked_before_anything_is_posted(pair):
    c, s = pair
    buf = bytearray(4096)
    ro = s.expose(bytes(4096), access="read")
    wo = s.expose(buf, access="write")
    with pytest.raises(TypeError):
        s.expose(b"read-only memory", access="rw")
    with pytest.raises(ValueError):
        s.expose(buf, access="everything")
    with pytest.raises(PermissionError):
        c.write(ro.descriptor, b"x")
    with pytest.raises(PermissionError):
        c.read(wo.descriptor, bytearray(1))
    with pytest.raises(ValueError, match="outside"):
        c.write(wo.descriptor, b"x" * 10, offset=4090)
    with pytest.raises(ValueError, match="outside"):
        c.read(ro.descriptor, bytearray(8), offset=-1)
    with pytest.raises(ValueError, match="descriptor"):
        c.write(b"not a descriptor", b"x")
    with pytest.raises(PermissionError):                     # the same, not waiting
        c.write(ro.descriptor, b"x", wait=False)
    with pytest.raises(ValueError, match="outside"):
        c.write(wo.descriptor, b"x" * 10, offset=4090, wait=False)
    with pytest.raises(ValueError, match="outside"):
        c.write(wo.descriptor, b"x", offset=-1, wait=False)
    with pytest.raises(ValueError, match="descriptor"):
        c.write(bytes(32), b"x", wait=False)
    c.write(wo.descriptor, b"still fine", offset=4086)       # nothing above broke the QP
    assert buf[4086:] == b"still fine"
    ro.revoke()
    wo.revoke()


def test_a_revoked_grant_cannot_be_used_and_the_granting_side_is_unharmed(pair):
    c, s = pair
    buf = bytearray(b"A" * 8192)
    grant = s.expose(buf, access="rw")
    c.write(grant.descriptor, b"before")
    grant.revoke()
    grant.revoke()                                           # idempotent
    with pytest.raises(RemoteAccessError):
        c.write(grant.descriptor, b"after!")
    assert buf[:6] == b"before" and buf[6:] == b"A" * (8192 - 6)
    with pytest.raises(ConnectionResetError):                # one-sided access has ended
        c.read(grant.descriptor, bytearray(6))
    for i in range(50):                                      # messages still flow both ways
        s.send(b"granting side %d" % i)
        assert c.recv(timeout=30) == b"granting side %d" % i
        c.send(b"accessing side %d" % i)
        assert s.recv(timeout=30) == b"accessing side %d" % i
    buf.extend(b"resizable again")                           # no longer exported


def test_a_forged_descriptor_beyond_the_grant_is_refused_by_the_device(pair):
    c, s = pair
    region = np.zeros(2 * 4096, dtype=np.uint8)              # the grant is the first half
    grant = s.expose(region[:4096], access="rw")
    forged = bytearray(grant.descriptor)
    struct.pack_into("<Q", forged, 16, 8192)                 # claim twice the length
    with pytest.raises(RemoteAccessError):
        c.write(bytes(forged), b"\xff" * 8192)
    assert not region.any()
    grant.revoke()
    s.send(b"unharmed")
    assert c.recv(timeout=30) == b"unharmed"


def test_a_grant_works_only_through_the_endpoint_it_was_made_on():
    with rdmamsg.listen((IP, 0)) as ln:
        got = []
        t = threading.Thread(target=lambda: got.extend(ln.accept(timeout=60) for _ in range(2)))
        t.start()
        a = rdmamsg.connect(ln.address, timeout=60)
        b = rdmamsg.connect(ln.address, timeout=60)
        t.join()
        sa, sb = got
        try:
            secret = bytearray(4096)
            grant = sa.expose(secret, access="rw")
            peer_of_a = a if sa.raddr == a.laddr else b
            other = b if peer_of_a is a else a
            with pytest.raises(RemoteAccessError):
                other.write(grant.descriptor, b"intruder")
            assert not any(secret)
            peer_of_a.write(grant.descriptor, b"welcome")
            assert secret[:7] == b"welcome"
        finally:
            for ep in (a, b, sa, sb):
                ep.close()


def test_remote_buffers_can_be_turned_off():
    with endpoint_pair(IP, remote_buffers=False) as (c, s):
        assert s._parts.one_sided is None and c._parts.one_sided is None
        with pytest.raises(RuntimeError, match="remote_buffers=False"):
            s.expose(bytearray(10))
        with pytest.raises(ValueError):
            RemoteBuffer.parse(bytes(32))


def test_writes_that_do_not_wait_pipeline_and_copy_the_data_at_once(pair):
    c, s = pair
    rng = random.Random(7)
    target = bytearray(1 << 18)
    model = bytearray(len(target))
    src = bytearray(20_000)
    with s.expose(target, access="write") as grant:
        s.send(grant.descriptor)
        desc = c.recv(timeout=30)
        for i in range(5000):
            # inline (<= 256 B), staged (<= 8 KiB), and longer ones, which wait
            n = rng.choice((1, 64, 256, 257, 4096, 8192, 8193, 20_000))
            at = rng.randrange(len(target) - n)
            src[:n] = rng.randbytes(n)
            c.write(desc, memoryview(src)[:n], offset=at, wait=False)
            model[at:at + n] = src[:n]
            src[:n] = bytes(n)                    # reused at once: what was given went
        c.flush(timeout=60)
        assert target == model
        c.flush()                                 # nothing in flight: returns at once


def test_a_failed_write_that_did_not_wait_is_raised_by_a_later_call(pair):
    c, s = pair
    buf = bytearray(4096)
    grant = s.expose(buf, access="write")
    c.write(grant.descriptor, b"before", wait=False)
    c.flush(timeout=30)
    grant.revoke()
    with pytest.raises(RemoteAccessError):                 # by a later write, or by flush
        for _ in range(10):
            c.write(grant.descriptor, b"after!", wait=False)   # the device refuses these
        c.flush(timeout=30)
    with pytest.raises(ConnectionResetError):              # one-sided access has ended
        c.write(grant.descriptor, b"later", wait=False)
    assert buf[:6] == b"before" and not any(buf[6:])
    s.send(b"messages still flow")
    assert c.recv(timeout=30) == b"messages still flow"


def test_close_lets_writes_in_flight_land_before_the_peer_sees_the_end(pair):
    c, s = pair
    target = bytearray(64 * 1000)
    with s.expose(target, access="write") as grant:
        s.send(grant.descriptor)
        desc = c.recv(timeout=30)
        for i in range(1000):
            c.write(desc, bytes([i % 251 + 1]) * 64, offset=64 * i, wait=False)
        c.close()
        with pytest.raises(rdmamsg.PeerClosedError):
            s.recv(timeout=30)
        assert all(target[64 * i:64 * (i + 1)] == bytes([i % 251 + 1]) * 64 for i in range(1000))

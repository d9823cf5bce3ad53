"""RdmaSocket's checks that need no device: modes, states and bad input."""
import errno
import socket

import pytest

import rdmamsg


def test_only_inet_streams():
    with pytest.raises(OSError) as e:
        rdmamsg.RdmaSocket(socket.AF_INET6)
    assert e.value.errno == errno.EAFNOSUPPORT
    with pytest.raises(OSError):
        rdmamsg.RdmaSocket(socket.AF_INET, socket.SOCK_DGRAM)


def test_unconnected_and_closed_states_raise_the_socket_errors():
    s = rdmamsg.RdmaSocket()
    assert s.fileno() == -1 and s.getsockname() == ("0.0.0.0", 0)
    for call in (lambda: s.recv(1), lambda: s.send(b"x"), s.getpeername,
                 lambda: s.shutdown(socket.SHUT_WR)):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.ENOTCONN
    with pytest.raises(OSError) as e:
        s.accept()
    assert e.value.errno == errno.EINVAL
    s.bind(("127.0.0.1", 0))
    with pytest.raises(OSError):
        s.bind(("127.0.0.1", 0))
    s.close()
    s.close()
    with pytest.raises(OSError) as e:
        s.recv(1)
    assert e.value.errno == errno.EBADF
    assert s.fileno() == -1 and "closed" in repr(s)


def test_timeouts_and_blocking_modes():
    with rdmamsg.RdmaSocket() as s:
        assert s.gettimeout() is None and s.getblocking()
        s.settimeout(2)
        assert s.gettimeout() == 2.0 and s.timeout == 2.0
        s.setblocking(False)
        assert s.gettimeout() == 0.0 and not s.getblocking()
        with pytest.raises(ValueError):
            s.settimeout(-1)
        with pytest.raises(ValueError):
            s.recv(-1)
    assert rdmamsg.RdmaSocket(type=socket.SOCK_STREAM | socket.SOCK_NONBLOCK).gettimeout() == 0.0


def test_socket_options_are_accepted_and_remembered():
    with rdmamsg.RdmaSocket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, bytes([1, 0, 0, 0, 5, 0, 0, 0]))
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER) == 5


def test_connecting_to_nothing_is_refused_before_any_device_is_needed():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionRefusedError):
        rdmamsg.create_connection(("127.0.0.1", port), timeout=5)

"""Options, errors and the device-free parts of the public API."""
import errno
import pickle

import pytest

import rdmamsg
from rdmamsg.errors import (AuthenticationError, NoDeviceError, PeerClosedError, ProtocolError,
                            RdmaError, WorkCompletionError)
from rdmamsg.verbs.qp import Timing


def test_options_validate_and_merge():
    o = rdmamsg.Options.from_kwargs(None, {"recv_depth": 8})
    assert o.recv_depth == 8 and o.buffer_size == rdmamsg.Options().buffer_size
    with pytest.raises(TypeError, match="unknown option"):
        rdmamsg.Options.from_kwargs(None, {"recv_dpeth": 8})
    for bad in ({"recv_depth": 2}, {"buffer_size": 1000}, {"linger": -1}):
        with pytest.raises(ValueError):
            rdmamsg.Options(**bad)


def test_timing_is_finite():
    with pytest.raises(ValueError, match="livelock"):
        Timing(rnr_retry=7)
    with pytest.raises(ValueError):
        Timing(retry_cnt=8)


def test_errors_are_the_builtin_kinds():
    e = RdmaError("ibv_reg_mr", errno.ENOMEM, "registering 4096 bytes")
    assert isinstance(e, OSError) and e.errno == errno.ENOMEM and "ibv_reg_mr" in str(e)
    w = WorkCompletionError(12, "send")
    assert isinstance(w, ConnectionResetError) and isinstance(w, RdmaError)
    assert w.status_name == "IBV_WC_RETRY_EXC_ERR" and "peer" in w.cause and "GID" in str(w)
    assert isinstance(AuthenticationError("x"), PermissionError)
    assert isinstance(ProtocolError("x"), ConnectionError)
    assert isinstance(PeerClosedError("x"), EOFError)
    for exc in (e, w, ProtocolError("p"), NoDeviceError("n")):
        assert str(pickle.loads(pickle.dumps(exc))) == str(exc)


def test_no_device_points_at_the_fix(monkeypatch):
    from rdmamsg.verbs import device

    monkeypatch.setattr(device, "SYSFS", "/nonexistent")
    assert rdmamsg.list_devices() == []
    with pytest.raises(NoDeviceError, match="rdma link add"):
        rdmamsg.resolve_local("10.0.0.1")

"""The end of a connection (the core's PeerEnd): CLOSE, the bootstrap
connection's EOF and its grace, driven without a device.  Both engines
judge an ending with these rules and raise end_error's errors."""
import pytest

from rdmamsg.errors import PeerClosedError, ProtocolError
from rdmamsg.protocol._core import EOF_GRACE, End, PeerEnd, end_error


def test_a_close_ends_receiving_once_every_fragment_is_taken():
    end = PeerEnd()
    assert end.receiving(0, False) == End.OPEN
    end.closed = True
    assert end.receiving(2, False) == End.OPEN
    assert end.receiving(0, False) == End.CLOSED
    assert end.receiving(0, True) == End.CLOSED_MID
    assert end.sending(False) == End.PEER_CLOSED


def test_an_eof_without_close_is_gone_after_its_grace():
    end = PeerEnd()
    end.saw_eof(100.0)
    assert end.eof and not end.gone
    assert end.sleep_limit(-1) == EOF_GRACE and end.sleep_limit(0.05) == 0.05
    assert not end.expired(100.0 + EOF_GRACE / 2)
    assert end.expired(100.0 + EOF_GRACE * 2)
    assert end.gone and not end.expired(200.0)      # said once
    assert end.receiving(5, False) == End.GONE and end.sending(False) == End.GONE
    assert end.sleep_limit(-1) == -1


def test_an_eof_after_close_is_the_orderly_end():
    end = PeerEnd()
    end.closed = True
    end.saw_eof(1.0)
    assert not end.expired(1e9) and not end.gone
    assert end.receiving(0, False) == End.CLOSED


def test_the_first_eof_counts():
    end = PeerEnd()
    end.saw_eof(1.0)
    end.saw_eof(50.0)
    assert end.expired(2.0)


def test_our_own_close_ends_sending():
    assert PeerEnd().sending(True) == End.SHUT


@pytest.mark.parametrize("end,kind", [
    (End.CLOSED, PeerClosedError), (End.CLOSED_MID, ProtocolError),
    (End.GONE, ConnectionResetError), (End.PEER_CLOSED, BrokenPipeError),
    (End.SHUT, BrokenPipeError)])
def test_each_end_has_its_error(end, kind):
    assert type(end_error(end)) is kind


def test_open_is_no_error():
    with pytest.raises(ValueError):
        end_error(End.OPEN)

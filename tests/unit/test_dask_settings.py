"""rdmamsg.dask.settings: where the backend's token and options come from."""
import pytest

dask = pytest.importorskip("dask")
pytest.importorskip("distributed")
from rdmamsg.dask.settings import connection_settings  # noqa: E402


def test_the_token_and_options_come_from_dask_config(monkeypatch):
    monkeypatch.delenv("RDMAMSG_TOKEN", raising=False)
    assert connection_settings("h:1", {}) == (None, {})
    with dask.config.set({"distributed.comm.rdma.token": "s3cret",
                          "distributed.comm.rdma.options": {"channel": "write"}}):
        assert connection_settings("h:1", {"ssl_context": None}) == ("s3cret",
                                                                     {"channel": "write"})


def test_the_environment_is_the_fallback(monkeypatch):
    monkeypatch.setenv("RDMAMSG_TOKEN", "from-env")
    assert connection_settings("h:1", {})[0] == "from-env"
    with dask.config.set({"distributed.comm.rdma.token": "config-wins"}):
        assert connection_settings("h:1", {})[0] == "config-wins"


def test_bad_options_fail_up_front():
    with dask.config.set({"distributed.comm.rdma.options": {"chanel": "write"}}):
        with pytest.raises(TypeError, match="chanel"):
            connection_settings("h:1", {})
    with dask.config.set({"distributed.comm.rdma.options": {"channel": "carrier pigeon"}}):
        with pytest.raises(ValueError, match="channel"):
            connection_settings("h:1", {})


def test_required_encryption_is_refused():
    with pytest.raises(RuntimeError, match="encryption required.*rdma://h:1"):
        connection_settings("h:1", {"require_encryption": True})

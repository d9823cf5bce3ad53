"""The ``rdma`` comm backend, found by distributed through the entry point
``distributed.comm.backends: rdma``."""
from __future__ import annotations

from distributed.comm.addressing import parse_host_port, unparse_host_port
from distributed.comm.registry import Backend
from distributed.utils import ensure_ip, get_ip

from .comm import RdmaConnector, RdmaListener


class RdmaBackend(Backend):
    """Addresses are ``rdma://HOST:PORT``: HOST:PORT is the TCP address of
    rdmamsg's bootstrap, and HOST's interface chooses the RDMA device."""

    def get_connector(self) -> RdmaConnector:
        return RdmaConnector()

    def get_listener(self, loc: str, handle_comm, deserialize: bool,
                     **connection_args) -> RdmaListener:
        return RdmaListener(loc, handle_comm, deserialize, **connection_args)

    def get_address_host(self, loc: str) -> str:
        return parse_host_port(loc)[0]

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        return parse_host_port(loc)

    def resolve_address(self, loc: str) -> str:
        host, port = parse_host_port(loc)
        return unparse_host_port(ensure_ip(host), port)

    def get_local_address_for(self, loc: str) -> str:
        host, _ = parse_host_port(loc)
        return unparse_host_port(get_ip(ensure_ip(host)), None)

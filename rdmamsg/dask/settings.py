"""Where the backend's settings come from: Dask's configuration.

``distributed.comm.rdma.token``: the shared secret every end must hold
(Dask reads ``DASK_DISTRIBUTED__COMM__RDMA__TOKEN`` into it; ``RDMAMSG_TOKEN``
is read when the configuration has none).  A peer without it is refused in
the bootstrap, before any queue pair exists.

``distributed.comm.rdma.options``: rdmamsg.Options fields for every
connection (``{"channel": "write"}``, say).
"""
from __future__ import annotations

import ipaddress
import os
from typing import Any

import dask

from ..channel.options import Options
from ..verbs.device import list_devices


def connection_settings(address: str, connection_args: dict[str, Any]
                        ) -> tuple[str | None, dict[str, Any]]:
    """(token, options) for a connection to, or a listener on, ``address``.
    Of what Dask passes through (``connection_args``: TLS settings and the
    like) only ``require_encryption`` applies: rdma:// does not encrypt, so
    it refuses, as tcp:// does (RuntimeError)."""
    if connection_args.get("require_encryption"):
        raise RuntimeError("encryption required by Dask configuration, refusing "
                           f"communication from/to 'rdma://{address}' (rdma:// is not encrypted)")
    token = dask.config.get("distributed.comm.rdma.token", None) or \
        os.environ.get("RDMAMSG_TOKEN") or None
    options = dict(dask.config.get("distributed.comm.rdma.options", None) or {})
    Options.from_kwargs(None, options)          # a TypeError or ValueError here, not later
    return (None if token is None else str(token)), options


def default_host() -> str:
    """The address a listener on every interface gives out: the first IPv4
    address of an active RoCE port (the kernel's TCP route to another
    interface would reach no RDMA device), else the loopback address."""
    for dev in list_devices():
        for port in dev.ports:
            if not port.active:
                continue
            for gid in port.gids:
                if gid.ip and gid.type == "RoCE v2" and ":" not in gid.ip:
                    if not ipaddress.ip_address(gid.ip).is_loopback:
                        return gid.ip
    return "127.0.0.1"

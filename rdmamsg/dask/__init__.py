"""rdmamsg as a comm backend of Dask's ``distributed``: the ``rdma://`` scheme.

    dask scheduler --protocol rdma --interface eth1
    dask worker rdma://10.0.0.1:8786
    LocalCluster(protocol="rdma://", n_workers=2)
    Client("rdma://10.0.0.1:8786")

Install with ``pip install rdmamsg[dask]``; distributed finds the backend by
its entry point.  Settings (the token, connection options) are Dask
configuration under ``distributed.comm.rdma`` (settings.py).  The modules:
framing (a Dask message as rdmamsg messages, no I/O), loopio (messages on an
Endpoint from an asyncio loop), comm (Comm, Connector, Listener), backend.
"""
from __future__ import annotations

from .backend import RdmaBackend

__all__ = ["RdmaBackend"]

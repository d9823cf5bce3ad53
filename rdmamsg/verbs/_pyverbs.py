"""Import pyverbs without its side effects, and name what we need from it.

Importing pyverbs 44 calls ``logging.basicConfig(level=INFO)`` on the root
logger; we undo that so an application's logging stays its own.  rdma-core 59
renamed ``pyverbs.enums`` to ``pyverbs.libibverbs_enums``; both are accepted.
"""
from __future__ import annotations

import logging
import threading

from ..errors import NoDeviceError

#: Held while verbs event fds (a device's async fd, a completion channel's)
#: open or close, so that cq.py can tell which fd a new channel got by
#: looking at /proc: no other thread adds one or hands a number back meanwhile.
fd_lock = threading.Lock()

_root = logging.getLogger()
_handlers, _level = list(_root.handlers), _root.level
try:
    import pyverbs.cq as cq
    import pyverbs.device as device
    import pyverbs.mr as mr
    import pyverbs.pd as pd
    import pyverbs.qp as qp
    import pyverbs.wr as wr
    from pyverbs.addr import GID, AHAttr, GlobalRoute
    from pyverbs.pyverbs_error import PyverbsError, PyverbsRDMAError

    try:
        import pyverbs.libibverbs_enums as enums
    except ImportError:
        import pyverbs.enums as enums
except ImportError as exc:  # pragma: no cover - depends on the host
    raise NoDeviceError(
        "pyverbs is not importable: install Debian's python3-pyverbs and make the "
        "venv with --system-site-packages (ci/setup does both); "
        f"python -m rdmamsg doctor says more ({exc})"
    ) from exc
finally:
    for h in list(_root.handlers):
        if h not in _handlers:
            _root.removeHandler(h)
    _root.setLevel(_level)

__all__ = ["fd_lock", "GID", "AHAttr", "GlobalRoute", "cq", "device", "mr", "pd", "qp", "wr", "enums", "PyverbsError", "PyverbsRDMAError"]

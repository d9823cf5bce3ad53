"""Import pyverbs without its side effects, and name what we need from it.

Importing pyverbs 44 calls ``logging.basicConfig(level=INFO)`` on the root
logger; we undo that so an application's logging stays its own.  rdma-core 59
renamed ``pyverbs.enums`` to ``pyverbs.libibverbs_enums``, and 65 grouped its
constants into enum classes; ``enums`` names them all, flat, either way
(``cm_enums`` rdma_cm's: ``cm_enums`` up to 64, ``librdmacm_enums`` from 65).
"""
from __future__ import annotations

import enum
import logging
import threading
import types

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
        import pyverbs.libibverbs_enums as _enums
    except ImportError:
        import pyverbs.enums as _enums
    try:                                    # rdma_cm's, renamed alike by rdma-core 65
        import pyverbs.librdmacm_enums as _cm_enums
    except ImportError:
        import pyverbs.cm_enums as _cm_enums
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



def _flat(module) -> types.SimpleNamespace:
    """The verbs constants by name (``enums.IBV_ACCESS_LOCAL_WRITE``).  Up to
    rdma-core 64 they sit at module level; 65 groups most of them into
    IntEnum/IntFlag classes (``ibv_access_flags.IBV_ACCESS_LOCAL_WRITE``),
    whose members are ints all the same."""
    ns = {name: getattr(module, name) for name in dir(module) if not name.startswith("_")}
    for value in list(ns.values()):
        if isinstance(value, type) and issubclass(value, enum.Enum):
            for name, member in value.__members__.items():
                ns.setdefault(name, member)
    return types.SimpleNamespace(**ns)


enums = _flat(_enums)
cm_enums = _flat(_cm_enums)

__all__ = ["fd_lock", "GID", "AHAttr", "GlobalRoute", "cq", "device", "mr", "pd", "qp", "wr", "enums", "cm_enums", "PyverbsError", "PyverbsRDMAError"]

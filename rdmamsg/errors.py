"""rdmamsg's exceptions.

Each subclasses the built-in exception a Python programmer already catches:
verbs failures are ``OSError`` with ``.errno``; a dead peer is
``ConnectionResetError``; an expired wait is ``TimeoutError``.
"""
from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "RdmaError",
    "WorkCompletionError",
    "RemoteAccessError",
    "ProtocolError",
    "HandshakeError",
    "AuthenticationError",
    "PeerClosedError",
    "PoolExhaustedError",
    "PoolTimeoutError",
    "NoDeviceError",
    "PollerUnavailableError",
    "RemoteError",
    "UnknownMethodError",
    "InheritedError",
    "closed_error",
    "inherited_error",
]


class RdmaError(OSError):
    """A verbs call failed.  ``.call`` names it (``ibv_reg_mr``), ``.errno`` says why."""

    def __init__(self, call: str, err: int, detail: str = "") -> None:
        msg = f"{call} failed: {os.strerror(err) if err else 'unknown error'}"
        if detail:
            msg += f" ({detail})"
        super().__init__(err, msg)
        self.call = call
        self.detail = detail

    def __str__(self) -> str:
        return self.strerror or super().__str__()

    def __reduce__(self):
        return (type(self), (self.call, self.errno, self.detail))


# ibv_wc_status values, their names, and what usually causes each one.
_WC_STATUS = {
    0: ("SUCCESS", "no error"),
    1: ("LOC_LEN_ERR", "a message was longer than the receive buffer posted for it"),
    2: ("LOC_QP_OP_ERR", "the QP rejected the work request (bad opcode or too many SGEs)"),
    3: ("LOC_EEC_OP_ERR", "local EE context error"),
    4: ("LOC_PROT_ERR", "a buffer is not inside a registered MR or its lkey is wrong"),
    5: ("WR_FLUSH_ERR", "the QP went to the error state; outstanding work was flushed"),
    6: ("MW_BIND_ERR", "memory window bind failed"),
    7: ("BAD_RESP_ERR", "the peer sent an unexpected response"),
    8: ("LOC_ACCESS_ERR", "local access violation"),
    9: ("REM_INV_REQ_ERR", "the peer rejected the request (message too long or bad opcode)"),
    10: ("REM_ACCESS_ERR", "the peer denied access: wrong rkey, revoked grant or out of bounds"),
    11: ("REM_OP_ERR", "the peer could not complete the operation"),
    12: ("RETRY_EXC_ERR", "no answer from the peer: it is gone, or the GID/route is wrong"),
    13: ("RNR_RETRY_EXC_ERR", "the peer had no receive posted for too long (flow control broken)"),
    14: ("LOC_RDD_VIOL_ERR", "local RDD violation"),
    15: ("REM_INV_RD_REQ_ERR", "the peer rejected an RDMA read request"),
    16: ("REM_ABORT_ERR", "the peer aborted the operation"),
    17: ("INV_EECN_ERR", "invalid EE context number"),
    18: ("INV_EEC_STATE_ERR", "invalid EE context state"),
    19: ("FATAL_ERR", "fatal device error"),
    20: ("RESP_TIMEOUT_ERR", "response timeout"),
    21: ("GENERAL_ERR", "general error"),
}


def wc_status_name(status: int) -> str:
    """``IBV_WC_<NAME>`` for an ``ibv_wc_status`` value."""
    return "IBV_WC_" + _WC_STATUS.get(status, (f"STATUS_{status}", ""))[0]


class WorkCompletionError(RdmaError, ConnectionResetError):
    """A work request completed with an error; the connection is unusable.

    ``.status`` is the ``ibv_wc_status`` value, ``.status_name`` its name
    and ``.cause`` the usual reason for it.
    """

    def __init__(self, status: int, opcode: str = "", vendor_err: int = 0) -> None:
        name, cause = _WC_STATUS.get(status, (f"STATUS_{status}", "unknown status"))
        self.status = status
        self.opcode = opcode
        self.vendor_err = vendor_err
        self.status_name = "IBV_WC_" + name
        self.cause = cause
        what = f"{opcode} " if opcode else ""
        msg = f"{what}completed with {self.status_name}: {cause}"
        if vendor_err:
            msg += f" (vendor error {vendor_err:#x})"
        OSError.__init__(self, _errno.ECONNRESET, msg)
        self.call = "ibv_poll_cq"

    def __str__(self) -> str:
        return self.strerror or ""

    def __reduce__(self):
        return (type(self), (self.status, self.opcode, self.vendor_err))


class RemoteAccessError(WorkCompletionError, PermissionError):
    """The peer's device refused a one-sided access: the grant was revoked,
    or its key or bounds were wrong.  One-sided access on that endpoint has
    ended; its messages still flow."""


class _Described(OSError):
    """An OSError made from a message alone; ``errno`` is the class's ERRNO."""

    ERRNO = 0

    def __init__(self, message: str) -> None:
        super().__init__(self.ERRNO, message)

    def __str__(self) -> str:
        return self.strerror or ""

    def __reduce__(self):
        return (type(self), (self.strerror,))


class ProtocolError(_Described, ConnectionError):
    """The peer broke the rdmamsg protocol; the connection was closed."""

    ERRNO = _errno.EPROTO


class HandshakeError(ProtocolError):
    """The bootstrap handshake failed (wrong version, garbage, refused)."""


class AuthenticationError(HandshakeError, PermissionError):
    """The peer did not prove it holds the shared token."""


class PeerClosedError(EOFError):
    """The peer closed the connection and every message it sent was received."""


class PoolExhaustedError(MemoryError):
    """The memory pool has no free buffer of the size asked for."""


class PoolTimeoutError(PoolExhaustedError, TimeoutError):
    """Waiting for a pool buffer timed out."""


class NoDeviceError(_Described):
    """No usable RDMA device or port; ``python -m rdmamsg doctor`` says why."""

    ERRNO = _errno.ENODEV


class PollerUnavailableError(RuntimeError):
    """The Cython poller cannot be used with these pyverbs objects."""


class RemoteError(RuntimeError):
    """An RPC handler raised on the server.  ``.type_name`` is its exception's
    qualified name (``builtins.ValueError``), ``.message`` its text and
    ``.remote_traceback`` the server's traceback."""

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self):
        return (type(self), (self.type_name, self.message, self.remote_traceback))


class UnknownMethodError(RemoteError, LookupError):
    """The server has no handler of that name."""


class InheritedError(RuntimeError):
    """A child process used an object its parent made before fork().  Its
    verbs resources (QPs, MRs) belong to the parent; the child must make its
    own endpoints."""


def inherited_error(what: str, owner_pid: int) -> InheritedError:
    return InheritedError(
        f"this {what} was made by process {owner_pid} before fork(); process {os.getpid()} "
        "inherited it and cannot use it (its QPs and memory registrations are the parent's): "
        "make new endpoints in the child")


def closed_error(what: str) -> OSError:
    """The error for using an object after ``close()``, as sockets raise it."""
    return OSError(_errno.EBADF, f"{what} is closed")

"""What a child process does with the verbs resources it inherits through fork().

A child shares its parent's uverbs file: destroying an inherited QP, CQ, MR
or PD in the child (by close(), by garbage collection or at exit) would
destroy the parent's, and posting on an inherited QP would corrupt its
queues.  So every pyverbs object rdmamsg makes is registered here, and just
before fork() each gets one more reference, dropped again in the parent
but kept in the child: there, nothing inherited is ever freed.  Objects
that use them (the engines, endpoints, RPC clients) register as owners;
in the child each owner's ``_disown()`` makes every later use raise
InheritedError, without touching a lock a vanished thread may hold.
"""
from __future__ import annotations

import ctypes
import os
import weakref
from typing import TypeVar

T = TypeVar("T")

_verbs: "weakref.WeakSet" = weakref.WeakSet()     # pyverbs objects we made
_owners: "weakref.WeakSet" = weakref.WeakSet()    # objects with a _disown() hook
_held: list = []

_incref = ctypes.pythonapi.Py_IncRef
_decref = ctypes.pythonapi.Py_DecRef
_incref.argtypes = _decref.argtypes = [ctypes.py_object]
_incref.restype = _decref.restype = None


def keep(obj: T) -> T:
    """Register a pyverbs object we made (and return it)."""
    _verbs.add(obj)
    return obj


def owner(obj: T) -> T:
    """Register an object whose ``_disown()`` the child calls after fork()."""
    _owners.add(obj)
    return obj


def _before_fork() -> None:
    _held[:] = list(_verbs)
    for obj in _held:
        _incref(obj)


def _after_fork_in_parent() -> None:
    for obj in _held:
        _decref(obj)
    _held.clear()


def _after_fork_in_child() -> None:
    _held.clear()             # the extra references stay: nothing inherited is freed here
    for obj in list(_owners):
        try:
            obj._disown()
        except Exception:     # noqa: BLE001 (a fork hook must not fail the fork)
            pass
    _owners.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)

"""The package's layers import without a device."""
import ast
import importlib
import os
import types

import pytest


@pytest.mark.parametrize("mod", ["rdmamsg", "rdmamsg.errors", "rdmamsg.verbs.device"])
def test_imports(mod):
    importlib.import_module(mod)


def test_extension_builds_and_imports():
    cp = importlib.import_module("rdmamsg.transport._cpoller")
    assert cp.BACKEND == "cython"


def test_both_pollers_keep_the_same_contract():
    from rdmamsg.transport import _cpoller, _pyengine, _pyonesided
    from rdmamsg.transport.backend import ENGINE_API, POSTER_API

    for names, twins in ((ENGINE_API, (_cpoller.Engine, _pyengine.Engine)),
                         (POSTER_API, (_cpoller.OneSidedPoster, _pyonesided.OneSidedPoster))):
        for cls in twins:
            missing = [n for n in names if not callable(getattr(cls, n, None))]
            assert not missing, f"{cls.__module__}.{cls.__name__} lacks {missing}"


def _defined(body) -> dict:
    """name -> node of what a stub's body defines (assignments, defs, classes)."""
    out = {}
    for node in body:
        if isinstance(node, ast.AnnAssign):
            out[node.target.id] = node
        elif isinstance(node, ast.Assign):
            out.update((t.id, node) for t in node.targets)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
    return out


@pytest.mark.parametrize("name", ["rdmamsg.transport._cpoller", "rdmamsg.rpc._rpcfast",
                                  "rdmamsg.protocol._rsrules", "rdmamsg.protocol._core"])
def test_each_extension_has_stubs_that_name_what_it_has(name):
    mod = importlib.import_module(name)
    package, own = name.rsplit(".", 1)
    where = os.path.dirname(importlib.import_module(package).__file__)
    with open(os.path.join(where, own + ".pyi")) as f:   # beside the sources, not the build
        stub = _defined(ast.parse(f.read()).body)
    for n, node in stub.items():
        assert hasattr(mod, n), f"{name}.pyi names {n}, which the module lacks"
        if isinstance(node, ast.ClassDef):
            for attr in _defined(node.body):
                assert hasattr(getattr(mod, n), attr), f"{name}.{n} lacks {attr}"
    public = {n for n, v in vars(mod).items() if not n.startswith("_")
              and not isinstance(v, types.ModuleType)
              and getattr(v, "__module__", own).rsplit(".", 1)[-1] == own}
    assert not public - set(stub), f"{name}.pyi lacks {sorted(public - set(stub))}"

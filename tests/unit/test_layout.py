"""The package's layers import without a device."""
import importlib

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

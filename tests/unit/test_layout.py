"""The package's layers import without a device."""
import importlib

import pytest


@pytest.mark.parametrize("mod", ["rdmamsg", "rdmamsg.errors", "rdmamsg.verbs.device"])
def test_imports(mod):
    importlib.import_module(mod)


def test_extension_builds_and_imports():
    cp = importlib.import_module("rdmamsg.transport._cpoller")
    assert cp.BACKEND == "cython"

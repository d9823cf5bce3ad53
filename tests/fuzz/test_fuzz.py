"""The fuzz tier: each atheris target in this folder runs for a bounded time,
from its seed corpus, and must find nothing.  A finding is kept as
``crash-*`` in the test's tmp dir and its traceback shown; replay it with
``python tests/fuzz/fuzz_X.py CRASH_FILE``."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = sorted(f[5:-3] for f in os.listdir(HERE) if f.startswith("fuzz_") and f.endswith(".py"))
SECONDS = int(os.environ.get("RDMAMSG_FUZZ_SECONDS", "20"))


def test_every_decoder_has_a_target():
    assert TARGETS == ["descriptor", "fragments", "handshake", "ring", "rpc_wire"]


@pytest.mark.parametrize("target", TARGETS)
def test_target_finds_nothing(target, tmp_path):
    script = os.path.join(HERE, f"fuzz_{target}.py")
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, script, "--write-seeds", str(corpus)], check=True,
                   capture_output=True)
    run = subprocess.run(
        [sys.executable, script, str(corpus), f"-max_total_time={SECONDS}", "-seed=1",
         "-max_len=8192", "-rss_limit_mb=1024", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, cwd=tmp_path, timeout=SECONDS * 4 + 60)
    found = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "oom-",
                                                                             "timeout-")))
    tail = "\n".join(line for line in run.stderr.splitlines()
                     if not line.startswith("INFO: Instrumenting"))[-4000:]
    assert run.returncode == 0 and not found, f"fuzz_{target} found {found}:\n{tail}"
    assert "DONE" in run.stderr, tail

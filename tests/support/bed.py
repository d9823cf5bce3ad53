"""Where the tests run: on the soft-RoCE bed (a VM from ci/rxe-vm, or a host
with a real ACTIVE port run by ci/test), or not."""
from __future__ import annotations

import gc
import json
import os
import subprocess


def in_bed() -> bool:
    return os.environ.get("RDMAMSG_IN_BED") == "1"


def self_ip() -> str | None:
    return os.environ.get("RDMAMSG_SELF")


def peer_ip() -> str | None:
    return os.environ.get("RDMAMSG_PEER")


def resource_counts() -> dict[str, int]:
    """This process's verbs objects as the kernel counts them (rdma resource show)."""
    gc.collect()
    pid = os.getpid()
    counts = {}
    for kind in ("qp", "cq", "mr", "pd"):
        out = subprocess.run(["rdma", "-j", "resource", "show", kind], capture_output=True,
                             text=True, check=True).stdout
        rows = json.loads(out or "[]")
        counts[kind] = sum(1 for r in rows if r.get("pid") == pid)
    counts["fd"] = len(os.listdir("/proc/self/fd"))
    return counts

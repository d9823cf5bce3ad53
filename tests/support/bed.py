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


def verbs_counts() -> dict[str, int]:
    """resource_counts() without fds: QPs, CQs, MRs and PDs only (for checks
    made while a child's pipe is still open)."""
    counts = resource_counts()
    del counts["fd"]
    return counts


def process_memory(pid: int) -> dict[str, int]:
    """A process's resident memory and what it has registered with the device,
    in bytes, and its QPs (from /proc and rdma resource show)."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    rows = json.loads(subprocess.run(["rdma", "-j", "resource", "show", "mr"], capture_output=True,
                                     text=True, check=True).stdout or "[]")
    registered = sum(r.get("mrlen", 0) for r in rows if r.get("pid") == pid)
    qps = json.loads(subprocess.run(["rdma", "-j", "resource", "show", "qp"], capture_output=True,
                                    text=True, check=True).stdout or "[]")
    return {"rss": rss, "registered": registered,
            "qps": sum(1 for r in qps if r.get("pid") == pid)}

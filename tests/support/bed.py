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


def _rows(kind: str) -> list[dict]:
    out = subprocess.run(["rdma", "-j", "resource", "show", kind], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out or "[]")


def _user(row: dict) -> bool:
    """Not the kernel's own (ib_core's QP1, CQ and PD carry a comm, no pid)."""
    return "pid" in row or "comm" not in row


def _ours(row: dict, tids: set[int]) -> bool:
    """Made by one of ``tids``, or by a thread that has exited.  The kernel
    names the *thread* that made a resource (its TID) and forgets it once that
    thread is gone: resources a finished accept thread made have no pid."""
    return row.get("pid") in tids if "pid" in row else "comm" not in row


def resource_counts() -> dict[str, int]:
    """This process's verbs objects as the kernel counts them (rdma resource
    show; see _ours), and its open fds."""
    gc.collect()
    tids = {int(t) for t in os.listdir("/proc/self/task")}
    counts = {kind: sum(1 for r in _rows(kind) if _ours(r, tids))
              for kind in ("qp", "cq", "mr", "pd")}
    counts["fd"] = len(os.listdir("/proc/self/fd"))
    return counts


def verbs_counts() -> dict[str, int]:
    """resource_counts() without fds: QPs, CQs, MRs and PDs only (for checks
    made while a child's pipe is still open)."""
    counts = resource_counts()
    del counts["fd"]
    return counts


def process_memory(pid: int) -> dict[str, int]:
    """A process's resident memory, what its living threads have registered
    with the device (bytes), and their QPs."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    tids = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    mrs = [r for r in _rows("mr") if r.get("pid") in tids]
    return {"rss": rss, "registered": sum(r.get("mrlen", 0) for r in mrs),
            "qps": sum(1 for r in _rows("qp") if r.get("pid") in tids)}


def user_qps() -> list[dict]:
    """Every user QP on the device (rdma resource show qp rows)."""
    return [r for r in _rows("qp") if _user(r)]


def device_memory() -> dict[str, int]:
    """All user memory registered on the device (bytes), and all user QPs."""
    return {"registered": sum(r.get("mrlen", 0) for r in _rows("mr") if _user(r)),
            "qps": sum(1 for r in _rows("qp") if _user(r))}

"""``python -m rdmamsg info``: devices, ports, GIDs, the memlock limit and the poller.

    python -m rdmamsg info [--json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ..errors import NoDeviceError
from . import probe


def collect() -> dict:
    """What ``info`` shows, as plain data (its ``--json`` output)."""
    from ..verbs import _pyverbs  # noqa: F401  (NoDeviceError, saying why, without pyverbs)
    from ..transport.backend import poller_mode
    from ..verbs.device import list_devices

    mode = poller_mode()
    why_not = probe.cython_error()
    if mode == "python" or (why_not and mode == "auto"):
        poller = "python"
    else:
        poller = None if why_not else "cython"     # None: cython required, but it cannot run
    devices = list_devices()
    out = [dataclasses.asdict(d) for d in devices]
    for d, dd in zip(devices, out):
        for p, pp in zip(d.ports, dd["ports"]):
            for g, gg in zip(p.gids, pp["gids"]):
                gg["ip"] = g.ip
    return {
        "devices": out,
        "memlock_bytes": probe.memlock(),           # None: unlimited
        "cap_ipc_lock": probe.has_ipc_lock(),
        "poller": {"mode": mode, "in_use": poller, "cython_unavailable": why_not},
    }


def _limit(n: int | None) -> str:
    return "unlimited" if n is None else f"{n} bytes ({n >> 10} KiB)"


def show(info: dict, out=sys.stdout) -> None:
    if not info["devices"]:
        print("no RDMA device; 'python -m rdmamsg doctor' says how to get one", file=out)
    for d in info["devices"]:
        print(f"{d['name']}  node GUID {d['node_guid']}", file=out)
        for p in d["ports"]:
            print(f"  port {p['port']}: {p['state']}, {p['link_layer']}, active MTU "
                  f"{p['active_mtu']} (max {p['max_mtu']}), LID {p['lid']}", file=out)
            if p["gids"]:
                print(f"    {'idx':>4}  {'GID':<40} {'type':<11} {'netdev':<10} IP", file=out)
            for g in p["gids"]:
                print(f"    {g['index']:>4}  {g['gid']:<40} {g['type']:<11} "
                      f"{g['netdev'] or '-':<10} {g['ip'] or '-'}", file=out)
    lock = "does not apply (CAP_IPC_LOCK)" if info["cap_ipc_lock"] else _limit(info["memlock_bytes"])
    print(f"RLIMIT_MEMLOCK: {lock}", file=out)
    pl = info["poller"]
    line = f"poller: {pl['in_use'] or 'none'} (RDMAMSG_POLLER={pl['mode']})"
    if pl["cython_unavailable"] and pl["mode"] != "python":
        line += f"; the Cython poller cannot run: {pl['cython_unavailable']}"
    print(line, file=out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rdmamsg info", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    try:
        info = collect()
    except NoDeviceError as exc:        # pyverbs does not import
        print(f"rdmamsg info: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        show(info)
    return 0

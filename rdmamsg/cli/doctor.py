"""``python -m rdmamsg doctor``: check what usually goes wrong, and say how to fix it.

    python -m rdmamsg doctor [--ip LOCAL_IP | --peer HOST] [--no-selftest]

It exits 1 when something blocks use (an ERROR line), else 0.  With a device
it also makes a loopback connection and sends a message through it.
"""
from __future__ import annotations

import argparse

from . import probe
from .diagnose import ERROR, WARN, blocked, diagnose

MARK = {ERROR: "ERROR", WARN: "warn ", "ok": "ok   "}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rdmamsg doctor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--ip", help="the local IP your connections use (default: the first "
                                    "RoCE v2 GID's)")
    where.add_argument("--peer", help="a host you will connect to: check the local IP that "
                                      "routes to it")
    ap.add_argument("--no-selftest", action="store_true", help="skip the loopback connection")
    args = ap.parse_args(argv)
    try:
        facts = probe.gather(args.ip, args.peer, not args.no_selftest)
    except OSError as exc:
        ap.error(f"--peer {args.peer}: {exc}")
    findings = diagnose(facts)
    for x in findings:
        print(f"{MARK[x.level]} {x.what}")
        if x.fix:
            print(f"      fix: {x.fix}")
    if blocked(findings):
        print("\nrdmamsg cannot run here until the ERROR lines are fixed.")
        return 1
    print("\nrdmamsg can run here.")
    return 0

"""python -m rdmamsg.run [--match RULE ...] [--protocol rsocket] [-v] (-m module | script.py) [args...]

Runs an unmodified Python program with rdmamsg.patch() in force: its TCP
connections to matching addresses go over RDMA, everything else through the
kernel.  With no --match, the networks behind active RoCE ports match.
"""
from __future__ import annotations

import argparse
import logging
import os
import runpy
import sys

from .transparent import patch


_WITH_VALUE = ("--match", "--channel", "--protocol")


def _split(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(our options, the module or None, the program's argv): the program's
    own options, after -m MODULE or the script, are never ours."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-m" and i + 1 < len(argv):
            return argv[:i], argv[i + 1], argv[i + 2:]
        if arg.startswith("-m") and len(arg) > 2:
            return argv[:i], arg[2:], argv[i + 1:]
        if arg in _WITH_VALUE:
            i += 2
        elif arg == "--":
            return argv[:i], None, argv[i + 1:]
        elif arg.startswith("-"):
            i += 1
        else:
            return argv[:i], None, argv[i:]
    return argv, None, []


def main(argv: list[str] | None = None) -> int:
    ours, module, program = _split(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        prog="python -m rdmamsg.run", description=__doc__.split("\n\n")[1],
        usage="%(prog)s [--match RULE ...] [--protocol P] [-v] (-m module | script.py) [args...]")
    ap.add_argument("--match", action="append", metavar="RULE",
                    help="HOST[:PORT], CIDR[:PORT] or *:PORT to carry over RDMA (repeatable)")
    ap.add_argument("--channel", choices=("send", "write"),
                    help="the rdmamsg channel for the connections (default: send)")
    ap.add_argument("--protocol", choices=("rdmamsg", "rsocket"), default="rdmamsg",
                    help="rdmamsg's own (both ends rdmamsg), or rsocket: librdmacm's "
                         "rsockets, to talk to C programs using rsocket() or librspreload.so")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="say on stderr which connections go over RDMA")
    args = ap.parse_args(ours)
    if module is None and not program:
        ap.error("give -m module or a script")
    if args.verbose:
        logging.basicConfig(format="%(message)s")
        logging.getLogger("rdmamsg.transparent").setLevel(logging.INFO)
    if args.protocol == "rsocket" and args.channel:
        ap.error("--channel is an rdmamsg protocol option; rsockets has one way to move data")
    options = ({"protocol": "rsocket"} if args.protocol == "rsocket"
               else {"channel": args.channel or "send"})
    try:
        p = patch(args.match, **options)
    except ValueError as exc:
        ap.error(str(exc))
    if args.verbose:
        print(f"rdmamsg.run: over RDMA: {p.matcher}", file=sys.stderr)
    if module is not None:
        sys.argv = [module, *program]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(program)
        sys.path.insert(0, os.path.dirname(os.path.abspath(program[0])))
        runpy.run_path(program[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())

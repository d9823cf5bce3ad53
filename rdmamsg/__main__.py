"""``python -m rdmamsg COMMAND``: info, doctor, bench and rstream."""
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"info": "rdmamsg.cli.info", "doctor": "rdmamsg.cli.doctor",
                "bench": "rdmamsg.cli.bench",
                "rstream": "rdmamsg.cli.rstream"}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m rdmamsg {{{','.join(commands)}}} ...\n"
              "  info    devices, ports, GIDs, the memlock limit and the poller\n"
              "  doctor  check what usually goes wrong and say how to fix it\n"
              "  bench   a perftest for rdmamsg (--server / --client HOST)\n"
              "  rstream rdma-core's rstream benchmark over rsockets (-s HOST / server)",
              file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

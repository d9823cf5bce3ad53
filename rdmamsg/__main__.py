"""``python -m rdmamsg COMMAND``: the command line (bench for now)."""
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"bench": "rdmamsg.cli.bench"}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m rdmamsg {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(commands[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

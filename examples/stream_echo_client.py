"""A client for stream_echo_server.py: a few lines there and back.

    python examples/stream_echo_client.py HOST [PORT]
"""
import sys

import rdmamsg


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 7472
    with rdmamsg.create_connection((host, port), timeout=30) as s:
        f = s.makefile("rwb", buffering=0)
        for word in ("zero-copy", "kernel-bypass", "streams"):
            s.sendall(word.encode() + b"\n")
            print("echoed:", f.readline().decode().rstrip())


if __name__ == "__main__":
    main()

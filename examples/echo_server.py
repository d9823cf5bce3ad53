"""An rdmamsg echo server: every message comes back, whole and in order.

    python examples/echo_server.py [HOST [PORT]]      (HOST: the RDMA device's IP)
"""
import os
import sys

import rdmamsg


def main() -> None:
    host = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("RDMAMSG_SELF", "0.0.0.0")
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 7471
    once = os.environ.get("ECHO_ONCE") == "1"
    with rdmamsg.listen((host, port)) as ln:
        print(f"echo server listening on {host}:{port}", flush=True)
        while True:
            with ln.accept() as ep:
                print(f"client {ep.raddr[0]} connected over {ep.local.device} "
                      f"(poller: {ep.poller})", flush=True)
                try:
                    while True:
                        ep.send(ep.recv())
                except rdmamsg.PeerClosedError:
                    print("client closed", flush=True)
            if once:
                break


if __name__ == "__main__":
    main()

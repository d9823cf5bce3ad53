"""An echo server on the socket facade: the standard socket API, over RDMA.

    python examples/stream_echo_server.py [HOST [PORT]]   (HOST: the RDMA device's IP)

Each client gets a thread; it reads lines through makefile() and writes them back.
STREAM_ONCE=1 makes it serve one client, then exit (for ci/demo).
"""
import os
import sys
import threading

import rdmamsg


def serve(conn: rdmamsg.RdmaSocket, addr) -> None:
    with conn, conn.makefile("rb") as rf, conn.makefile("wb", buffering=0) as wf:
        for line in rf:
            wf.write(line)
    print(f"{addr[0]}:{addr[1]} closed", flush=True)


def main() -> None:
    host = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("RDMAMSG_SELF", "0.0.0.0")
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 7472
    with rdmamsg.create_server((host, port)) as srv:
        print(f"stream echo server on {host}:{port}", flush=True)
        while True:
            conn, addr = srv.accept()
            if os.environ.get("STREAM_ONCE") == "1":     # ci/demo: one client, then exit
                serve(conn, addr)
                return
            threading.Thread(target=serve, args=(conn, addr), daemon=True).start()


if __name__ == "__main__":
    main()

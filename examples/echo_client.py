"""An rdmamsg echo client: sends a few messages and times their round trips.

    python examples/echo_client.py HOST [PORT]
"""
import os
import statistics
import sys
import time

import rdmamsg


def connect_with_retry(addr, wait=60.0):
    deadline = time.monotonic() + wait
    while True:
        try:
            return rdmamsg.connect(addr, timeout=10)
        except (ConnectionRefusedError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main() -> None:
    host = sys.argv[1] if len(sys.argv) > 1 else os.environ["RDMAMSG_PEER"]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 7471
    with connect_with_retry((host, port)) as ep:
        print(f"connected to {host}:{port} from {ep.laddr[0]} via {ep.local.device} "
              f"GID index {ep.local.gid_index} (poller: {ep.poller})")
        for msg, rounds in ((b"hello over RDMA", 50), (b"x" * 4096, 50), (os.urandom(1 << 20), 10)):
            times = []
            for _ in range(rounds + 1):          # the first is a warm-up
                t0 = time.perf_counter()
                ep.send(msg)
                back = ep.recv(timeout=30)
                times.append((time.perf_counter() - t0) * 1e6)
                assert back == msg, "echo mismatch"
            shown = msg.decode() if len(msg) < 32 else f"<{len(msg)} bytes>"
            print(f"  round trip of {shown:<18} median {statistics.median(times[1:]):9.1f} us, "
                  f"best {min(times[1:]):9.1f} us ({rounds} rounds, all intact)")


if __name__ == "__main__":
    main()

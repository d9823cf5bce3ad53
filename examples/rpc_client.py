"""Calls to examples/rpc_server.py from another host.

    python examples/rpc_client.py HOST [PORT]
"""
import hashlib
import sys
import time

import numpy as np

import rdmamsg
import rdmamsg.rpc


def main() -> None:
    host = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 7480
    with rdmamsg.rpc.Client((host, port), timeout=30) as client:
        print("add(2, 3) =", client.call("add", 2, 3))

        blob = np.random.default_rng(1).bytes(8 << 20)
        t0 = time.perf_counter()
        remote = client.call("checksum", blob)
        secs = time.perf_counter() - t0
        assert remote == hashlib.sha256(blob).hexdigest()
        print(f"checksum of 8 MiB: matches ({secs * 1e3:.0f} ms, the bytes sent from our "
              "memory without a copy)")

        arr = np.arange(1_000_000, dtype=np.float32).reshape(1000, 1000)
        back = client.call("scale", arr, 2.0)
        print(f"scale(float32 array {arr.shape}, 2.0) -> {back.dtype} {back.shape}, "
              f"correct: {bool((back == arr * 2).all())}")

        try:
            client.call("divide", 1, 0)
        except rdmamsg.RemoteError as exc:
            print(f"divide(1, 0) raised on the server: {exc.type_name}: {exc.message}")

        futures = [client.call_async("wait", 0.2) for _ in range(32)]
        t0 = time.perf_counter()
        results = [f.result() for f in futures]
        print(f"32 calls outstanding at once: all {len(results)} back in "
              f"{time.perf_counter() - t0:.2f} s")

        try:
            client.with_timeout(0.1).call("wait", 5)
        except TimeoutError as exc:
            print(f"a call with a 0.1 s timeout: TimeoutError ({exc})")

        rtts = []
        for _ in range(200):
            t0 = time.perf_counter()
            client.call("add", 1, 1)
            rtts.append(time.perf_counter() - t0)
        rtts.sort()
        print(f"200 small calls: median round trip {rtts[100] * 1e6:.0f} us")


if __name__ == "__main__":
    main()

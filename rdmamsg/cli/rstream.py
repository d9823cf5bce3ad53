"""``python -m rdmamsg rstream``: rdma-core's rstream benchmark, on rdmamsg.

Runs the same exchange as librdmacm's ``rstream`` (same options, same
schedule, same table), through RdmaSocket(protocol="rsocket"), so either
end can be the C program: ``rstream -s HOST`` against
``python -m rdmamsg rstream``, or the reverse.  With ``-T v`` every byte is
checked against rstream's pattern (a byte counter per direction that runs on
across transfers and connections).

Without -S/-C/-I: a latency connection then a bandwidth connection over
rstream's default sizes (64 B, 4 KiB, 64 KiB, 1 MiB; ``-S all`` adds the
rest).  ``-T s`` uses kernel TCP sockets instead of rsockets.
"""
from __future__ import annotations

import argparse
import functools
import socket
import sys
import time

from ..protocol.rsocket import DEFAULT_PORT

DEFAULT_SIZES = (1 << 6, 1 << 12, 1 << 16, 1 << 20)
#: rstream's size list: (size, 0 if it runs by default, 1 if only with -S all)
SIZES = [(1 << 6, 0)] + [(s, 0 if s in DEFAULT_SIZES else 1)
                         for b in range(7, 23) for s in (1 << b, 3 << (b - 1))]


def size_to_count(size: int) -> int:
    if size >= 1 << 20:
        return 100
    if size >= 1 << 16:
        return 1000
    if size >= 1 << 10:
        return 10000
    return 100000


def size_str(size: int) -> str:
    for base, mag in ((1 << 30, "g"), (1 << 20, "m"), (1 << 10, "k"), (1, "")):
        if size >= base or base == 1:
            break
    fraction = (size % base) * 10 // base if size // base < 10 else 0
    return f"{size // base}.{fraction}{mag}" if fraction else f"{size // base}{mag}"


def cnt_str(n: int) -> str:
    for base, mag in ((10 ** 9, "b"), (10 ** 6, "m"), (10 ** 3, "k")):
        if n >= base:
            return f"{n // base}{mag}"
    return str(n)


class Pattern:
    """rstream's verify pattern: one byte counter (mod 256) per direction."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.table = bytes(range(256)) * ((4 << 20) // 256 + 2)

    def fill(self, buf: bytearray, size: int) -> None:
        start = self.sent % 256
        buf[:size] = self.table[start:start + size]
        self.sent += size

    def check(self, data: memoryview) -> None:
        start = self.received % 256
        if data != self.table[start:start + len(data)]:
            bad = next(i for i in range(len(data)) if data[i] != (start + i) % 256)
            raise ValueError(f"data verification failed byte {self.received + bad}")
        self.received += len(data)


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.client = args.server is not None
        self.verify = "v" in args.tests
        self.kernel = "s" in args.tests
        self.pattern = Pattern()
        self.buf = bytearray(4 << 20)
        self.sock = None
        self.listener = None

    def _socket(self):
        if self.kernel:
            return socket.socket()
        from ..stream.socket import RdmaSocket
        return RdmaSocket(protocol="rsocket")

    def listen(self) -> None:
        a = self.args
        self.listener = self._socket()
        if self.kernel:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((a.bind or "0.0.0.0", a.port))
        self.listener.listen(1)

    def connect(self) -> None:
        a = self.args
        if self.client:
            s = self._socket()
            if a.bind:
                s.bind((a.bind, 0))
            s.connect((a.server, a.port))
            self.sock = s
            return
        self.sock, _ = self.listener.accept()

    def sender(self, size: int):
        """A call that sends one transfer of ``size`` bytes (without verifying,
        the socket's own sendall bound to the buffer: no Python frame)."""
        view = memoryview(self.buf)[:size]
        if not self.verify:
            return functools.partial(self.sock.sendall, view)

        def send() -> None:
            self.pattern.fill(self.buf, size)
            self.sock.sendall(view)
        return send

    def receiver(self, size: int):
        """A call that receives one transfer of ``size`` bytes and returns its
        count (short only at the end of the stream); without verifying, the
        socket's own recv_into with MSG_WAITALL: no Python frame."""
        view = memoryview(self.buf)[:size]
        if not self.verify:
            return functools.partial(self.sock.recv_into, view, 0, socket.MSG_WAITALL)
        recv_into, check = self.sock.recv_into, self.pattern.check

        def recv() -> int:
            got = recv_into(view, 0, socket.MSG_WAITALL)
            if got == size:
                check(view)
            return got
        return recv

    def run_test(self, name: str, size: int, count: int, iterations: int) -> None:
        send, recv = self.sender(size), self.receiver(size)
        warm_send, warm_recv = self.sender(16), self.receiver(16)
        reps, client = range(count), self.client
        if client:
            warm_send()
            warm_recv()
        else:
            warm_recv()
            warm_send()
        start = time.perf_counter()
        for _ in range(iterations):
            if client:
                for _ in reps:
                    send()
            for _ in reps:
                if recv() != size:
                    raise ConnectionResetError("the peer closed mid-transfer")
            if not client:
                for _ in reps:
                    send()
        usec = (time.perf_counter() - start) * 1e6
        total = iterations * count * size * 2
        print(f"{name:<10}{size_str(size):<8}{cnt_str(count):<8}{cnt_str(iterations):<8}"
              f"{size_str(total):<8}{usec / 1e6:8.2f}s{total * 8 / (1000 * usec):10.2f}"
              f"{usec / iterations / (count * 2):11.2f}", flush=True)

    def end(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.sock = None

    def run(self) -> None:
        a = self.args
        if not self.client:
            self.listen()            # first, as rstream: the header says it listens
        print(f"{'name':<10}{'bytes':<8}{'xfers':<8}{'iters':<8}{'total':<8}{'time':>8} "
              f"{'Gb/sec':>10}{'usec/xfer':>13}", flush=True)
        sizes = [s for s, opt in SIZES if opt <= (1 if a.size == "all" else 0)]
        try:
            if a.custom:
                self.connect()
                self.run_test("custom", a.transfer_size, a.count, a.iterations)
                self.end()
                return
            self.connect()
            for size in sizes:
                self.run_test(f"{size_str(size)}_lat", size, 1, size_to_count(size))
            self.end()
            self.connect()
            for size in sizes:
                self.run_test(f"{size_str(size)}_bw", size, size_to_count(size), 1)
            self.end()
        finally:
            if self.listener is not None:
                self.listener.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rdmamsg rstream",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("-s", dest="server", help="connect to this server (else be the server)")
    ap.add_argument("-b", dest="bind", help="bind to this address")
    ap.add_argument("-p", dest="port", type=int, default=DEFAULT_PORT)
    ap.add_argument("-S", dest="size", help="transfer size in bytes, or 'all'")
    ap.add_argument("-C", dest="count", type=int, help="transfers per iteration")
    ap.add_argument("-I", dest="iterations", type=int, help="iterations")
    ap.add_argument("-T", dest="tests", action="append", default=[],
                    help="v: verify data; s: kernel TCP sockets instead of rsockets "
                         "(one per -T, as rstream)")
    a = ap.parse_args(argv)
    unknown = [t for t in a.tests if t not in ("v", "verify", "s", "sockets")]
    if unknown:
        ap.error(f"unsupported -T {unknown[0]} (this twin knows v and s)")
    a.tests = "".join(t[0] for t in a.tests)
    a.custom = (a.size not in (None, "all")) or a.count is not None or a.iterations is not None
    a.transfer_size = int(a.size) if a.size not in (None, "all") else 1000
    a.count = 1000 if a.count is None else a.count
    a.iterations = 1 if a.iterations is None else a.iterations
    try:
        Runner(a).run()
    except (OSError, ValueError) as exc:
        print(f"rstream: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""rsocket peers for the interop tests: the C programs (rstream, programs under
librspreload.so), ours in a child process, and a rogue that breaks the rules."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading

from rdmamsg.channel import rsocket_setup
from rdmamsg.channel.rsocket import Resources, RsEndpoint
from rdmamsg.protocol import rsocket as rs
from rdmamsg.verbs import _pyverbs as pv
from rdmamsg.verbs import cm

PRELOAD = "/usr/lib/x86_64-linux-gnu/rsocket/librspreload.so"


def run(cmd: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    if cmd[0] == "rstream":
        cmd = ["stdbuf", "-oL", *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), **kw)


def ours(*args: str, transparent: bool = False) -> list[str]:
    """Our rstream twin; ``transparent``: its kernel-socket mode (-T s) under
    ``python -m rdmamsg.run --protocol rsocket``, an unmodified socket program."""
    if transparent:
        return [sys.executable, "-m", "rdmamsg.run", "-v", "--protocol", "rsocket",
                "-m", "rdmamsg.cli.rstream", *args]
    return [sys.executable, "-m", "rdmamsg", "rstream", *args]


def finish(p: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        raise AssertionError(f"{p.args} did not finish in {timeout} s:\n{out}")
    assert p.returncode == 0, f"{p.args} failed ({p.returncode}):\n{out}"
    return out


def wait_ready(p: subprocess.Popen, timeout: float = 120) -> str:
    """Until a server prints rstream's table header, which both rstreams print
    once they listen (run C programs with ``stdbuf -oL``); what it printed.
    A probe connection would not do: rstream serves the first it accepts."""
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    seen = ""
    try:
        while not seen.endswith("\n") or not seen.splitlines()[-1].startswith("name"):
            line = p.stdout.readline()
            if not line:
                raise AssertionError(f"{p.args} ended ({p.poll()}) before listening:\n{seen}")
            seen += line
    finally:
        timer.cancel()
    return seen


def results(out: str) -> dict[str, float]:
    """rstream's table: test name -> Gb/sec."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 8 and parts[0] != "name":
            rows[parts[0]] = float(parts[6])
    return rows


def kernel_refused(ip: str, port: int) -> bool:
    """Whether a kernel TCP connect to ip:port is refused (so the listener
    there is not a kernel socket)."""
    try:
        socket.create_connection((ip, port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


def rogue_connect(address, private_data: bytes, timeout: float = 30):
    """An rdma_cm connect with our own private data; the connect response's
    private data, or the error a refusal raises."""
    events = cm.EventChannel()
    cm_id = events.new_id()
    res = None
    try:
        cm_id.resolve_addr(cm.addr_info(*address), 2000)
        events.expect(cm.ce.RDMA_CM_EVENT_ADDR_RESOLVED, timeout, "rogue").close()
        cm_id.resolve_route(2000)
        events.expect(cm.ce.RDMA_CM_EVENT_ROUTE_RESOLVED, timeout, "rogue").close()
        res = Resources(cm_id)
        param = cm.cmid.ConnParam(resources=0, depth=0, flow_control=1, retry=7, rnr_retry=7,
                                  qp_num=res.qp.qp_num, data_len=len(private_data))
        param.set_private_data(private_data)
        cm_id.connect(param)
        ev = events.expect(cm.ce.RDMA_CM_EVENT_CONNECT_RESPONSE, timeout, "rogue")
        data = ev.private_data
        ev.close()
        return data
    finally:
        if res is not None:
            res.close()
        cm_id.close()
        events.close()


class Rogue:
    """A connected rsocket that posts what it is told, rules or not: raw
    writes on its QP beside the C data path, which sees their completions
    as a 0-byte DATA write's or a credit update's (its counters drift; a
    rogue is only closed afterwards)."""

    def __init__(self, ep: RsEndpoint) -> None:
        self.ep = ep

    def _post(self, kind: int, imm: int, payload: bytes = b"", raddr: int = 0,
              rkey: int = 0) -> None:
        res = self.ep._res
        res.sbuf.view[:len(payload)] = payload
        sge = pv.wr.SGE(res.sbuf.addr, len(payload), res.sbuf.lkey)
        wr = pv.wr.SendWR(wr_id=kind << 32, opcode=pv.enums.IBV_WR_RDMA_WRITE_WITH_IMM,
                          num_sge=1, sg=[sge], imm_data=socket.htonl(imm),
                          send_flags=pv.enums.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(rkey, raddr)
        if not payload:
            wr.num_sge = 0
        try:
            res.qp.post_send(wr)
        finally:
            wr.close()
            sge.close()

    def write_data(self, payload: bytes, offset: int = 0) -> None:
        """A DATA write of ``payload`` at ``offset`` into the slot lent at
        connect, whatever the rules say."""
        addr, key, _ = struct.unpack_from("=QII", self.ep._res.sgl.view, 0)   # entry 0, unused
        self._post(1, rs.imm(rs.OP_DATA, len(payload)), payload, addr + offset, key)

    def credits(self, value: int) -> None:
        """An SGL immediate carrying ``value`` as the credit sequence."""
        self._post(2, rs.imm(rs.OP_SGL, value))


def warm_up_librdmacm(ip: str) -> None:
    """librdmacm opens a device the first time an id binds to it and keeps it
    (two fds) for the life of the process: do that before the tests count
    fds, so that the leak check sees what the tests leave behind."""
    rsocket_setup.RsListener((ip, 0)).close()

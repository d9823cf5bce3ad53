"""Look at this machine for ``info`` and ``doctor``: pyverbs, devices,
interfaces, limits, the poller, and a loopback self-test."""
from __future__ import annotations

import logging
import os
import platform
import resource
import socket
import subprocess
import threading
import warnings

from ..errors import NoDeviceError
from ..verbs.device import interface_ipv4, read_attr
from .diagnose import Facts

CAP_IPC_LOCK = 14


def pyverbs_version() -> str | None:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3-pyverbs"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def interfaces() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Every interface's MTU, and the (name, IPv4) of those up with an address, not lo."""
    mtus, usable = {}, []
    for name in sorted(os.listdir("/sys/class/net")):
        mtu = read_attr(f"/sys/class/net/{name}/mtu")
        if mtu is not None:
            mtus[name] = int(mtu)
        ip = interface_ipv4(name)
        state = read_attr(f"/sys/class/net/{name}/operstate")
        if name != "lo" and ip and state in ("up", "unknown"):
            usable.append((name, ip))
    return mtus, usable


def kernel_has_rxe() -> bool:
    if os.path.isdir("/sys/module/rdma_rxe"):
        return True
    base = f"/lib/modules/{platform.release()}/kernel/drivers/infiniband/sw/rxe"
    try:
        return any(n.startswith("rdma_rxe.ko") for n in os.listdir(base))
    except OSError:
        return False


def has_ipc_lock() -> bool:
    for line in (read_attr("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    return False


def memlock() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


def cython_error() -> str | None:
    """Why the Cython poller cannot run with this pyverbs, or None."""
    try:
        from ..transport import _cpoller
    except ImportError as exc:
        return f"not built ({exc})"
    why = _cpoller.layout_problem()
    if why is None:
        return None
    return f"pyverbs {pyverbs_version() or '(version unknown)'}: {why}"


def local_ip_towards(host: str) -> str:
    """The local address the kernel routes to ``host`` from."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((socket.gethostbyname(host), 9))
        return s.getsockname()[0]


def selftest(ip: str, timeout: float = 15.0) -> tuple[str, str | None, str | None]:
    """A real connection to ourselves on ``ip``: ("" or what failed, the
    poller used, the Cython poller's fallback reason if it fell back)."""
    from ..channel.bootstrap import connect, listen

    result: dict = {}

    def serve(ln) -> None:
        try:
            with ln.accept(timeout=timeout) as ep:
                ep.send(ep.recv(timeout=timeout))
        except Exception as exc:    # reported by the client side's failure
            result["server"] = exc

    log = logging.getLogger("rdmamsg")
    level = log.level
    log.setLevel(logging.CRITICAL)      # the listener's report of a failed handshake
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            with listen((ip, 0)) as ln:
                t = threading.Thread(target=serve, args=(ln,), daemon=True)
                t.start()
                with connect(ln.address, timeout=timeout) as ep:
                    msg = os.urandom(100_000)
                    ep.send(msg, timeout=timeout)
                    if ep.recv(timeout=timeout) != msg:
                        return "the echoed message differs", ep.poller, None
                    poller = ep.poller
                t.join(timeout)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}", None, None
        finally:
            log.setLevel(level)
    fallback = next((str(w.message) for w in caught if "Cython poller" in str(w.message)), None)
    if "server" in result:
        return f"server side: {result['server']}", poller, fallback
    return "", poller, fallback


def gather(ip: str | None = None, peer: str | None = None, run_selftest: bool = True) -> Facts:
    f = Facts()
    try:
        from ..verbs import _pyverbs  # noqa: F401
    except NoDeviceError as exc:
        f.pyverbs_error = str(exc.__cause__ or exc)
        return f
    from ..channel.options import Options
    from ..transport.backend import poller_mode
    from ..verbs.context import _pool_options
    from ..verbs.device import list_devices
    from ..verbs.pool import DEFAULT_CHUNK, DEFAULT_MAX

    f.pyverbs_version = pyverbs_version()
    f.devices = list_devices()
    f.netdev_mtu, f.interfaces = interfaces()
    f.kernel_has_rxe = kernel_has_rxe()
    f.memlock_soft, f.ipc_lock = memlock(), has_ipc_lock()
    f.pool_need = _pool_options.get("chunk_bytes", DEFAULT_CHUNK) + Options().ring_size
    f.pool_max = _pool_options.get("max_bytes", DEFAULT_MAX)
    f.poller_mode = poller_mode()
    f.cython_error = cython_error()
    f.ip = ip or (local_ip_towards(peer) if peer else None)
    test_ip = f.ip or next((g.ip for d in f.devices for p in d.ports if p.active
                            for g in p.gids if g.type == "RoCE v2" and g.ip
                            and ":" not in g.ip), None)
    reachable = {g.ip for d in f.devices for p in d.ports if p.active for g in p.gids}
    infiniband = any(p.active and not p.is_roce for d in f.devices for p in d.ports)
    if run_selftest and test_ip is not None and (test_ip in reachable or infiniband):
        f.ip = test_ip
        f.selftest, f.selftest_poller, fallback = selftest(test_ip)
        if fallback and f.cython_error is None:
            f.cython_error = fallback
    return f

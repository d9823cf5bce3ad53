"""What ``python -m rdmamsg doctor`` concludes from what it found (no I/O).

``probe.gather()`` collects ``Facts`` from the machine; ``diagnose(facts)``
turns them into findings, each with the fix a user should apply.  Kept apart
so that every rule is unit-tested without a device.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..verbs.device import DeviceInfo

#: Bytes of headers rxe and RoCE NICs keep below the netdev MTU (rxe's
#: RXE_MAX_HDR_LENGTH is 80): an IB MTU fits when mtu + 80 <= the netdev's.
ROCE_HEADROOM = 80

ERROR, WARN, OK = "error", "warn", "ok"

#: The oldest rdma-core whose pyverbs the Cython poller reads (Ubuntu 22.04's).
SUPPORTED_RDMA_CORE = 39


@dataclass(frozen=True)
class Finding:
    level: str     #: ERROR (blocks use), WARN (works, but worse) or OK
    what: str      #: what was found
    fix: str = ""  #: what to do about it


@dataclass
class Facts:
    """What the doctor saw on this machine."""

    pyverbs_error: str | None = None        #: why pyverbs does not import, or None
    pyverbs_version: str | None = None      #: rdma-core's version, when known
    devices: list[DeviceInfo] = field(default_factory=list)
    netdev_mtu: dict[str, int] = field(default_factory=dict)
    interfaces: list[tuple[str, str]] = field(default_factory=list)  #: (name, IPv4), up, not lo
    kernel_has_rxe: bool = False            #: the running kernel can load rdma_rxe
    memlock_soft: int | None = None         #: bytes; None: unlimited
    ipc_lock: bool = False                  #: CAP_IPC_LOCK: the memlock limit does not apply
    pool_need: int = 0                      #: bytes one connection registers, at least
    pool_max: int = 0                       #: bytes the pool may grow to
    poller_mode: str = "auto"               #: RDMAMSG_POLLER
    cython_error: str | None = None         #: why the Cython poller cannot run, or None
    ip: str | None = None                   #: the local IP connections will use
    selftest: str | None = None             #: None: not run; "" passed; else what failed
    selftest_poller: str | None = None      #: the poller the self-test's endpoints used


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n // 1024} KiB"


def _no_device(f: Facts) -> Finding:
    if not f.kernel_has_rxe:
        return Finding(ERROR, "no RDMA device, and this kernel has no soft-RoCE (rdma_rxe) module",
                       "use a host with an RDMA NIC or a kernel with rdma_rxe; without one, "
                       "ci/rxe-vm runs a command in a VM with a soft-RoCE device "
                       "(ci/test and ci/demo use it)")
    netdev = f.interfaces[0][0] if f.interfaces else "<ifname>"
    return Finding(ERROR, "no RDMA device",
                   "create a soft-RoCE device on an interface with an IP address: "
                   f"'sudo modprobe rdma_rxe && sudo rdma link add rxe0 type rxe netdev {netdev}' "
                   "(not on lo: rdma_cm and rdmamsg need a real or dummy interface), "
                   "or run under ci/rxe-vm")


def _ports(f: Facts) -> list[Finding]:
    out = []
    ports = [p for d in f.devices for p in d.ports]
    active = [p for p in ports if p.active]
    for p in ports:
        if not p.active:
            netdevs = sorted({g.netdev for g in p.gids if g.netdev})
            hint = (f"bring its interface up ('ip link set {netdevs[0]} up')" if netdevs
                    else "check the cable and the subnet manager ('ibstat', 'rdma link show')")
            out.append(Finding(WARN if active else ERROR,
                               f"{p.device} port {p.port} is {p.state}", hint))
    for p in active:
        out.append(Finding(OK, f"{p.device} port {p.port} is ACTIVE ({p.link_layer}, "
                               f"active MTU {p.active_mtu})"))
    return out


def _gids(f: Facts) -> list[Finding]:
    roce = [p for d in f.devices for p in d.ports if p.active and p.is_roce]
    if not roce:
        return []
    v2 = {g.ip: p for p in roce for g in p.gids if g.type == "RoCE v2" and g.ip}
    if f.ip is not None:
        if f.ip in v2:
            return [Finding(OK, f"{f.ip} has a RoCE v2 GID on {v2[f.ip].device} port "
                                f"{v2[f.ip].port}")]
        netdevs = sorted({g.netdev for p in roce for g in p.gids if g.netdev})
        return [Finding(ERROR, f"no active RoCE v2 GID has the address {f.ip} "
                               f"(those with one: {', '.join(sorted(v2)) or 'none'})",
                        "connect through the IP of the RDMA device's interface, or add "
                        f"{f.ip} to it ('ip addr add {f.ip}/24 dev "
                        f"{netdevs[0] if netdevs else '<netdev>'}')")]
    if not v2:
        return [Finding(ERROR, "no active RoCE v2 GID has an IP address",
                        "rdmamsg chooses the GID by IP: give the interface behind the RDMA "
                        "device an IPv4 address ('ip addr add ADDR/24 dev NETDEV')")]
    return [Finding(OK, f"RoCE v2 GIDs with an IP: {', '.join(sorted(v2))}")]


def _mtus(f: Facts) -> list[Finding]:
    out = []
    active = [p for d in f.devices for p in d.ports if p.active]
    for p in active:
        for netdev in sorted({g.netdev for g in p.gids if g.netdev}):
            mtu = f.netdev_mtu.get(netdev)
            if mtu is None:
                continue
            if p.active_mtu + ROCE_HEADROOM > mtu:
                out.append(Finding(ERROR, f"{p.device} port {p.port}'s active MTU "
                                          f"{p.active_mtu} does not fit {netdev}'s MTU {mtu}",
                                   f"'ip link set {netdev} mtu {p.active_mtu + 200}', or lower "
                                   "the port's MTU"))
            elif p.active_mtu < p.max_mtu:
                out.append(Finding(WARN, f"{p.device} port {p.port} runs at MTU {p.active_mtu} "
                                         f"(it supports {p.max_mtu}) because {netdev}'s MTU "
                                         f"is {mtu}",
                                   f"for larger packets, 'ip link set {netdev} mtu "
                                   f"{p.max_mtu + 200}' on every host (each connection uses "
                                   "the smaller of the two ends' MTUs)"))
    mtus = sorted({p.active_mtu for p in active})
    if len(mtus) > 1:
        out.append(Finding(WARN, "active ports have different MTUs ("
                                 + ", ".join(f"{p.device}:{p.port} {p.active_mtu}" for p in active)
                                 + ")",
                           "a connection uses the smaller of its two ends' MTUs; set the "
                           "interfaces' MTUs alike for the same packet size everywhere"))
    return out


def _memlock(f: Facts) -> list[Finding]:
    if f.ipc_lock:
        return [Finding(OK, "RLIMIT_MEMLOCK does not apply (CAP_IPC_LOCK)")]
    if f.memlock_soft is None:
        return [Finding(OK, "RLIMIT_MEMLOCK is unlimited")]
    fix = ("raise it: 'ulimit -l unlimited' in the shell (up to the hard limit), "
           "'* - memlock unlimited' in /etc/security/limits.conf, or LimitMEMLOCK=infinity "
           "in a systemd unit")
    if f.memlock_soft < f.pool_need:
        return [Finding(ERROR, f"RLIMIT_MEMLOCK is {_mib(f.memlock_soft)}; one connection "
                               f"registers about {_mib(f.pool_need)}", fix)]
    if f.memlock_soft < f.pool_max:
        return [Finding(WARN, f"RLIMIT_MEMLOCK is {_mib(f.memlock_soft)}: the pool can grow to "
                              f"{_mib(f.pool_max)}, so about "
                              f"{max(f.memlock_soft // max(f.pool_need, 1), 1)} connections fit",
                        fix + ", or configure_pool(max_bytes=...) below the limit")]
    return [Finding(OK, f"RLIMIT_MEMLOCK is {_mib(f.memlock_soft)}")]


def _poller(f: Facts) -> list[Finding]:
    if f.poller_mode == "python":
        return [Finding(OK, "RDMAMSG_POLLER=python: the pure-pyverbs poller, as chosen")]
    if f.cython_error is None:
        return [Finding(OK, "the Cython poller is built and matches this pyverbs")]
    fix = ("build ext/ ('ci/setup', or 'pip install -e .' with Cython and the rdma-core "
           f"headers); it supports pyverbs from rdma-core {SUPPORTED_RDMA_CORE} on")
    if f.poller_mode == "cython":
        return [Finding(ERROR, f"RDMAMSG_POLLER=cython, but the Cython poller cannot run: "
                               f"{f.cython_error}", fix)]
    return [Finding(WARN, f"the Cython poller cannot run ({f.cython_error}): the slower "
                          "pure-pyverbs fallback is in use", fix)]


def _version(version: str | None) -> Finding:
    m = re.match(r"(\d+)", version or "")
    if m is None:
        return Finding(OK, "pyverbs imports (rdma-core version unknown)")
    if int(m.group(1)) < SUPPORTED_RDMA_CORE:
        return Finding(WARN, f"pyverbs is from rdma-core {version}, older than the "
                             f"{SUPPORTED_RDMA_CORE} rdmamsg supports",
                       f"use rdma-core {SUPPORTED_RDMA_CORE} or later (Ubuntu 22.04's, or a newer "
                       "distribution's python3-pyverbs)")
    return Finding(OK, f"pyverbs imports (rdma-core {version})")


def diagnose(f: Facts) -> list[Finding]:
    """Every finding about ``f``, most basic first; ERROR ones block use."""
    if f.pyverbs_error is not None:
        return [Finding(ERROR, f"pyverbs does not import: {f.pyverbs_error}",
                        "install rdma-core's Python bindings (Debian/Ubuntu: "
                        "'apt install python3-pyverbs') and make the venv with "
                        "--system-site-packages so it sees them (ci/setup does both)")]
    out = [_version(f.pyverbs_version)]
    out += _poller(f)
    out += _memlock(f)
    if not f.devices:
        return out + [_no_device(f)]
    out += _ports(f) + _gids(f) + _mtus(f)
    if f.selftest == "":
        out.append(Finding(OK, f"a loopback connection on {f.ip} sent and received "
                               f"(poller: {f.selftest_poller})"))
    elif f.selftest is not None:
        out.append(Finding(ERROR, f"a loopback connection on {f.ip} failed: {f.selftest}",
                           "the findings above usually say why"))
    return out


def blocked(findings: list[Finding]) -> bool:
    return any(x.level == ERROR for x in findings)

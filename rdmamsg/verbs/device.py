"""RDMA devices, ports and GIDs, and the choice of one for an IP address.

Devices are found in sysfs (``/sys/class/infiniband``); port attributes come
from ``ibv_query_port`` and the populated GIDs from one ``ibv_query_gid_table``
call (reading sysfs entry by entry is the fallback: rxe has 1024 of them).
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field

from ..errors import NoDeviceError, RdmaError

SYSFS = "/sys/class/infiniband"

#: ibv_mtu enum value -> bytes.
MTU_BYTES = {1: 256, 2: 512, 3: 1024, 4: 2048, 5: 4096}
MTU_ENUM = {v: k for k, v in MTU_BYTES.items()}

__all__ = ["GidEntry", "PortInfo", "DeviceInfo", "LocalAddress", "list_devices", "resolve_local", "rdma_networks",
           "path_mtu", "MTU_BYTES", "MTU_ENUM"]


@dataclass(frozen=True)
class GidEntry:
    """One populated entry of a port's GID table."""

    index: int
    gid: str            #: as an IPv6 address, e.g. ``::ffff:10.88.0.1``
    type: str           #: ``RoCE v2``, ``IB/RoCE v1`` or ``IB``
    netdev: str | None  #: the network interface behind it (RoCE)

    @property
    def ip(self) -> str | None:
        """The IP address this GID stands for (RoCE), or None."""
        if self.netdev is None:
            return None
        addr = ipaddress.IPv6Address(self.gid)
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        if addr.is_link_local:
            return None
        return str(addr)

    @property
    def raw(self) -> bytes:
        return ipaddress.IPv6Address(self.gid).packed


@dataclass(frozen=True)
class PortInfo:
    device: str
    port: int
    state: str            #: ``ACTIVE``, ``DOWN``, ...
    link_layer: str       #: ``Ethernet`` (RoCE) or ``InfiniBand``
    lid: int
    active_mtu: int       #: bytes
    max_mtu: int          #: bytes
    gids: tuple[GidEntry, ...] = field(default=())

    @property
    def active(self) -> bool:
        return self.state == "ACTIVE"

    @property
    def is_roce(self) -> bool:
        return self.link_layer == "Ethernet"


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    node_guid: str
    ports: tuple[PortInfo, ...]


@dataclass(frozen=True)
class LocalAddress:
    """Where a connection's QP lives and how the peer reaches it."""

    device: str
    port: int
    gid_index: int
    gid: bytes       #: 16 bytes; all zero on InfiniBand without a GID
    lid: int
    mtu: int         #: the port's active MTU, as the ibv_mtu enum value
    link_layer: str

    @property
    def use_grh(self) -> bool:
        """RoCE always needs a GRH; InfiniBand only when routed (a GID was chosen)."""
        return self.link_layer == "Ethernet" or any(self.gid)


def read_attr(path: str) -> str | None:
    """A sysfs attribute's text, stripped; None if it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _gid_text(addr: ipaddress.IPv6Address) -> str:
    return f"::ffff:{addr.ipv4_mapped}" if addr.ipv4_mapped else str(addr)


def _gids_sysfs(dev: str, port: int) -> list[GidEntry]:
    base = f"{SYSFS}/{dev}/ports/{port}"
    out = []
    try:
        names = os.listdir(f"{base}/gids")
    except OSError:
        return []
    for name in sorted(names, key=int):
        raw = read_attr(f"{base}/gids/{name}")
        gtype = read_attr(f"{base}/gid_attrs/types/{name}")
        if not raw or gtype is None:
            continue  # unpopulated entries read as zero or fail with EINVAL
        addr = ipaddress.IPv6Address(int(raw.replace(":", ""), 16))
        if addr == ipaddress.IPv6Address(0):
            continue
        ndev = read_attr(f"{base}/gid_attrs/ndevs/{name}") or None
        out.append(GidEntry(int(name), _gid_text(addr), gtype, ndev))
    return out


_GID_TYPES = {1: "RoCE v1", 2: "RoCE v2"}


def _gid_table(ctx, nports: int, table_len: int, layers: dict) -> dict[int, list[GidEntry]]:
    """port -> its populated GIDs, from one ibv_query_gid_table call."""
    out: dict[int, list[GidEntry]] = {p: [] for p in range(1, nports + 1)}
    for e in ctx.query_gid_table(table_len):
        addr = ipaddress.IPv6Address(int(e.gid_str().replace(":", ""), 16))
        if addr == ipaddress.IPv6Address(0) or e.port_num not in out:
            continue
        ib = layers.get(e.port_num) == "InfiniBand"
        gtype = _GID_TYPES.get(e.gid_type, "IB" if ib else "IB/RoCE v1")
        try:
            ndev = socket.if_indextoname(e.ndev_ifindex) if e.ndev_ifindex else None
        except OSError:
            ndev = None
        out[e.port_num].append(GidEntry(e.gid_index, _gid_text(addr), gtype, ndev))
    return out


def _query_ports(dev: str) -> list[PortInfo]:
    """The device's ports, asked of the device."""
    from . import _pyverbs as pv

    try:
        with pv.fd_lock, pv.device.Context(name=dev) as ctx:
            nports = ctx.query_device().phys_port_cnt
            attrs = {p: ctx.query_port(p) for p in range(1, nports + 1)}
            layers = {p: read_attr(f"{SYSFS}/{dev}/ports/{p}/link_layer") or "?" for p in attrs}
            try:
                gids = _gid_table(ctx, nports, sum(a.gid_tbl_len for a in attrs.values()), layers)
            except pv.PyverbsError:
                gids = {p: _gids_sysfs(dev, p) for p in attrs}
    except pv.PyverbsRDMAError as exc:
        raise RdmaError("ibv_open_device/ibv_query_port", exc.error_code or 0, dev) from exc
    ports = []
    for p, attr in attrs.items():
        state = (read_attr(f"{SYSFS}/{dev}/ports/{p}/state") or "?: UNKNOWN").split(":", 1)[-1].strip()
        ports.append(PortInfo(dev, p, state, layers[p], attr.lid, MTU_BYTES.get(attr.active_mtu, 0),
                              MTU_BYTES.get(attr.max_mtu, 0),
                              tuple(sorted(gids[p], key=lambda g: g.index))))
    return ports


def list_devices() -> list[DeviceInfo]:
    """Every RDMA device with its ports and their populated GIDs."""
    try:
        names = sorted(os.listdir(SYSFS))
    except OSError:
        return []
    return [DeviceInfo(dev, read_attr(f"{SYSFS}/{dev}/node_guid") or "", tuple(_query_ports(dev)))
            for dev in names]


def rdma_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of the interfaces behind ACTIVE RoCE ports: the
    addresses an RDMA connection can reach directly."""
    nets = set()
    for dev in list_devices():
        for p in dev.ports:
            for g in p.gids if p.active else ():
                ip = g.ip
                if ip is not None and g.netdev and ":" not in ip:
                    nets.add(ipaddress.IPv4Interface(f"{ip}/{_netmask(g.netdev)}").network)
    return sorted(nets)


SIOCGIFADDR, SIOCGIFNETMASK = 0x8915, 0x891B


def interface_ipv4(netdev: str, request: int = SIOCGIFADDR) -> str | None:
    """An IPv4 attribute of ``netdev`` by ioctl (its address, or with
    SIOCGIFNETMASK its netmask); None if it has none."""
    req = struct.pack("16s16x", netdev.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            return socket.inet_ntoa(fcntl.ioctl(s.fileno(), request, req)[20:24])
        except OSError:
            return None


def _netmask(netdev: str) -> str:
    """The IPv4 netmask of ``netdev``; /32 if it has none."""
    return interface_ipv4(netdev, SIOCGIFNETMASK) or "255.255.255.255"


_NO_DEVICE_HINT = (
    "no RDMA device found. On a host without RDMA hardware, create a soft-RoCE "
    "device on a network interface that has an IP address: 'modprobe rdma_rxe && "
    "rdma link add rxe0 type rxe netdev <ifname>', or run under ci/rxe-vm. "
    "'python -m rdmamsg doctor' checks the rest."
)


def resolve_local(ip: str | None = None, *, device: str | None = None, port: int | None = None,
                  gid_index: int | None = None) -> LocalAddress:
    """Choose device, port and GID for a connection whose local IP is ``ip``.

    On RoCE this is the RoCE v2 GID whose address is ``ip`` (for a loopback
    ``ip``, the first with an address); on InfiniBand the port's LID (and a
    GID only if ``gid_index`` is given, for routed fabrics).
    ``device``, ``port`` and ``gid_index`` override each choice.
    """
    devices = list_devices()
    if not devices:
        raise NoDeviceError(_NO_DEVICE_HINT)
    if device is not None:
        devices = [d for d in devices if d.name == device]
        if not devices:
            raise NoDeviceError(f"no RDMA device named {device!r}")
    candidates = [p for d in devices for p in d.ports if port is None or p.port == port]
    active = [p for p in candidates if p.active]
    if not active:
        states = ", ".join(f"{p.device}:{p.port} {p.state}" for p in candidates) or "none"
        raise NoDeviceError(f"no ACTIVE RDMA port (ports: {states}); check the link "
                            "('rdma link show') or run 'python -m rdmamsg doctor'")
    want = None if ip is None else ipaddress.ip_address(ip)
    if want is not None and want.is_loopback:
        want = None   # to ourselves: any local RoCE GID reaches any other (both ends agree)
    for p in active:
        if gid_index is not None:
            return _address(p, _gid_at(p, gid_index))
        if not p.is_roce:
            return _address(p, None)
        for g in p.gids:
            if g.type != "RoCE v2" or g.ip is None:
                continue
            if want is None or ipaddress.ip_address(g.ip) == want:
                return _address(p, g)
    have = ", ".join(f"{p.device}:{p.port}[{g.index}]={g.ip}" for p in active for g in p.gids
                     if g.type == "RoCE v2" and g.ip) or "none"
    raise NoDeviceError(
        f"no active RoCE v2 GID has the address {ip}: RoCE v2 GIDs with an IP are {have}. "
        "Connect through the IP of the RDMA device's network interface, or pass "
        "device=/gid_index= explicitly")


def _address(p: PortInfo, g: GidEntry | None) -> LocalAddress:
    return LocalAddress(p.device, p.port, g.index if g else 0, g.raw if g else bytes(16), p.lid,
                        MTU_ENUM[p.active_mtu], p.link_layer)


def _gid_at(p: PortInfo, index: int) -> GidEntry:
    for g in p.gids:
        if g.index == index:
            return g
    raise NoDeviceError(f"{p.device} port {p.port} has no populated GID at index {index}")


def path_mtu(local_mtu: int, remote_mtu: int) -> int:
    """The path MTU (ibv_mtu enum): the smaller of the two ports' active MTUs."""
    return min(local_mtu, remote_mtu)

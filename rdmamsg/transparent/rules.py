"""Which TCP addresses the transparent mode carries over RDMA.

A rule is ``HOST``, ``HOST:PORT``, ``CIDR``, ``CIDR:PORT`` or ``*:PORT``
(IPv4; a HOST name is resolved when the rule is made).  Connections go over
RDMA when their destination matches a rule; listening sockets when their bound
address does, a wildcard bind (0.0.0.0) matching any rule with its port.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable

Network = ipaddress.IPv4Network


@dataclass(frozen=True)
class Rule:
    networks: tuple[Network, ...] | None    #: None: any address
    port: int | None                        #: None: any port

    @classmethod
    def parse(cls, text: str) -> "Rule":
        host, port = _split(text.strip())
        if host in ("*", ""):
            if port is None:
                raise ValueError(f"match rule {text!r}: '*' needs a port, as '*:8000'")
            return cls(None, port)
        try:
            return cls((ipaddress.IPv4Network(host, strict=False),), port)
        except ValueError:
            pass
        if ":" in host:
            raise ValueError(f"match rule {text!r}: IPv6 is not carried over RDMA (AF_INET only)")
        try:
            infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ValueError(f"match rule {text!r}: cannot resolve {host!r}: {exc}") from None
        return cls(tuple(sorted({Network(i[4][0]) for i in infos})), port)

    def _port_ok(self, port: int) -> bool:
        return self.port is None or self.port == port

    def matches(self, ip: str, port: int) -> bool:
        """A connection to (ip, port)."""
        if not self._port_ok(port):
            return False
        if self.networks is None:
            return True
        addr = _ipv4(ip)
        return addr is not None and any(addr in n for n in self.networks)

    def serves(self, ip: str, port: int) -> bool:
        """A socket listening on (ip, port)."""
        if ip in ("", "0.0.0.0"):
            return self._port_ok(port)
        return self.matches(ip, port)

    def __str__(self) -> str:
        host = "*" if self.networks is None else ",".join(map(str, self.networks))
        return host if self.port is None else f"{host}:{self.port}"


def _split(text: str) -> tuple[str, int | None]:
    if text.count(":") != 1:
        return text, None                    # no port (or an IPv6 text, refused later)
    host, _, port = text.partition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"match rule {text!r}: the port must be 1..65535")
    return host, int(port)


def _ipv4(ip: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(ip)
    except ValueError:
        return None


class Matcher:
    """The rules of one patch(): ``connects(ip, port)``, ``listens(ip, port)``."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def parse(cls, texts: Iterable[str]) -> "Matcher":
        return cls(Rule.parse(t) for t in texts)

    def connects(self, ip: str, port: int) -> bool:
        return any(r.matches(ip, port) for r in self.rules)

    def listens(self, ip: str, port: int) -> bool:
        return any(r.serves(ip, port) for r in self.rules)

    def __str__(self) -> str:
        return " ".join(map(str, self.rules)) or "(nothing)"

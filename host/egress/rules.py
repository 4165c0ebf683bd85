"""Egress decisions, pure: which (host, port) a grant allows, and which resolved address it may connect to.

A grant is the compiled form of a manifest's ``permissions.network`` (or of the package indexes for pip).
Names are resolved once, by the caller's resolver, and the connection goes to the address that was checked,
so a name that re-resolves to 127.0.0.1 between check and connect (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from manifests.rules import Destination, parse_destination

if TYPE_CHECKING:
    from manifests.model import Network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[Address]]


@dataclass(frozen=True)
class Grant:
    """What one plugin may reach."""

    any_public: bool = False  # outbound = true
    ports: tuple[int, ...] = ()  # with any_public: only these ports (empty = any)
    destinations: tuple[Destination, ...] = ()
    # Names the operator chose (package indexes): allowed whatever they resolve to. Plugins never get these.
    trusted: tuple[Destination, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"any_public": self.any_public, "ports": list(self.ports),
                "destinations": [str(d) for d in self.destinations], "trusted": [str(d) for d in self.trusted]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Grant:
        return cls(bool(raw.get("any_public")), tuple(int(p) for p in raw.get("ports", ())),
                   tuple(parse_destination(d) for d in raw.get("destinations", ())),
                   tuple(parse_destination(d) for d in raw.get("trusted", ())))

    @classmethod
    def from_network(cls, net: Network) -> Grant:
        return cls(any_public=net.any_public, ports=tuple(net.ports) if net.any_public else (),
                   destinations=net.destinations)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    address: Address | None = None
    candidates: tuple[Address, ...] = field(default=())


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_v4(addr: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, Teredo client), which is where it goes."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    return None


def is_public(addr: Address, local: frozenset[Address] = frozenset()) -> bool:
    """Globally routable unicast, and not one of this machine's own addresses."""
    inner = embedded_v4(addr)
    if inner is not None and not is_public(inner, local):
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr in local:
        return False
    return addr.is_global and not addr.is_multicast and not addr.is_unspecified


def classify(addr: Address, local: frozenset[Address] = frozenset()) -> str:
    """Why an address is not public, in words a log reader knows."""
    inner = embedded_v4(addr)
    if inner is not None and not is_public(inner, local):
        addr = inner
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local (cloud metadata)" if str(addr) in ("169.254.169.254", "fd00:ec2::254") else "link-local"
    if addr in local:
        return "this host"
    if addr.is_multicast:
        return "multicast"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_private:
        return "private"
    if not addr.is_global:
        return "reserved"
    return "public"


def literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def decide(grant: Grant, host: str, port: int, resolve: Resolver,
           local: frozenset[Address] = frozenset()) -> Decision:
    """May the plugin connect to ``host:port``; if so, to which address."""
    if not 1 <= port <= 65535:
        return Decision(False, "bad port")
    ip = literal(host)
    if ip is not None:
        if any(d.ip and literal(d.host) == ip and d.port == port for d in (*grant.destinations, *grant.trusted)):
            return Decision(True, "listed address", ip)
        if not is_public(ip, local):
            return Decision(False, f"{classify(ip, local)} address, not listed in the plugin's grant")
        if _public_port_ok(grant, port):
            return Decision(True, "public address", ip)
        return Decision(False, "destination not granted")
    name = host.lower().rstrip(".")
    trusted = any(d.matches(name, port) for d in grant.trusted if not d.ip)
    named = trusted or any(d.matches(name, port) for d in grant.destinations if not d.ip)
    if not named and not _public_port_ok(grant, port):
        return Decision(False, "destination not granted")
    try:
        addresses = resolve(name, port)
    except OSError as exc:
        return Decision(False, f"cannot resolve {name}: {exc.strerror or exc}")
    if not addresses:
        return Decision(False, f"{name} has no address")
    if trusted:
        return Decision(True, "package index", addresses[0], tuple(addresses))
    public = [a for a in addresses if is_public(a, local)]
    if not public:
        return Decision(False, f"{name} resolves to a {classify(addresses[0], local)} address ({addresses[0]})")
    return Decision(True, "granted name" if named else "public address", public[0], tuple(public))


def _public_port_ok(grant: Grant, port: int) -> bool:
    return grant.any_public and (not grant.ports or port in grant.ports)


def local_addresses(fib_trie: Iterable[str] | None = None, if_inet6: Iterable[str] | None = None
                    ) -> frozenset[Address]:
    """This machine's own addresses (from /proc/net/fib_trie LOCAL entries and /proc/net/if_inet6)."""
    out: set[Address] = set()
    try:
        lines = list(fib_trie) if fib_trie is not None else open("/proc/net/fib_trie").read().splitlines()  # noqa: SIM115
    except OSError:
        lines = []
    last: str | None = None
    for line in lines:
        s = line.strip()
        if s.startswith("|--") or s.startswith("+--"):
            last = s[3:].strip().split("/")[0]
        elif "/32 host LOCAL" in s and last:
            ip = literal(last)
            if ip is not None:
                out.add(ip)
    try:
        v6 = list(if_inet6) if if_inet6 is not None else open("/proc/net/if_inet6").read().splitlines()  # noqa: SIM115
    except OSError:
        v6 = []
    for line in v6:
        parts = line.split()
        if parts and len(parts[0]) == 32:
            out.add(ipaddress.IPv6Address(int(parts[0], 16)))
    return frozenset(out)


def index_destinations(urls: Iterable[str]) -> tuple[Destination, ...]:
    """Package index URLs (``https://user:pw@idx.example/simple``) as trusted destinations; file: URLs and
    plain paths need no network and are skipped."""
    from urllib.parse import urlsplit

    out: list[Destination] = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        try:
            out.append(parse_destination(f"{host}:{port}"))
        except ValueError:
            continue
    return tuple(dict.fromkeys(out))

"""What the manifest's models answer beyond their fields, without pydantic: egress destinations and the derived
properties of ``[permissions.network]``. manifests.model's pydantic models and manifests.view's plain views
(what the supervisor reads stored manifests with) share these. Must not import pydantic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

# An event type a plugin emits: "<plugin>.<noun>.<verb>" (CloudEvents "type"), lower case.
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9-]{0,31}\.[a-z][a-z0-9_]{0,31}\.[a-z][a-z0-9_]{0,31}$"

# An egress destination: "host:port", where host is a name ("api.example.com"), a wildcard name
# ("*.example.org": any subdomain, not the bare domain), an IPv4 literal or a bracketed IPv6 literal.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DEST_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


@dataclass(frozen=True)
class Destination:
    """One parsed egress destination (see :data:`manifests.model.Network.outbound`)."""

    host: str  # lower-case name without a trailing dot, or an IP literal (IPv6 without brackets)
    port: int
    wildcard: bool = False  # host "*.x.org": any name ending in ".x.org"
    ip: bool = False  # host is an IP literal: granted exactly, even loopback or private (high risk)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'*.' if self.wildcard else ''}{host}:{self.port}"

    def matches(self, host: str, port: int) -> bool:
        if port != self.port:
            return False
        host = host.lower().rstrip(".")
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def parse_destination(text: str) -> Destination:
    """``"api.example.com:443"`` → Destination; ValueError with a one-line reason otherwise."""
    import ipaddress

    if not isinstance(text, str) or not text.isascii() or not text.isprintable() or " " in text:
        raise ValueError(f"{text!r}: a destination is 'host:port' in printable ASCII")
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: a destination is 'host:port' with a port from 1 to 65535")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        try:
            return Destination(host=str(ipaddress.IPv6Address(host[1:-1])), port=port, ip=True)
        except ValueError:
            raise ValueError(f"{text!r}: {host} is not an IPv6 address") from None
    try:
        return Destination(host=str(ipaddress.IPv4Address(host)), port=port, ip=True)
    except ValueError:
        pass
    name = host.lower().rstrip(".")
    if len(name) > 253 or not _DEST_NAME.match(name) or name.replace(".", "").isdigit():
        raise ValueError(f"{text!r}: {host!r} is not a host name, '*.' wildcard name or IP address")
    if name.startswith("*."):
        if name.count(".") < 2:
            raise ValueError(f"{text!r}: a wildcard must name a domain below a public suffix, e.g. '*.example.org'")
        return Destination(host=name[2:], port=port, wildcard=True)
    return Destination(host=name, port=port)


class NetworkRules:
    """What ``[permissions.network]`` grants, from its ``outbound`` field."""

    if TYPE_CHECKING:
        outbound: bool | tuple[str, ...]

    @property
    def enabled(self) -> bool:
        return self.outbound is not False

    @property
    def destinations(self) -> tuple[Destination, ...]:
        """The listed destinations (empty for ``true`` and ``false``)."""
        return tuple(parse_destination(d) for d in self.outbound) if isinstance(self.outbound, tuple) else ()

    @property
    def any_public(self) -> bool:
        """``outbound = true``: any public address, on ``ports`` (or any port)."""
        return self.outbound is True


class ManifestRules:
    """What a manifest answers from its ``entrypoint``."""

    if TYPE_CHECKING:
        entrypoint: str

    @property
    def is_wsgi_entrypoint(self) -> bool:
        """True for ``module:attr``; False for a bare module holding a PluginBase subclass."""
        return ":" in self.entrypoint

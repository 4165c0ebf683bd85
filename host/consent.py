"""Consent without a terminal: compare what a manifest asks for with what the operator grants.

A grant has the shape of the manifest's ``[permissions]`` table (JSON or TOML). A field the grant leaves out
grants what a manifest leaving it out gets (the defaults of manifests.model.Permissions): the baseline every
plugin has. :func:`excess` lists, one readable line each, what the manifest asks beyond the grant; an install
(`host install --grant`, the admin API's upload, `host apply`) asking for more is refused with those lines.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from host.egress.rules import is_public
from host.errors import UsageError
from manifests.model import Destination, Manifest, Network, Permissions


def excess(manifest: Manifest, granted: dict[str, Any]) -> list[str]:
    """One line per permission ``manifest`` asks beyond ``granted`` (a ``[permissions]``-shaped dict, e.g.
    ``"resources.memory_mb: 512 > granted 256"``); empty when the grant covers it all. UsageError when
    ``granted`` is not a valid permissions table."""
    return _beyond(manifest.permissions, parse_grant(granted))


def upgrade_diff(old: Permissions, new: Permissions) -> tuple[list[str], list[str]]:
    """What an upgrade changes, as (widened, narrowed) lines: ``old`` is what the installed version was granted,
    ``new`` what the new version asks. Widened: added or larger (``resources.memory_mb: 256 → 1024``, ``network.
    outbound: + api.example.com:443``); narrowed: removed or smaller. Only a widening needs consent again."""
    return [_arrow(line, forward=True) for line in _beyond(new, old)], \
        [_arrow(line, forward=False) for line in _beyond(old, new)]


def _arrow(line: str, forward: bool) -> str:
    """An excess line as a change: "x: 1024 > granted 256" -> "x: 256 → 1024" (forward) or "x: 1024 → 256";
    "x: thing not granted" -> "x: + thing" (forward) or "x: − thing"."""
    field, _, rest = line.partition(": ")
    if " > granted " in rest:
        asked, granted = rest.split(" > granted ", 1)
        return f"{field}: {granted} → {asked}" if forward else f"{field}: {asked} → {granted}"
    return f"{field}: {'+' if forward else '−'} {rest.removesuffix(' not granted')}"


def _beyond(asked: Permissions, grant: Permissions) -> list[str]:
    lines = _network(asked.network, grant.network)
    lines += _paths("filesystem.read", asked.filesystem.read, (*grant.filesystem.read, *grant.filesystem.write))
    lines += _paths("filesystem.write", asked.filesystem.write, grant.filesystem.write)
    lines += [f"environment: {n} not granted" for n in asked.environment if n not in grant.environment]
    for section in ("resources", "requests"):
        want, have = getattr(asked, section), getattr(grant, section)
        for field in type(want).model_fields:
            a, g = getattr(want, field), getattr(have, field)
            if g is not None and (a is None or a > g):  # None: no limit at all, more than any number
                lines.append(f"{section}.{field}: {'unlimited' if a is None else _num(a)} > granted {_num(g)}")
    lines += [f"host_api: {s} not granted" for s in asked.host_api if s not in grant.host_api]
    return lines


def parse_grant(granted: dict[str, Any]) -> Permissions:
    """The grant as a Permissions model (a lone top-level ``permissions`` key is unwrapped)."""
    if not isinstance(granted, dict):
        raise UsageError("grant: a table of permissions (the shape of the manifest's [permissions])")
    if set(granted) == {"permissions"} and isinstance(granted["permissions"], dict):
        granted = granted["permissions"]
    try:
        return Permissions.model_validate(granted)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "grant"
        raise UsageError(f"grant: {where}: {err['msg']}") from exc


def load_grant(source: str) -> dict[str, Any]:
    """A grant from the file ``source`` (``.toml`` is TOML, anything else JSON) or standard input (``-``:
    JSON, or TOML when it is not JSON). UsageError naming the file when it cannot be read or parsed."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--grant {source}: cannot read it: {exc}") from exc
    toml_first = source.endswith(".toml")
    try:
        data: Any = tomllib.loads(text) if toml_first else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        if source != "-":
            raise UsageError(f"--grant {source}: not valid {'TOML' if toml_first else 'JSON'}: {exc}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            raise UsageError(f"--grant -: neither JSON nor TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"--grant {source}: a table of permissions (the shape of the manifest's [permissions])")
    return data


def _network(asked: Network, grant: Network) -> list[str]:
    if not asked.enabled:
        return []
    if asked.any_public:
        if not grant.any_public:
            return ["network.outbound: the public internet (any host) not granted"]
        if not grant.ports:
            return []
        if not asked.ports:
            return [f"network.ports: any port > granted {', '.join(map(str, grant.ports))}"]
        return [f"network.ports: {p} not granted" for p in asked.ports if p not in grant.ports]
    return [f"network.outbound: {d} not granted" for d in asked.destinations if not _covered(d, grant)]


def _covered(d: Destination, grant: Network) -> bool:
    if grant.any_public:  # the public internet: names, and IP literals that are public
        if grant.ports and d.port not in grant.ports:
            return False
        return not d.ip or is_public(ipaddress.ip_address(d.host))  # as the egress point judges it
    for g in grant.destinations:
        if g.port != d.port or g.ip != d.ip:
            continue
        if g.host == d.host and g.wildcard == d.wildcard:
            return True
        if g.wildcard and d.host.endswith("." + g.host):  # *.x.org covers a.x.org and *.a.x.org
            return True
    return False


def _paths(field: str, asked: tuple[str, ...], granted: tuple[str, ...]) -> list[str]:
    roots = [PurePosixPath(g) for g in granted]
    return [f"{field}: {p} not granted" for p in asked
            if not any(PurePosixPath(p).is_relative_to(r) for r in roots)]


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)

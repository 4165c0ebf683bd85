"""What each host-API call does and the permission it needs. :func:`dispatch` is the ONE place a permission
is enforced: every route names its permission, and nothing runs before it is checked.

A call is plain HTTP/1.1 with JSON bodies; binary KV values travel as base64. Errors are RFC 9457 problems.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from host import plugin_settings
from host.errors import HostApiError, MissingSettings
from host.hostapi import kv
from host.registry import Registry
from manifests.rules import EVENT_TYPE_PATTERN

if TYPE_CHECKING:
    from manifests import Manifest
    from manifests.model import KvQuota

MAX_BODY = 128 * 1024  # a 64 KiB value is ~88 KiB as base64, plus the JSON around it


def _default_kv_quota() -> KvQuota:
    """The manifest's default quota (a grant made from a manifest has that manifest's own)."""
    from manifests.model import KvQuota

    return KvQuota()


@dataclass(frozen=True)
class Grant:
    """What one plugin instance may do: its manifest's ``host_api`` and KV quota, fixed when it starts."""

    plugin: str
    permissions: frozenset[str]
    kv_quota: KvQuota = field(default_factory=_default_kv_quota)
    manifest: Manifest | None = field(default=None, compare=False)

    @classmethod
    def of(cls, manifest: Manifest) -> Grant:
        perms = manifest.permissions
        return cls(manifest.name, frozenset(perms.host_api), perms.kv, manifest)


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    body: bytes

    @classmethod
    def parse(cls, method: str, target: str, body: bytes) -> Call:
        path, _, query = target.partition("?")
        return cls(method, path, parse_qs(query, keep_blank_values=True), body)

    def json(self, plugin: str) -> dict[str, Any]:
        try:
            data = json.loads(self.body or b"{}")
        except ValueError as exc:
            raise HostApiError(400, "Bad body", f"the body is not JSON: {exc}", plugin) from exc
        if not isinstance(data, dict):
            raise HostApiError(400, "Bad body", "the body is a JSON object", plugin)
        return data

    def arg(self, name: str, default: str = "") -> str:
        return self.query.get(name, [default])[-1]


Reply = tuple[int, dict[str, Any] | None]
Handler = Callable[[Registry, Grant, Call, str], Reply]  # the last argument: the key or event type


def require(grant: Grant, permission: str) -> None:
    """403 with the missing permission named, unless ``grant`` has it."""
    if permission not in grant.permissions:
        raise HostApiError(403, "Permission denied",
                           f"plugin {grant.plugin!r} was not granted the host API permission {permission!r} "
                           "(permissions.host_api in its plugin.toml)", grant.plugin, permission=permission)


def _b64(plugin: str, data: dict[str, Any], name: str) -> bytes | None:
    value = data.get(name)
    if value is None:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HostApiError(400, "Bad body", f"{name!r} is base64", plugin) from exc


def kv_get(registry: Registry, grant: Grant, call: Call, key: str) -> Reply:
    entry = kv.get(registry, grant.plugin, key)
    if entry is None:
        raise HostApiError(404, "No such key", f"no key {key[:kv.MAX_KEY]!r}", grant.plugin)
    return 200, {"key": key, "value": base64.b64encode(entry.value).decode(), "expires": entry.expires}


def kv_put(registry: Registry, grant: Grant, call: Call, key: str) -> Reply:
    """Body: ``value`` (base64; null deletes), ``expire_in_seconds`` (0: never), ``atomic`` and ``old_value``
    (compare-and-set: only if the current value is ``old_value``, null meaning the key does not exist)."""
    data = call.json(grant.plugin)
    expire = data.get("expire_in_seconds", 0)
    if not isinstance(expire, int | float) or isinstance(expire, bool):
        raise HostApiError(400, "Bad expiry", "expire_in_seconds is a number", grant.plugin)
    done = kv.set_value(registry, grant.plugin, key, _b64(grant.plugin, data, "value"), grant.kv_quota,
                        expire_in=float(expire), atomic=data.get("atomic") is True,
                        old_value=_b64(grant.plugin, data, "old_value"))
    return 200, {"set": done}


def kv_delete(registry: Registry, grant: Grant, call: Call, key: str) -> Reply:
    kv.delete(registry, grant.plugin, key)
    return 204, None


def kv_list(registry: Registry, grant: Grant, call: Call, _: str) -> Reply:
    try:
        page, per_page = int(call.arg("page", "0")), int(call.arg("per_page", "100"))
    except ValueError as exc:
        raise HostApiError(400, "Bad page", "page and per_page are integers", grant.plugin) from exc
    keys = kv.list_keys(registry, grant.plugin, prefix=call.arg("prefix"), page=page, per_page=per_page)
    return 200, {"keys": keys, "page": page, "per_page": per_page}


def settings_get(registry: Registry, grant: Grant, call: Call, _: str) -> Reply:
    assert grant.manifest is not None
    try:
        values = plugin_settings.for_start(grant.manifest, registry.plugin_settings(grant.plugin))
    except MissingSettings as exc:
        raise HostApiError(409, "Settings missing", str(exc), grant.plugin) from exc
    return 200, {"settings": values}


def user_get(registry: Registry, grant: Grant, call: Call, name: str) -> Reply:
    row = registry.connection().execute("SELECT name, created FROM users WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise HostApiError(404, "No such user", f"no host user {name[:64]!r}", grant.plugin)
    return 200, {"name": row[0], "created": row[1]}


def emit(registry: Registry, grant: Grant, call: Call, kind: str) -> Reply:
    """Body: ``type`` (``<plugin>.<noun>.<verb>``), ``data`` (a JSON object or null) and optionally ``id`` (the
    dedupe id; the host makes one up otherwise). Queued durably for subscribers (host.hooks.events)."""
    body = call.json(grant.plugin)
    data = body.get("data")
    if data is not None and not isinstance(data, dict):
        raise HostApiError(400, "Bad event", "data is a JSON object or null", grant.plugin)
    try:
        from host.hooks.cloudevent import CloudEvent  # type: ignore[import-not-found, unused-ignore]
        from host.hooks.events import emit as enqueue  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:  # the hooks half of issue 13 (host.hooks) is not on this host yet
        raise HostApiError(501, "Events unavailable", "this host does not deliver events", grant.plugin) from exc
    fields: dict[str, Any] = {"source": f"/plugins/{grant.plugin}", "type": kind, "data": data}
    if body.get("id") is not None:
        fields["id"] = str(body["id"])
    try:
        event = CloudEvent(**fields)
        queued = enqueue(registry, event)
    except ValueError as exc:  # pydantic's ValidationError too: a bad id, data too large
        raise HostApiError(400, "Bad event", str(exc).splitlines()[0][:300], grant.plugin) from exc
    return 202, {"id": event.id, "queued": queued}


def whoami(registry: Registry, grant: Grant, call: Call, _: str) -> Reply:
    return 200, {"plugin": grant.plugin, "permissions": sorted(grant.permissions),
                 "kv": {"max_keys": grant.kv_quota.max_keys, "max_kb": grant.kv_quota.max_kb}}


def _event_type(grant: Grant, call: Call) -> str:
    import re

    kind = call.json(grant.plugin).get("type")
    if not isinstance(kind, str) or not re.match(EVENT_TYPE_PATTERN, kind):
        raise HostApiError(400, "Bad event type", "type is '<plugin>.<noun>.<verb>'", grant.plugin)
    return kind


def route(grant: Grant, call: Call) -> tuple[str, Handler, str | None, str]:
    """(operation name for the audit, handler, permission needed or None, its argument) for ``call``."""
    p, m = call.path, call.method
    if p == "/v1/whoami" and m == "GET":
        return "whoami", whoami, None, ""
    if p == "/v1/kv" and m == "GET":
        return "kv.list", kv_list, "kv:read", ""
    if p.startswith("/v1/kv/"):
        key = unquote(p.removeprefix("/v1/kv/"))
        if m == "GET":
            return "kv.get", kv_get, "kv:read", key
        if m == "PUT":
            return "kv.set", kv_put, "kv:write", key
        if m == "DELETE":
            return "kv.delete", kv_delete, "kv:write", key
    if p == "/v1/events" and m == "POST":
        kind = _event_type(grant, call)
        return "events.emit", emit, f"events:emit:{kind}", kind
    if p == "/v1/settings" and m == "GET":
        return "settings.get", settings_get, "settings:read", ""
    if p.startswith("/v1/users/") and m == "GET":
        return "users.get", user_get, "users:read", unquote(p.removeprefix("/v1/users/"))
    raise HostApiError(404, "Not found", f"no host API call {m} {p[:100]}", grant.plugin)


def dispatch(registry: Registry, grant: Grant, call: Call) -> tuple[str, Reply]:
    """Route, enforce the permission, run: (operation, (status, JSON body or None))."""
    op, handler, permission, arg = route(grant, call)
    if permission is not None:
        require(grant, permission)
    return op, handler(registry, grant, call, arg)

"""A stored manifest read back without pydantic: what the supervisor launches plugins from (issue 12: host
idle PSS; pydantic and its compiled core are ~15 MiB resident).

A manifest is validated where it enters (host install, an upload, host check, host apply: manifests.model),
and the registry keeps ``Manifest.model_dump(mode="json")``. :func:`manifest_view` turns that JSON back into
frozen views with the same fields, values, types and derived properties (manifests.rules and
manifests.setting_rules hold what both share; tests/unit/test_manifest_view.py compares them). A stored
manifest whose shape is not exactly today's (written before a field existed) is validated by the model
instead, as before, so its defaults come from the one place that defines them.

Must not import pydantic or manifests.model at run time.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, cast

from manifests.rules import ManifestRules, NetworkRules
from manifests.setting_rules import SettingRules

if TYPE_CHECKING:
    from manifests.model import Manifest


class _Reshaped(Exception):
    """The stored JSON does not have today's fields (at some level)."""


def _strings(value: Any) -> tuple[Any, ...]:
    return tuple(value)


def _optional_tuple(value: Any) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


def _outbound(value: Any) -> bool | tuple[str, ...]:
    return value if isinstance(value, bool) else tuple(value)


def _same(value: Any) -> Any:
    return value


class View:
    """One validated section of a manifest, as stored; read-only. ``FIELDS``: field -> converter from JSON."""

    FIELDS: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    def __init__(self, data: Mapping[str, Any]) -> None:
        if not isinstance(data, Mapping) or set(data) != set(self.FIELDS):
            raise _Reshaped(type(self).__name__)
        for key, convert in self.FIELDS.items():
            object.__setattr__(self, key, convert(data[key]))
        object.__setattr__(self, "_data", data)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"a manifest is frozen: cannot set {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, View) and type(other) is type(self) and other._data == self._data

    def __hash__(self) -> int:
        return hash(json.dumps(self._data, sort_keys=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"

    if TYPE_CHECKING:
        _data: Mapping[str, Any]

    def model_dump(self, *, mode: str = "json") -> dict[str, Any]:
        """The stored JSON (a copy), as the model's ``model_dump(mode="json")`` gives it."""
        if mode != "json":
            raise ValueError("a manifest view dumps JSON only")
        return copy.deepcopy(dict(self._data))


def _each(kind: type[View]) -> Callable[[Any], tuple[View, ...]]:
    return lambda items: tuple(kind(item) for item in items)


class NetworkView(NetworkRules, View):
    FIELDS: ClassVar[dict[str, Callable[[Any], Any]]] = {"outbound": _outbound, "ports": _strings}


class FilesystemView(View):
    FIELDS: ClassVar[dict[str, Callable[[Any], Any]]] = {"read": _strings, "write": _strings}


class ResourcesView(View):
    FIELDS: ClassVar[dict[str, Callable[[Any], Any]]] = dict.fromkeys(
        ("memory_mb", "cpu_seconds", "cpu_percent", "processes", "open_files", "file_size_mb", "workers", "threads",
         "disk_mb", "files"), _same)


class RequestsView(View):
    FIELDS: ClassVar[dict[str, Callable[[Any], Any]]] = dict.fromkeys(
        ("timeout_seconds", "max_body_mb", "max_websockets", "websocket_idle_seconds"), _same)


class KvQuotaView(View):
    FIELDS: ClassVar[dict[str, Callable[[Any], Any]]] = dict.fromkeys(("max_keys", "max_kb"), _same)


class NavEntryView(View):
    FIELDS: ClassVar[dict[str, Callable[[Any], Any]]] = dict.fromkeys(("title", "path"), _same)


class PermissionsView(View):
    FIELDS: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "network": NetworkView, "filesystem": FilesystemView, "environment": _strings, "resources": ResourcesView,
        "requests": RequestsView, "host_api": _strings, "kv": KvQuotaView}


class FilterView(View):
    FIELDS: ClassVar[dict[str, Callable[[Any], Any]]] = dict.fromkeys(
        ("name", "point", "priority", "deadline_ms", "on_error"), _same)


class HooksView(View):
    FIELDS: ClassVar[dict[str, Callable[[Any], Any]]] = {"events": _strings, "filters": _each(FilterView)}


class SettingView(SettingRules, View):
    FIELDS: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "type": _same, "description": _same, "default": _same, "required": _same, "secret": _same,
        "choices": _optional_tuple}


class ManifestView(ManifestRules, View):
    FIELDS: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "name": _same, "version": _same, "entrypoint": _same, "description": _same, "requirements": _strings,
        "health_path": _same, "permissions": PermissionsView, "nav": _each(NavEntryView), "hooks": HooksView,
        "settings": lambda items: {key: SettingView(value) for key, value in items.items()}}


def manifest_view(stored: Mapping[str, Any], path: str) -> Manifest:
    """The manifest the registry stored (validated at install) as a view; a stored manifest of another shape
    is validated by the model (``path`` names it in a ManifestError, as manifests.parse_manifest does).

    Typed as Manifest, whose fields and properties it has; pydantic's own methods (but ``model_dump(mode=
    "json")``) it has not."""
    try:
        return cast("Manifest", ManifestView(stored))
    except _Reshaped:
        from manifests.loader import parse_manifest

        return parse_manifest(dict(stored), path)

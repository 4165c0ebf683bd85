"""What the web tier knows about installed plugins: a per-thread cache of the registry, invalidated by
SQLite's data_version (which changes whenever another process commits) — no stale state, one cheap pragma."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from host.proxy import Limits
from host.registry import Registry

MiB = 1024 * 1024


@dataclass(frozen=True)
class PluginEntry:
    name: str
    version: str
    description: str
    enabled: bool
    limits: Limits


class Directory:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._local = threading.local()

    def _table(self) -> dict[str, PluginEntry]:
        gen = self.registry.generation()
        cached = getattr(self._local, "cache", None)
        if cached is not None and cached[0] == gen:
            table: dict[str, PluginEntry] = cached[1]
            return table
        table = {}
        for rec in self.registry.all():
            req = rec.manifest.get("permissions", {}).get("requests", {})
            table[rec.name] = PluginEntry(
                name=rec.name,
                version=rec.version,
                description=rec.manifest.get("description", ""),
                enabled=rec.enabled,
                limits=Limits(timeout=float(req.get("timeout_seconds", 30.0)),
                              max_body=int(req.get("max_body_mb", 16)) * MiB),
            )
        self._local.cache = (gen, table)
        return table

    def get(self, name: str) -> PluginEntry | None:
        return self._table().get(name)

    def all(self) -> list[PluginEntry]:
        return sorted(self._table().values(), key=lambda e: e.name)

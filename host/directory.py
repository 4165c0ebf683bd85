"""What the web tier knows about installed plugins: the supervisor's routing snapshot (run/routes.json, see
:mod:`host.routes`), re-read only when the file was replaced — one ``stat`` per lookup, no registry access."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from host.proxy import Limits

_Key = tuple[int, int, int]


@dataclass(frozen=True)
class PluginEntry:
    name: str
    version: str
    description: str
    enabled: bool
    limits: Limits
    users_read: bool = False  # granted users:read: its requests carry the signed user assertion
    nav: tuple[tuple[str, str], ...] = ()  # (title, path under the plugin) menu entries


class Directory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: tuple[_Key, dict[str, PluginEntry]] | None = None
        self._lock = threading.Lock()

    def _table(self) -> dict[str, PluginEntry]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}  # the supervisor has not published yet: no plugin is routable
        cached = self._cache
        if cached is not None and cached[0] == _key(st):
            return cached[1]
        with self._lock:
            with open(self.path, "rb") as fh:
                # The key of what was read (not of the earlier stat): a newer file is picked up next time.
                key = _key(os.fstat(fh.fileno()))
                raw = json.loads(fh.read())
            table = {
                name: PluginEntry(name=name, version=str(p["version"]), description=str(p["description"]),
                                  enabled=bool(p["enabled"]),
                                  limits=Limits(timeout=float(p["timeout"]), max_body=int(p["max_body"]),
                                                max_websockets=int(p.get("max_websockets", 16)),
                                                websocket_idle=float(p.get("websocket_idle", 300.0))),
                                  users_read=bool(p.get("users_read", False)),
                                  nav=tuple((str(e["title"]), str(e["path"])) for e in p.get("nav", ())))
                for name, p in raw["plugins"].items()
            }
            self._cache = (key, table)
        return table

    def get(self, name: str) -> PluginEntry | None:
        return self._table().get(name)

    def all(self) -> list[PluginEntry]:
        return sorted(self._table().values(), key=lambda e: e.name)


def _key(st: os.stat_result) -> _Key:
    return (st.st_ino, st.st_mtime_ns, st.st_size)

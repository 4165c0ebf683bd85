"""The filter table (<home>/run/hooks.json): every live filter, ordered, with the socket and secret of the
instance serving it. The supervisor publishes it (root:<web gid> 0640, like run/routes.json) whenever it
changes: a plugin installed, enabled, disabled, started or restarted (a new secret); the web tier and the
installer read it with one ``stat`` per lookup (:class:`FilterTable`), never the registry.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host import routes
from host.webuser import WebUser

FORMAT = 1


@dataclass(frozen=True)
class FilterRef:
    """One filter of one plugin's live instance."""

    plugin: str
    name: str
    point: str
    priority: int
    deadline: float  # seconds, already capped by the host
    on_error: str  # "allow" | "reject"
    socket: str  # absolute, as this process reaches it
    secret: str

    @property
    def key(self) -> str:
        return f"{self.plugin}/{self.name}"


@dataclass(frozen=True)
class Live:
    """What the supervisor knows of a serving plugin: its stored manifest and its instance."""

    plugin: str
    manifest: dict[str, Any]
    socket: str  # relative to run/ ("<plugin>/<n>.sock"): the web tier reaches the home by another path
    secret: str


def snapshot(live: Iterable[Live], deadline_cap: float) -> bytes:
    """The table for these serving plugins: per point, filters in their run order ``(priority, plugin, name)``."""
    points: dict[str, list[dict[str, Any]]] = {}
    for p in live:
        for f in (p.manifest.get("hooks") or {}).get("filters", ()):
            points.setdefault(str(f["point"]), []).append({
                "plugin": p.plugin, "name": f["name"], "priority": int(f.get("priority", 100)),
                "deadline": min(int(f.get("deadline_ms", 200)) / 1000, deadline_cap),
                "on_error": f.get("on_error", "allow"), "socket": p.socket, "secret": p.secret})
    for refs in points.values():
        refs.sort(key=lambda r: (r["priority"], r["plugin"], r["name"]))
    return json.dumps({"format": FORMAT, "filters": points}, sort_keys=True).encode()


_Key = tuple[int, int, int]


class FilterTable:
    """The published table, re-read only when the file was replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: tuple[_Key, dict[str, tuple[FilterRef, ...]]] | None = None
        self._lock = threading.Lock()

    def at(self, point: str) -> tuple[FilterRef, ...]:
        """The filters of ``point`` in run order; () when there are none (or nothing was published)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ()
        cached = self._cache
        if cached is None or cached[0] != (st.st_ino, st.st_mtime_ns, st.st_size):
            cached = self._load()
        return cached[1].get(point, ())

    def _load(self) -> tuple[_Key, dict[str, tuple[FilterRef, ...]]]:
        with self._lock, open(self.path, "rb") as fh:
            st = os.fstat(fh.fileno())
            raw = json.loads(fh.read())
            run = self.path.parent
            table = {point: tuple(FilterRef(point=point, **{**r, "socket": str(run / r["socket"])}) for r in refs)
                     for point, refs in raw.get("filters", {}).items()}
            self._cache = ((st.st_ino, st.st_mtime_ns, st.st_size), table)
            return self._cache


class TablePublisher(routes.ChangePublisher):
    """The supervisor's side: writes the table when (and only when) its content changes."""

    def __init__(self, path: Path, user: WebUser | None, deadline_cap: float) -> None:
        super().__init__(path, user)
        self.deadline_cap = deadline_cap

    def publish(self, live: Iterable[Live]) -> bool:
        return self.write(snapshot(live, self.deadline_cap))

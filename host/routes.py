"""The routing snapshot (<home>/run/routes.json): all the web tier may know of the installed plugins.

The supervisor (root) builds it from the registry and publishes it atomically (root:<web gid>, 0640) whenever
it changes; the unprivileged web tier only reads it (:mod:`host.directory`). So the web tier never opens the
registry, whose grants, settings and audit log (with plugins' stderr) a compromised web tier must neither
read nor change. Must not import the proxy or Flask (the supervisor writes it).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from host.webuser import WebUser, share_fd

if TYPE_CHECKING:  # the web tier reads snapshots and never opens the registry (nor loads sqlite3)
    from host.registry import PluginRecord

FORMAT = 1
MiB = 1024 * 1024


def snapshot(records: Iterable[PluginRecord]) -> bytes:
    """Name, version, description, enabled, request limits, users:read and menu entries of each plugin;
    nothing else."""
    plugins = {}
    for rec in records:
        perms = rec.manifest.get("permissions", {})
        req = perms.get("requests", {})
        plugins[rec.name] = {
            "version": rec.version,
            "description": rec.manifest.get("description", ""),
            "enabled": rec.enabled,
            "timeout": float(req.get("timeout_seconds", 30.0)),
            "max_body": int(req.get("max_body_mb", 16)) * MiB,
            "max_websockets": int(req.get("max_websockets", 16)),
            "websocket_idle": float(req.get("websocket_idle_seconds", 300.0)),
            # host.end_users: whether its requests carry the signed user assertion
            "users_read": "users:read" in perms.get("host_api", ()),
            # menu entries the host's own pages show (declared text and paths; escaped where rendered)
            "nav": [{"title": str(e["title"]), "path": str(e.get("path", "/"))} for e in rec.manifest.get("nav", ())],
        }
    return json.dumps({"format": FORMAT, "plugins": plugins}, sort_keys=True).encode()


def publish(path: Path, data: bytes, user: WebUser | None) -> None:
    """Replace ``path`` atomically: a reader sees the old snapshot or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        share_fd(fd, user, 0o640)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.replace(tmp, path)


class ChangePublisher:
    """Writes a snapshot file for the web tier with :func:`publish` when (and only when) its content changed
    (or the file went missing); the supervisor's routing table and its hooks filter table each have one."""

    def __init__(self, path: Path, user: WebUser | None) -> None:
        self.path = path
        self.user = user
        self._last: bytes | None = None
        self._lock = threading.Lock()

    def write(self, data: bytes) -> bool:
        with self._lock:
            if data == self._last and self.path.exists():
                return False
            publish(self.path, data, self.user)
            self._last = data
        return True

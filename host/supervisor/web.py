"""What the supervisor gives the unprivileged web tier, and nothing more.

- its listening socket, bound here as root (so ports below 1024 work) and inherited by the web tier, which
  never binds anything itself;
- the routing snapshot (run/routes.json, see :mod:`host.routes`), republished whenever the registry changes;
- the web socket (run/web.sock, root:<web gid> 0660), which answers only :data:`WEB_OPS`: a public status
  (no pid, no stderr), wake, active and filter_tripped (a filter's circuit opened: audited).
  start/stop/restart/reload exist only on the root-only control socket;
- an environment with the web tier's settings and none of the operator's secrets.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host import routes
from host.errors import HostError
from host.registry import PluginRecord
from host.settings_view import ENV as SETTINGS_ENV
from host.settings_view import carry, fields

if TYPE_CHECKING:
    from host.settings import HostSettings

log = logging.getLogger(__name__)
WEB_OPS = ("status", "wake", "active", "user_login", "filter_tripped")
BACKLOG = 2048  # gunicorn's default
# The operator's environment the web tier keeps: locale, time zone, how Python finds the host package.
# Not the rest (index credentials, cloud keys, TMPDIR pointing at a root-only dir ...).
ENV_KEEP = ("PATH", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "PYTHONHASHSEED")
ENV_KEEP_PREFIXES = ("LC_",)
# Settings the web tier has no use for and must not see (HOST_PIP_ARGS may hold index credentials).
SETTINGS_WITHHELD = ("pip_args",)


def bind_listener(bind: str) -> socket.socket:
    """A listening TCP socket for ``HOST:PORT`` (``[v6]:PORT`` for IPv6), bound with our privileges."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise HostError(f"--bind {bind!r}: expected HOST:PORT, e.g. 127.0.0.1:8000")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - an empty host means all interfaces, as in gunicorn
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise HostError(f"--bind {bind!r}: cannot resolve {host!r}: {exc}") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise HostError(f"cannot listen on {bind}: {exc.strerror or exc}") from exc
    return sock


def web_env(settings: HostSettings) -> dict[str, str]:
    """The web tier's settings, plus the little it needs: the validated values in one variable (which the web
    tier reads without importing pydantic, host.settings_view), and as the HOST_* variables they came from."""
    env = {k: v for k, v in os.environ.items() if k in ENV_KEEP or k.startswith(ENV_KEEP_PREFIXES)}
    for key, value in fields(settings).items():
        # None is "unset" (e.g. plugin_domain: derived from bind), which str() would turn into "None"
        if key not in SETTINGS_WITHHELD and value is not None:
            env[f"HOST_{key.upper()}"] = str(settings.home_dir if key == "home" else value)
    env[SETTINGS_ENV] = carry(settings, SETTINGS_WITHHELD)
    return env


def public_view(snapshot: dict[str, Any]) -> dict[str, Any]:
    """One plugin's state as the web tier (and through it anyone) may see it: no pid, no reason or exit
    details (they carry the plugin's stderr), no restart count."""
    sandbox = snapshot.get("sandbox") or {}
    return {"state": snapshot["state"], "retry_in": snapshot.get("retry_in"), "sandbox": sandbox.get("level")}


def sandbox_summary(report_path: Path) -> dict[str, Any] | None:
    """What the runner reported it applied to a plugin's instance; missing layers are listed."""
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return None
    layers = report.get("layers", {})
    missing = sorted(k for k, v in layers.items() if not v.get("applied"))
    return {"backend": report.get("backend"), "level": "weak" if missing else "full", "missing": missing}


class RoutesPublisher(routes.ChangePublisher):
    """Writes the routing snapshot when (and only when) its content changes."""

    def publish(self, records: Iterable[PluginRecord]) -> bool:
        return self.write(routes.snapshot(records))

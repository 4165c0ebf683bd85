"""Where everything lives under <home>: the single source of on-disk paths."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SOCKET_NAME = "http.sock"
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the NUL
# In plugins/<name>/<install_id>/ while an install builds there (host.installer): gone once it commits.
PARTIAL_MARKER = ".partial"


@dataclass(frozen=True)
class Layout:
    home: Path

    @property
    def registry(self) -> Path:
        return self.home / "registry.db"

    @property
    def plugins(self) -> Path:
        return self.home / "plugins"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def control_socket(self) -> Path:
        """Every op, for root (the CLI): 0600."""
        return self.run / "control.sock"

    @property
    def web_socket(self) -> Path:
        """The few ops the unprivileged web tier may ask for (status, wake, active): root:<web gid> 0660."""
        return self.run / "web.sock"

    @property
    def admin_socket(self) -> Path:
        """The admin ops (host.supervisor.admin), each authenticated by a token or session: root:<web gid> 0660."""
        return self.run / "admin.sock"

    @property
    def uploads(self) -> Path:
        """Where the admin web tier leaves an uploaded plugin archive for the supervisor (root:<web gid> 1770).
        Not a name a plugin can have: run/<name>/ is plugin <name>'s."""
        return self.run / "_uploads"

    @property
    def routes(self) -> Path:
        """The routing snapshot the supervisor publishes for the web tier (see host.routes)."""
        return self.run / "routes.json"

    @property
    def hooks(self) -> Path:
        """The live filters the supervisor publishes for the web tier and the installer (host.hooks.table)."""
        return self.run / "hooks.json"

    @property
    def lock(self) -> Path:
        return self.home / ".lock"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def wheels(self) -> Path:
        """The wheel cache every install shares (host.wheel_cache): root's, read-only to the installers."""
        return self.home / "wheels"

    @property
    def venvs(self) -> Path:
        """Venvs kept for reuse by later installs of the same packages (host.venv_template): root's, 0700."""
        return self.home / "venvs"

    def plugin_root(self, name: str) -> Path:
        return self.plugins / name

    def install_dir(self, name: str, install_id: str) -> Path:
        """One immutable install (bundle + venv); the registry says which one is live."""
        return self.plugins / name / install_id

    def data(self, name: str) -> Path:
        return self.home / "data" / name

    def disk_image(self, name: str) -> Path:
        """The plugin's quota filesystem, mounted on :meth:`data` (root-only; never inside the sandbox)."""
        return self.home / "data" / f"{name}.img"

    def run_dir(self, name: str) -> Path:
        return self.run / name

    def socket(self, name: str) -> Path:
        return self.run / name / SOCKET_NAME

    def sandbox_report(self, name: str) -> Path:
        """Written by the sandbox runner when the plugin execs: the layers actually applied."""
        return self.run / f".{name}.sandbox.json"

    def exit_report(self, name: str, instance: str) -> Path:
        """Written by the sandbox runner when an instance (or install step) has ended: how it ended."""
        return self.run / f".{name}.{instance}.exit.json"

    def logs(self, name: str) -> Path:
        return self.home / "logs" / name

    # The host's own directories in run/ have names no plugin can have (an underscore): run/<name>/ is a
    # plugin's, and `host serve` removes those of plugins no longer installed (host.supervisor.leftovers).
    @property
    def access_logs(self) -> Path:
        """Per-plugin access logs (host.access_log), written by the public web tier: owned by the web user."""
        return self.run / "access_log"

    @property
    def metrics(self) -> Path:
        """prometheus_client's multiprocess files of the public web workers (web user, wiped at every start)."""
        return self.run / "web_metrics"

    def ensure(self) -> None:
        """Create the top-level directories with owner-only permissions."""
        self.home.mkdir(parents=True, exist_ok=True)
        # others may traverse (plugin uids, to their own dirs), never list or read
        os.chmod(self.home, 0o711)  # noqa: S103
        for d, mode in ((self.plugins, 0o711), (self.run, 0o711), (self.home / "data", 0o711),
                        (self.home / "logs", 0o700), (self.cache, 0o700)):
            d.mkdir(exist_ok=True)
            os.chmod(d, mode)

    def check_socket_length(self, name: str) -> None:
        path = str(self.socket(name))
        if len(path.encode()) > MAX_SOCKET_PATH:
            raise ValueError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --home")

"""The changes an operator makes to installed plugins, shared by the CLI and the admin API (and `host apply`).

Each function takes (settings, registry, layout, ..., who): it changes the registry with ``who`` in the audit
event, then tells a running supervisor over the control socket (none running: the change applies at the next
`host serve`). The CLI passes ``who=local_who()`` (``local:<user>``), the admin ops ``token:<name>``.
Nothing here prints: progress goes to the caller's ``progress`` callable.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from host import configure, control, plugin_settings
from host.errors import HostError, SupervisorUnavailable
from host.hooks.events import emit_quietly, host_event
from host.installer import Installer
from host.layout import Layout
from host.registry import Registry
from host.settings import HostSettings
from host.terminal import printable

Progress = Callable[[str], None]
AUDIT_WHO_ENV = "PLUGIN_HOST_AUDIT_WHO"


def local_who() -> str:
    """The audit actor of a CLI command: the user behind sudo if any, else the one running it; or the token on
    whose behalf the supervisor runs the command (an install by upload: host.supervisor.admin_install). Whoever
    can run the CLI on this home can write its registry anyway, so believing the variable grants nothing."""
    delegated = os.environ.get(AUDIT_WHO_ENV, "")
    if delegated.startswith("token:"):
        return delegated
    user = os.environ.get("SUDO_USER")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry for this uid (a container)
            user = f"uid{os.geteuid()}"
    return f"local:{user}"


def tell(layout: Layout, op: str, **args: Any) -> dict[str, Any] | None:
    """Tell a running supervisor; None when none runs (the change applies at the next `host serve`)."""
    try:
        return control.call(layout.control_socket, op, **args)
    except SupervisorUnavailable:
        return None


def set_enabled(settings: HostSettings, registry: Registry, layout: Layout, name: str, enabled: bool,
                who: str) -> tuple[bool, bool]:
    """Enable (start, clearing quarantine) or disable (stopped, its whole tree, when this returns) plugin
    ``name``. Returns (changed, a supervisor was told)."""
    changed = registry.set_enabled(name, enabled, who=who)
    if changed:
        emit_quietly(registry, host_event("plugin.enabled" if enabled else "plugin.disabled", plugin=name))
    told = tell(layout, "reload") is not None
    if told and enabled:
        tell(layout, "start", name=name)
    elif told:
        stopped(settings, layout, name, "disabled")
    return changed, told


def stopped(settings: HostSettings, layout: Layout, name: str, why: str) -> None:
    """Wait until a running supervisor has stopped the plugin (its stop takes at most the stop grace)."""
    grace = settings.stop_grace
    tell(layout, "stop", name=name, why=why, wait=grace + 5, timeout=grace + 10)


def restart(settings: HostSettings, registry: Registry, layout: Layout, name: str, who: str) -> dict[str, Any]:
    """Restart plugin ``name`` with no downtime (clears quarantine); returns its state. HostError when it did
    not come up (the old instance, if any, keeps serving)."""
    registry.require(name)
    registry.record(name, "restart_requested", who=who)
    reply = control.call(layout.control_socket, "restart", name=name, wait=settings.start_timeout + 5,
                         timeout=settings.start_timeout + 10)
    st: dict[str, Any] = reply["plugin"]
    if st["state"] not in ("running", "degraded"):
        raise HostError(f"is {st['state']}: {printable(st.get('reason'))}", plugin=name)
    if str(st.get("reason") or "").startswith("restart failed"):  # the old instance kept serving
        raise HostError(printable(st["reason"]), plugin=name)
    return st


def uninstall(settings: HostSettings, registry: Registry, layout: Layout, name: str, who: str,
              progress: Progress, keep_data: bool = False) -> list[str]:
    """Stop and remove plugin ``name``; returns what was kept (``keep_data``), in words."""
    registry.require(name)
    if registry.set_enabled(name, False, who=who):
        tell(layout, "reload")
    stopped(settings, layout, name, "uninstalled")
    kept = Installer(settings, registry, progress, who=who).uninstall(name, keep_data=keep_data)
    tell(layout, "reload")
    return kept


def rollback(settings: HostSettings, registry: Registry, layout: Layout, name: str, who: str, progress: Progress,
             to: str | None = None) -> tuple[str, str, bool]:
    """Stop plugin ``name``, return it to a kept earlier install (and its data snapshot), start it again if it
    was enabled. Returns (from version, to version, data restored)."""
    rec = registry.require(name)
    installer = Installer(settings, registry, progress, who=who)
    installer.rollback_target(name, to)  # none kept: say so before stopping anything
    if rec.enabled:
        registry.set_enabled(name, False, who=who)
        tell(layout, "reload")
        stopped(settings, layout, name, "rolling back")
    try:
        result = installer.roll_back(name, to)
    finally:
        if rec.enabled:
            registry.set_enabled(name, True, who=who)
            if tell(layout, "reload") is not None:
                tell(layout, "start", name=name, wait=settings.start_timeout + 5, timeout=settings.start_timeout + 10)
    return result


def change_settings(settings: HostSettings, registry: Registry, layout: Layout, name: str,
                    values: Mapping[str, Any], unset: Iterable[str], who: str, progress: Progress) -> list[str]:
    """Check typed ``values`` (a JSON object) and ``unset`` keys against the plugin's [settings], store them
    all or nothing (SettingsError, exit 2 / HTTP 422, on the first bad one), and restart the plugin if it runs.
    Returns the keys changed."""
    manifest = configure.manifest_of(registry, name)
    checked = plugin_settings.parse_mapping(manifest, values)
    dropped = plugin_settings.check_unset(manifest, tuple(unset))
    if not checked and not dropped:
        return []
    registry.set_plugin_settings(name, checked, dropped, who=who)
    configure.restart_if_running(settings, registry, name, progress)
    return [*checked, *dropped]

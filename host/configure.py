"""`host config NAME`: change a plugin's settings, restart it with no downtime, and show them (secrets masked).

The CLI parses its arguments and calls :func:`change` and :func:`render`; nothing here prints a secret value.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from host import control, plugin_settings, setting_paths
from host.errors import HostError, SupervisorUnavailable
from host.layout import Layout
from host.registry import Registry
from host.settings import HostSettings
from host.terminal import printable
from manifests import Manifest, parse_manifest

Progress = Callable[[str], None]


def manifest_of(registry: Registry, name: str) -> Manifest:
    rec = registry.require(name)
    return parse_manifest(rec.manifest, f"registry:{name}")


def change(settings: HostSettings, registry: Registry, name: str, assignments: tuple[str, ...],
           from_file: Path | None, unset: tuple[str, ...], progress: Progress, who: str | None = None) -> bool:
    """Validate and store the changes (all or nothing; SettingsError = exit 2), then restart the plugin if it
    runs. Returns whether anything was asked to change. ``who``: the actor the audit event names."""
    if not assignments and from_file is None and not unset:
        return False
    manifest = manifest_of(registry, name)
    values = plugin_settings.read_file(manifest, from_file) if from_file is not None else {}
    values.update(plugin_settings.parse_assignments(manifest, assignments))  # the command line wins
    dropped = plugin_settings.check_unset(manifest, unset)
    registry.set_plugin_settings(name, values, dropped, who=who)
    what = ", ".join([*values, *(f"{k} (unset)" for k in dropped)])
    progress(f"{name}: saved {what}")
    for hint in setting_paths.hidden_paths(manifest, values, Layout(settings.home_dir)):
        progress(f"warning: {hint}")
    restart_if_running(settings, registry, name, progress)
    return True


def restart_if_running(settings: HostSettings, registry: Registry, name: str, progress: Progress) -> None:
    """Like `host restart`, but only a plugin that runs (or waits for these settings): a disabled or stopped
    one, or one asleep (scale to zero), reads them when it next starts."""
    layout = Layout(settings.home_dir)
    try:
        before = control.call(layout.control_socket, "status", timeout=10)["plugins"].get(name)
    except SupervisorUnavailable:
        progress("it reads them when it starts (`host serve`)")
        return
    if not registry.require(name).enabled or before is None or before["state"] == "stopped":
        progress("it reads them when it is next started")
        return
    progress(f"restarting {name} with no downtime")
    reply = control.call(layout.control_socket, "restart", name=name, wait=settings.start_timeout + 5,
                         timeout=settings.start_timeout + 10)
    st = reply["plugin"]
    if st["state"] != "running":
        raise HostError(f"settings saved, but it is {st['state']}: {printable(st.get('reason'))}", plugin=name)
    if before.get("pid") is not None and st.get("pid") == before.get("pid"):
        raise HostError("settings saved, but the new instance did not start; the previous one keeps serving "
                        f"with the old settings: {printable(st.get('reason'))}", plugin=name)
    progress(f"{name} restarted with the new settings (pid {st['pid']})")


def view(settings: HostSettings, registry: Registry, name: str) -> dict[str, Any]:
    """What `host config NAME [--json]` shows: every declared setting (secrets as ••••) and idle_timeout."""
    manifest = manifest_of(registry, name)
    override = registry.get_setting(f"idle_timeout:{name}")
    return {
        "plugin": name,
        "settings": plugin_settings.view(manifest, registry.plugin_settings(name)),
        "idle_timeout": float(override) if override is not None else None,
        "idle_timeout_default": settings.idle_timeout,
    }


def render(shown: dict[str, Any]) -> list[str]:
    """``key = value  # type, flags — description``, one line each, defused for the terminal."""
    rows = []
    for s in shown["settings"]:
        if s["set"]:
            value = plugin_settings.MASK if s["secret"] else json.dumps(s["value"], ensure_ascii=False)
        elif s["value"] is not None:
            value = f"{json.dumps(s['value'], ensure_ascii=False)} (default)"
        else:
            value = "(not set)"
        flags = [s["type"], *(["secret"] if s["secret"] else []), *(["required"] if s["required"] else [])]
        if s["choices"]:
            flags.append("one of " + "|".join(json.dumps(c, ensure_ascii=False) for c in s["choices"]))
        note = ", ".join(flags)
        if s["required"] and not s["set"]:
            note += f" — set it: host config {shown['plugin']} {s['key']}=..."
        elif s["description"]:
            note += f" — {s['description']}"
        rows.append((f"{s['key']} = {value}", note))
    width = max((len(left) for left, _ in rows), default=0)
    lines = [printable(f"{left:<{width}}  # {note}") for left, note in rows]
    if not rows:
        lines.append("(this plugin declares no settings)")
    idle = shown["idle_timeout"]
    default = shown["idle_timeout_default"]
    lines.append(f"idle_timeout = {idle if idle is not None else f'{default} (host default)'}")
    return lines

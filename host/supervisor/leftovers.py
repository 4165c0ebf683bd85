"""What a killed host or sandbox runner leaves behind, removed when the next supervisor starts for the home:
cgroups (and any process still in them), exit reports, the run files of plugins no longer installed, and the
scratch directories of archive extractions that were killed (host.archive.sweep; those in use are locked).

Sockets are swept per plugin by its worker, disk images adopted or unmounted by host.quota.release_all; the
processes themselves die with their parents (parent-death signals, pid namespaces), and what escaped that
is still inside a cgroup found here. Only this home's groups (their names carry a hash of the home) are
touched, and the caller holds the home's supervisor lock, so none of them belongs to a live instance.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from host import archive, launch, rootfs
from host.layout import Layout
from sandbox_runner.layers import cgroup

if TYPE_CHECKING:
    from host.settings import HostSettings

log = logging.getLogger(__name__)
INSTALL_STEPS = ("-pip", "-check")  # a `host install` of this home may be running right now


def clean(settings: HostSettings, installed: frozenset[str]) -> list[str]:
    """Remove the leftovers; returns what was removed, for the log."""
    layout = Layout(settings.home_dir)
    removed: list[str] = []
    prefix = launch.cgroup_name(settings, "", "")[:-2]  # "plugin-host-<home hash>-"
    for name in cgroup.leftovers(prefix + "-"):
        groups = cgroup.find(name)
        if name.endswith(INSTALL_STEPS) and any(cgroup.members(d) for d in groups.dirs):
            continue  # an install step is running in it (a killed install's step died with its runner)
        try:
            cgroup.remove(groups)
        except OSError as exc:
            log.warning("cannot remove the cgroup %s of a killed runner: %s", name, exc)
            continue
        removed.append(f"cgroup {name}")
    for path in layout.run.glob(".*.exit.json"):
        path.unlink(missing_ok=True)
        removed.append(str(path))
    for path in layout.run.iterdir() if layout.run.is_dir() else ():
        plugin = _plugin_of(path.name)
        if plugin is None or plugin in installed:
            continue
        if path.is_dir() and not path.is_symlink():
            rootfs.remove_tree(path)
        else:
            path.unlink(missing_ok=True)
        removed.append(str(path))
    removed += archive.sweep(layout)
    return removed


_PLUGIN = re.compile(r"^[a-z][a-z0-9-]{0,31}$")  # the manifest's name pattern


def _plugin_of(entry: str) -> str | None:
    """The plugin a run/ entry belongs to: its socket dir ``<name>/`` or a file ``.<name>.<what>``."""
    name = entry[1:].split(".", 1)[0] if entry.startswith(".") and "." in entry[1:] else entry
    return name if _PLUGIN.match(name) else None

"""Settings that name a host path the plugin's sandbox does not show it: say which grant would show it.

An app told by a setting to open ``/srv/ledger/main.beancount`` that its manifest does not grant finds no such
file inside its sandbox (bubblewrap hides it; Landlock alone denies it) and says so in its own words ("does not
exist"), at its first request or never. The host knows why, so `host install --set` and `host config` warn with
the manifest line that fixes it. Secret values are never looked at (nothing here may print one).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

from host.layout import Layout
from manifests import Manifest
from manifests.settings import Value
from sandbox_runner import paths

# SQLAlchemy's sqlite:////srv/app.db names /srv/app.db (sqlite:///app.db is relative); file:///srv/x and other
# URLs without a host name /srv/x
_SQLITE = re.compile(r"^sqlite(?:\+\w+)?:///([^?#]*)", re.IGNORECASE)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://(/[^?#]*)", re.IGNORECASE)


def named_paths(value: Value) -> list[str]:
    """The absolute paths a setting's value names: the value, each of its space-separated words, or the path
    of a ``scheme:///`` URL."""
    if not isinstance(value, str):
        return []
    out = []
    for word in value.split():
        url = _SQLITE.match(word) or _URL.match(word)
        path = url.group(1) if url else word
        if path.startswith("/") and "\x00" not in path:
            out.append(os.path.normpath(path))
    return out


def visible(manifest: Manifest, layout: Layout) -> tuple[str, ...]:
    """What the sandbox shows the plugin of this machine (host.launch.runtime_policy, sandbox_runner.paths)."""
    fs = manifest.permissions.filesystem
    system = (*paths.SYSTEM_RO, *(paths.NETWORK_RO if manifest.permissions.network.enabled else ()))
    return (str(layout.plugin_root(manifest.name)), str(layout.data(manifest.name)), sys.base_prefix,
            *fs.read, *fs.write, *system)


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    real = os.path.realpath(path)
    return any(p == root or p.startswith(root.rstrip("/") + "/")
               for p in (path, real) for root in (os.path.normpath(r) for r in roots))


def hidden_paths(manifest: Manifest, values: Mapping[str, Value], layout: Layout) -> list[str]:
    """One warning per path that a (non-secret) setting names, that exists on this machine (the path or its
    directory), and that the sandbox does not show the plugin."""
    shown = visible(manifest, layout)
    out = []
    for key, value in values.items():
        setting = manifest.settings.get(key)
        if setting is None or setting.secret:
            continue
        for path in named_paths(value):
            if not os.path.exists(path) and not os.path.isdir(os.path.dirname(path)):
                continue  # names nothing here: not ours to judge
            if _inside(path, shown):
                continue
            grant = path if os.path.isdir(path) else os.path.dirname(path)
            out.append(f"setting {key} names {path}, which {manifest.name} cannot see in its sandbox: grant it "
                       f"in its plugin.toml ([permissions.filesystem] read = [\"{grant}\"], or write = [...] if "
                       "it writes there) and install it again")
    return out

"""Hooks (issue 13): events delivered at least once from a durable outbox, and synchronous filters with
deadlines, both as signed HTTP calls on a plugin's own socket under :data:`HOOK_PREFIX`.

- :mod:`host.hooks.events`: the CloudEvents envelope and :func:`~host.hooks.events.emit` (the outbox).
- :mod:`host.hooks.signing`: Standard Webhooks signatures and per-start secrets.
- :mod:`host.hooks.dispatch`: the supervisor's delivery thread (retries, dead letter, 410, 429).
- :mod:`host.hooks.filters`: filter chains (order, deadline, on_error, circuit breaker).

Must not import Flask, the supervisor or the proxy: the supervisor, the web tier and the CLI all use it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

# Every hook call goes to this path prefix on the plugin's socket; the public proxy refuses it from clients.
HOOK_PREFIX = "/.well-known/plugin-host/"


def reserved(path: str) -> bool:
    """Whether a client's path (decoded or not) would reach :data:`HOOK_PREFIX` on a plugin however it is
    spelled: percent-encoded (even twice), with doubled or back slashes, in another case."""
    if "%" not in path and "\\" not in path and "well-known" not in path.lower():
        return False  # the common case, on every proxied request: no decoding, no regex
    for _ in range(3):
        path = unquote(path)
    return re.sub(r"[/\\]+", "/", "/" + path).lower().startswith(HOOK_PREFIX.rstrip("/"))

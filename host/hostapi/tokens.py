"""Host-API tokens: one per plugin instance, issued when it starts, revoked when it stops.

Only the sha256 of a token is stored (registry table ``api_tokens``); the secret lives in the instance's
environment (PLUGIN_HOST_API_TOKEN) and nowhere else. A token is good only on its own plugin's socket.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from host.registry import Registry

PREFIX = "pha_"  # never an admin token (phk_): the web tier and the admin API refuse this prefix
_MAX = 256


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(registry: Registry, plugin: str, instance: str) -> str:
    """A new token for ``plugin``'s instance ``instance`` (replacing one that instance had)."""
    secret = PREFIX + secrets.token_urlsafe(32)
    with registry.transaction() as db:
        db.execute("DELETE FROM api_tokens WHERE plugin = ? AND instance = ?", (plugin, instance))
        db.execute("INSERT INTO api_tokens (hash, plugin, instance, created) VALUES (?, ?, ?, ?)",
                   (_digest(secret), plugin, instance, time.time()))
    return secret


def check(registry: Registry, plugin: str, secret: object) -> str | None:
    """The instance whose live token ``secret`` is, if it is ``plugin``'s; else None (unknown, revoked,
    another plugin's, malformed: all alike)."""
    if not isinstance(secret, str) or not 0 < len(secret) <= _MAX:
        return None
    digest = _digest(secret)
    row = registry.connection().execute("SELECT hash, plugin, instance FROM api_tokens WHERE hash = ?",
                                        (digest,)).fetchone()
    if row is None or not hmac.compare_digest(str(row[0]), digest) or row[1] != plugin:
        return None
    return str(row[2])


def revoke(registry: Registry, plugin: str, instance: str | None = None) -> int:
    """Revoke ``plugin``'s token of ``instance`` (None: all of them); how many there were."""
    with registry.transaction() as db:
        if instance is None:
            return int(db.execute("DELETE FROM api_tokens WHERE plugin = ?", (plugin,)).rowcount)
        return int(db.execute("DELETE FROM api_tokens WHERE plugin = ? AND instance = ?",
                              (plugin, instance)).rowcount)


def revoke_all(registry: Registry) -> int:
    """At supervisor start: tokens a killed host left behind belong to instances that are gone."""
    with registry.transaction() as db:
        return int(db.execute("DELETE FROM api_tokens").rowcount)

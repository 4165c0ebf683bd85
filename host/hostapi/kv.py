"""Each plugin's key-value store in the registry, with Mattermost's semantics: get, set (with expiry),
delete, list (paged), compare-and-set / compare-and-delete. The caller passes the plugin the host
authenticated; nothing a plugin sends ever names the namespace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from host.errors import HostApiError
from host.registry import Registry

if TYPE_CHECKING:
    from manifests.model import KvQuota

MAX_KEY = 150  # characters, as Mattermost's KEY_VALUE_KEY_MAX_RUNES
MAX_VALUE = 64 * 1024  # bytes
MAX_PAGE = 1000  # keys one list call returns at most


@dataclass(frozen=True)
class Entry:
    value: bytes
    expires: float | None


def check_key(plugin: str, key: str) -> None:
    if not isinstance(key, str) or not key:
        raise HostApiError(400, "Bad key", "a key is a non-empty string", plugin, key=str(key)[:MAX_KEY])
    if len(key) > MAX_KEY:
        raise HostApiError(400, "Key too long", f"a key has at most {MAX_KEY} characters, this one {len(key)}",
                           plugin, limit=MAX_KEY)


def get(registry: Registry, plugin: str, key: str, now: float | None = None) -> Entry | None:
    """The live entry for ``key`` (an expired one is absent)."""
    check_key(plugin, key)
    now = time.time() if now is None else now
    row = registry.connection().execute(
        "SELECT value, expires FROM kv WHERE plugin = ? AND key = ? AND (expires IS NULL OR expires > ?)",
        (plugin, key, now)).fetchone()
    return Entry(bytes(row[0]), row[1]) if row else None


def set_value(registry: Registry, plugin: str, key: str, value: bytes | None, quota: KvQuota, *,
              expire_in: float = 0, atomic: bool = False, old_value: bytes | None = None,
              now: float | None = None) -> bool:
    """Set ``key`` to ``value`` (None: delete), expiring after ``expire_in`` seconds (0: never).

    ``atomic``: only if the current value is ``old_value`` (None: only if the key does not exist); returns
    whether it was set. Without ``atomic`` it always is. HostApiError for a key or value over the limits
    (400, 413) or a write that would take the plugin over its quota (507)."""
    check_key(plugin, key)
    if value is not None and len(value) > MAX_VALUE:
        raise HostApiError(413, "Value too large", f"a value has at most {MAX_VALUE} bytes, this one {len(value)}",
                           plugin, limit=MAX_VALUE)
    if expire_in < 0:
        raise HostApiError(400, "Bad expiry", "expire_in_seconds is 0 (never) or more", plugin)
    now = time.time() if now is None else now
    with registry.transaction() as db:
        db.execute("DELETE FROM kv WHERE plugin = ? AND expires IS NOT NULL AND expires <= ?", (plugin, now))
        row = db.execute("SELECT value FROM kv WHERE plugin = ? AND key = ?", (plugin, key)).fetchone()
        current = bytes(row[0]) if row else None
        if atomic and current != old_value:
            return False
        if value is None:
            db.execute("DELETE FROM kv WHERE plugin = ? AND key = ?", (plugin, key))
            return True
        keys, size = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(key AS BLOB)) + LENGTH(value)), 0) "
                                "FROM kv WHERE plugin = ?", (plugin,)).fetchone()
        if row is not None:
            keys, size = keys - 1, size - len(key.encode()) - len(current or b"")
        if keys + 1 > quota.max_keys or size + len(key.encode()) + len(value) > quota.max_kb * 1024:
            raise HostApiError(507, "KV quota exceeded",
                               f"the plugin may keep {quota.max_keys} keys and {quota.max_kb} KiB "
                               f"(permissions.kv); it has {keys} keys and {size} bytes", plugin,
                               max_keys=quota.max_keys, max_kb=quota.max_kb)
        db.execute("INSERT INTO kv (plugin, key, value, expires, updated) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT(plugin, key) DO UPDATE SET value=excluded.value, expires=excluded.expires, "
                   "updated=excluded.updated",
                   (plugin, key, value, now + expire_in if expire_in else None, now))
        return True


def delete(registry: Registry, plugin: str, key: str) -> None:
    """Idempotent."""
    check_key(plugin, key)
    with registry.transaction() as db:
        db.execute("DELETE FROM kv WHERE plugin = ? AND key = ?", (plugin, key))


def list_keys(registry: Registry, plugin: str, *, prefix: str = "", page: int = 0, per_page: int = 100,
              now: float | None = None) -> list[str]:
    """Live keys in key order, ``per_page`` (1..1000) of them from page ``page`` (0-based), optionally
    only those starting with ``prefix``."""
    if not 1 <= per_page <= MAX_PAGE or page < 0:
        raise HostApiError(400, "Bad page", f"page >= 0 and 1 <= per_page <= {MAX_PAGE}", plugin)
    if len(prefix) > MAX_KEY:
        raise HostApiError(400, "Key too long", f"a prefix has at most {MAX_KEY} characters", plugin)
    now = time.time() if now is None else now
    # substr, not LIKE: a prefix may hold % and _ (and LIKE ignores case)
    rows = registry.connection().execute(
        "SELECT key FROM kv WHERE plugin = ? AND substr(key, 1, ?) = ? AND (expires IS NULL OR expires > ?) "
        "ORDER BY key LIMIT ? OFFSET ?", (plugin, len(prefix), prefix, now, per_page, page * per_page)).fetchall()
    return [str(r[0]) for r in rows]


def delete_all(registry: Registry, plugin: str) -> int:
    """Forget every key of ``plugin`` (uninstall without --keep-data)."""
    with registry.transaction() as db:
        return int(db.execute("DELETE FROM kv WHERE plugin = ?", (plugin,)).rowcount)

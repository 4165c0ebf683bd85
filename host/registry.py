"""The registry: installed plugins, desired state, their settings and the audit log: SQLite (WAL), registry.db.

Every process opens its own connection; nothing is cached across calls except by ``data_version``
(see :meth:`Registry.generation`), which changes whenever another connection commits.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host.errors import PluginNotFound, RegistryError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS plugins (
    name        TEXT PRIMARY KEY,
    version     TEXT NOT NULL,
    install_id  TEXT NOT NULL,
    manifest    TEXT NOT NULL,           -- the validated manifest as JSON
    enabled     INTEGER NOT NULL DEFAULT 1,
    uid_index   INTEGER NOT NULL UNIQUE, -- plugin uid = settings.uid_base + uid_index (host.uids: machine-wide)
    installed_at REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      REAL NOT NULL,
    plugin  TEXT,
    kind    TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_plugin ON events(plugin, id);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Schema changes after the tables above, in order: entry i takes a registry from `PRAGMA user_version` i to
# i + 1 (a home created before versioning is at 0 with exactly the tables above). Each runs once, in one
# transaction with its version bump, by whichever process opens the registry first; append, never edit.
# Why not a migration library (Alembic, yoyo): one SQLite file, stdlib sqlite3 and no ORM; a tuple of SQL
# steps is all the bookkeeping needed, and tests/unit/test_registry_admin.py opens every older version.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the operator's values for a manifest's [settings] (issue 9), as JSON; secrets too (the file is 0600).
    ("""CREATE TABLE IF NOT EXISTS plugin_settings (
        plugin     TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (plugin, key)
    )""",),
    # 2: who made a change (issue 11): "local:<user>" for the CLI, "token:<name>" for the admin API, NULL for
    # the host itself. The ts index serves audit retention (prune_events).
    ("ALTER TABLE events ADD COLUMN who TEXT",
     "CREATE INDEX IF NOT EXISTS events_ts ON events(ts)"),
    # 3: admin API tokens: only the sha256 of the secret is stored; revoked tokens stay listed.
    ("""CREATE TABLE IF NOT EXISTS tokens (
        name      TEXT PRIMARY KEY,
        hash      TEXT UNIQUE NOT NULL,
        scope     TEXT NOT NULL CHECK(scope IN ('admin', 'read')),
        created   REAL,
        last_used REAL,
        revoked   REAL
    )""",),
    # 4: admin UI sessions (sha256 of the session id, the token it was opened with, its CSRF token) and failed
    # logins per client address (the UI's rate limit, shared by every web-tier worker).
    ("""CREATE TABLE IF NOT EXISTS sessions (
        hash    TEXT PRIMARY KEY,
        token   TEXT NOT NULL,
        csrf    TEXT NOT NULL,
        created REAL,
        expires REAL
    )""",
     """CREATE TABLE IF NOT EXISTS login_failures (
        client TEXT NOT NULL,
        ts     REAL NOT NULL
    )""",
     "CREATE INDEX IF NOT EXISTS login_failures_client ON login_failures(client, ts)"),
    # 5: integrity and trust (issue 14): per install, the sha256 of its integrity record (host.integrity), the
    # key that signed it (NULL: unsigned), and its version and manifest (`host rollback` to a kept previous
    # install); per plugin name, the pinned publisher key and the highest version ever
    # installed (both survive uninstall: a reinstall is still held to them).
    ("""CREATE TABLE IF NOT EXISTS provenance (
        plugin     TEXT NOT NULL,
        install_id TEXT NOT NULL,
        integrity  TEXT NOT NULL,
        signer     TEXT,
        version    TEXT NOT NULL,
        manifest   TEXT NOT NULL,
        installed_at REAL NOT NULL,
        PRIMARY KEY (plugin, install_id)
    )""",
     """CREATE TABLE IF NOT EXISTS publishers (
        plugin    TEXT PRIMARY KEY,
        key       TEXT NOT NULL,
        pinned_at REAL NOT NULL
    )""",
     """CREATE TABLE IF NOT EXISTS high_water (
        plugin  TEXT PRIMARY KEY,
        version TEXT NOT NULL
    )"""),
    # 6: the hooks outbox (issue 13, host.hooks.events): one row per event and subscribed plugin, delivered at
    # least once by the supervisor; state pending -> delivered | dead (retries exhausted) | gone (410, or the
    # plugin was uninstalled). And the event types a plugin unsubscribed from by answering 410.
    ("""CREATE TABLE IF NOT EXISTS hook_deliveries (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id   TEXT NOT NULL,
        plugin     TEXT NOT NULL,
        type       TEXT NOT NULL,
        event      TEXT NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_at    REAL NOT NULL,
        state      TEXT NOT NULL CHECK(state IN ('pending', 'delivered', 'dead', 'gone')),
        last_error TEXT,
        created    REAL NOT NULL,
        updated    REAL NOT NULL,
        UNIQUE(event_id, plugin)
    )""",
     "CREATE INDEX IF NOT EXISTS hook_deliveries_due ON hook_deliveries(state, next_at)",
     """CREATE TABLE IF NOT EXISTS hook_unsubscribed (
        plugin TEXT NOT NULL,
        type   TEXT NOT NULL,
        ts     REAL NOT NULL,
        PRIMARY KEY (plugin, type)
    )"""),
    # 7: the host API (issue 13, host.hostapi): each plugin's KV store (namespaced by the host from the
    # authenticated plugin), the sha256 of each running instance's host-API token, and the host's own users.
    ("""CREATE TABLE IF NOT EXISTS kv (
        plugin  TEXT NOT NULL,
        key     TEXT NOT NULL,
        value   BLOB NOT NULL,
        expires REAL,
        updated REAL NOT NULL,
        PRIMARY KEY (plugin, key)
    ) WITHOUT ROWID""",
     """CREATE TABLE IF NOT EXISTS api_tokens (
        hash     TEXT PRIMARY KEY,
        plugin   TEXT NOT NULL,
        instance TEXT NOT NULL,
        created  REAL NOT NULL
    )""",
     """CREATE TABLE IF NOT EXISTS users (
        name    TEXT PRIMARY KEY,
        hash    TEXT NOT NULL,
        created REAL NOT NULL
    )"""),
)
SCHEMA_VERSION = len(_MIGRATIONS)

TOKEN_PREFIX = "phk_"  # host.headers refuses to forward credentials with this prefix to plugins
TOKEN_SCOPES = ("admin", "read")
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# check_token refreshes last_used at most this often: a write per API request would contend with the supervisor.
LAST_USED_RESOLUTION = 60.0
_MAX_SECRET = 256  # longer "tokens" are not ours; hashing megabytes per request is not free


@dataclass(frozen=True)
class PluginRecord:
    name: str
    version: str
    install_id: str
    manifest: dict[str, Any]
    enabled: bool
    uid_index: int
    installed_at: float
    updated_at: float


@dataclass(frozen=True)
class Provenance:
    """How an install came to be trusted: its integrity record's sha256, and its signer (None: unsigned)."""

    integrity: str
    signer: str | None


@dataclass(frozen=True)
class InstallRecord:
    """One install of a plugin, live or kept for `host rollback`."""

    install_id: str
    version: str
    manifest: dict[str, Any]
    installed_at: float
    signer: str | None


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    plugin: str | None
    kind: str
    detail: dict[str, Any]
    who: str | None = None


@dataclass(frozen=True)
class TokenRecord:
    """An admin API token, without its secret (only its hash is stored)."""

    name: str
    scope: str
    created: float
    last_used: float | None
    revoked: float | None

    @property
    def active(self) -> bool:
        return self.revoked is None


class Registry:
    """Thread-safe handle on the registry database (one connection per thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        try:
            self._conn().executescript(_SCHEMA)
            self._migrate()
        except sqlite3.Error as exc:
            raise RegistryError(f"cannot initialise registry {path}: {exc}") from exc

    def _migrate(self) -> None:
        if self._conn().execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        with self._tx() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])  # another process may have won
            for n in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[n]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {n + 1}")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=True)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=10000")
            except sqlite3.Error as exc:
                raise RegistryError(f"cannot open registry {self.path}: {exc}") from exc
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            # Manifests, events (with plugins' stderr) and settings are the operator's business only; the
            # -wal and -shm files SQLite creates later copy the database file's mode.
            if self.path.exists() and self.path.stat().st_uid == os.geteuid():
                os.chmod(self.path, 0o600)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Rows of one read (no transaction) for modules that own tables of their own (host.hooks)."""
        return self._conn().execute(sql, args).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE) for modules that own tables of their own (host.hooks)."""
        with self._tx() as db:
            yield db

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, for reads outside a transaction (host.hostapi)."""
        return self._conn()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def generation(self) -> int:
        """Changes whenever any other connection commits: a cheap cache key."""
        row = self._conn().execute("PRAGMA data_version").fetchone()
        return int(row[0])

    # -- plugins ---------------------------------------------------------------------------------------

    def get(self, name: str) -> PluginRecord | None:
        row = self._conn().execute("SELECT * FROM plugins WHERE name = ?", (name,)).fetchone()
        return _record(row) if row else None

    def require(self, name: str) -> PluginRecord:
        rec = self.get(name)
        if rec is None:
            raise PluginNotFound(name)
        return rec

    def all(self) -> list[PluginRecord]:
        rows = self._conn().execute("SELECT * FROM plugins ORDER BY name").fetchall()
        return [_record(r) for r in rows]

    def own_uid_index(self, name: str) -> int | None:
        """The uid index the plugin already has: installed, or uninstalled with --keep-data (its files are
        that uid's); None for a plugin new to this home."""
        row = self._conn().execute("SELECT uid_index FROM plugins WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        kept = self.get_setting(f"kept_uid:{name}")
        return int(kept) if kept is not None else None

    def uid_index_for(self, name: str) -> int:
        """The plugin's uid index: its own if it has one, else the next never-used one in this home (uids are
        not reused, so a new plugin never inherits files a removed one left behind). Root hosts allocate
        machine-wide instead (host.uids) and pass the result to :meth:`put`."""
        own = self.own_uid_index(name)
        if own is not None:
            return own
        counter = self.get_setting("uid_counter")
        top = self._conn().execute("SELECT COALESCE(MAX(uid_index), 0) + 1 FROM plugins").fetchone()[0]
        return max(int(counter or 1), int(top))

    def put(self, name: str, version: str, install_id: str, manifest: dict[str, Any], enabled: bool,
            uid_index: int | None = None, plugin_settings: dict[str, Any] | None = None,
            who: str | None = None, provenance: Provenance | None = None, pin: str | None = None) -> None:
        """Insert or replace a plugin's live install, in one transaction together with its audit event.
        ``uid_index``: for a plugin new to this home, the index allocated for it (default: the next one).
        ``plugin_settings``: when given, the plugin's setting values become exactly these (an upgrade keeps
        the values its new manifest still declares). ``provenance``: the install's integrity hash and signer;
        ``pin``: the publisher key to pin for ``name`` from now on (host.trust decided it may). The version is also
        the plugin's new high-water mark when it is higher (host.trust refuses downgrades below it)."""
        now = time.time()
        nxt = self.uid_index_for(name) if uid_index is None else uid_index
        with self._tx() as db:
            old = db.execute("SELECT uid_index FROM plugins WHERE name = ?", (name,)).fetchone()
            if old is None:
                db.execute("INSERT INTO settings VALUES ('uid_counter', ?) ON CONFLICT(key) DO UPDATE "
                           "SET value=MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))", (str(nxt + 1),))
                db.execute("DELETE FROM settings WHERE key = ?", (f"kept_uid:{name}",))
                db.execute(
                    "INSERT INTO plugins VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, version, install_id, json.dumps(manifest), int(enabled), nxt, now, now),
                )
            else:
                db.execute(
                    "UPDATE plugins SET version=?, install_id=?, manifest=?, enabled=?, updated_at=? WHERE name=?",
                    (version, install_id, json.dumps(manifest), int(enabled), now, name),
                )
            if plugin_settings is not None:
                db.execute("DELETE FROM plugin_settings WHERE plugin = ?", (name,))
                _write_settings(db, name, plugin_settings)
            if provenance is not None:
                db.execute("INSERT OR REPLACE INTO provenance VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (name, install_id, provenance.integrity, provenance.signer, version, json.dumps(manifest),
                            now))
            if pin is not None:
                db.execute("INSERT OR REPLACE INTO publishers VALUES (?, ?, ?)", (name, pin, now))
            _raise_high_water(db, name, version)
            detail: dict[str, Any] = {"version": version, "install_id": install_id}
            if provenance is not None:
                detail["signer"] = provenance.signer
            _event(db, name, "installed", detail, who)

    def roll_back(self, name: str, version: str, install_id: str, manifest: dict[str, Any], reason: str,
                  who: str | None = None, failed: bool = False) -> None:
        """Make an earlier install (still on disk) the live one again, with a ``rolled_back`` audit event. The
        high-water mark stays: a rollback is not an install. ``failed``: the install left behind failed (an
        automatic rollback), so it is no target for a later `host rollback`."""
        with self._tx() as db:
            cur = db.execute("SELECT version, install_id FROM plugins WHERE name = ?", (name,)).fetchone()
            if cur is None:
                raise PluginNotFound(name)
            db.execute("UPDATE plugins SET version=?, install_id=?, manifest=?, updated_at=? WHERE name=?",
                       (version, install_id, json.dumps(manifest), time.time(), name))
            if failed:
                db.execute("DELETE FROM provenance WHERE plugin = ? AND install_id = ?", (name, cur[1]))
            _event(db, name, "rolled_back", {"from": cur[0], "from_install": cur[1], "to": version,
                                             "to_install": install_id, "reason": reason}, who)

    def installs(self, name: str) -> list[InstallRecord]:
        """The installs of ``name`` the registry knows (the live one and the kept previous ones), newest first."""
        rows = self._conn().execute("SELECT install_id, version, manifest, installed_at, signer FROM provenance "
                                    "WHERE plugin = ? ORDER BY installed_at DESC", (name,)).fetchall()
        return [InstallRecord(str(r[0]), str(r[1]), json.loads(r[2]), float(r[3]), r[4]) for r in rows]

    def forget_install(self, name: str, install_id: str) -> None:
        """An earlier install's files are gone: it can no longer be rolled back to."""
        with self._tx() as db:
            db.execute("DELETE FROM provenance WHERE plugin = ? AND install_id = ?", (name, install_id))

    def provenance(self, name: str, install_id: str) -> Provenance | None:
        """None for an install made before the host recorded integrity (it starts unchecked)."""
        row = self._conn().execute("SELECT integrity, signer FROM provenance WHERE plugin = ? AND install_id = ?",
                                   (name, install_id)).fetchone()
        return Provenance(str(row[0]), row[1]) if row else None

    def publisher(self, name: str) -> str | None:
        """The public key pinned for plugin ``name`` (trust on first use), None when none is."""
        row = self._conn().execute("SELECT key FROM publishers WHERE plugin = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def high_water(self, name: str) -> str | None:
        """The highest version of ``name`` ever installed in this home (uninstalls do not lower it)."""
        row = self._conn().execute("SELECT version FROM high_water WHERE plugin = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def remove(self, name: str, *, keep_uid: bool = False, who: str | None = None) -> None:
        """Forget a plugin. ``keep_uid``: its data stays on disk, so a reinstall must run as the same uid."""
        with self._tx() as db:
            row = db.execute("SELECT uid_index FROM plugins WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise PluginNotFound(name)
            db.execute("DELETE FROM plugins WHERE name = ?", (name,))
            db.execute("DELETE FROM provenance WHERE plugin = ?", (name,))
            key = f"kept_uid:{name}"
            if keep_uid:
                db.execute("INSERT INTO settings VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                           (key, str(row[0])))
            else:
                db.execute("DELETE FROM settings WHERE key = ?", (key,))
                db.execute("DELETE FROM plugin_settings WHERE plugin = ?", (name,))
                db.execute("DELETE FROM kv WHERE plugin = ?", (name,))  # its data, kept or not with the rest
            _event(db, name, "uninstalled", {"kept_data": keep_uid}, who)

    def set_enabled(self, name: str, enabled: bool, who: str | None = None) -> bool:
        """Set desired state; returns whether it changed."""
        with self._tx() as db:
            row = db.execute("SELECT enabled FROM plugins WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise PluginNotFound(name)
            if bool(row[0]) == enabled:
                return False
            db.execute("UPDATE plugins SET enabled=?, updated_at=? WHERE name=?", (int(enabled), time.time(), name))
            _event(db, name, "enabled" if enabled else "disabled", {}, who)
            return True

    # -- operator settings (per-plugin overrides) ------------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_setting(self, key: str, value: str | None, plugin: str | None = None, who: str | None = None) -> None:
        with self._tx() as db:
            if value is None:
                db.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                db.execute("INSERT INTO settings VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                           (key, value))
            _event(db, plugin, "setting_changed", {"key": key, "value": value}, who)

    # -- the plugin's own settings (its manifest's [settings]; host.plugin_settings validates) -----------

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """The values the operator set for plugin ``name``: key -> JSON value (defaults are not stored)."""
        rows = self._conn().execute("SELECT key, value FROM plugin_settings WHERE plugin = ? ORDER BY key",
                                    (name,)).fetchall()
        return {str(r[0]): json.loads(r[1]) for r in rows}

    def set_plugin_settings(self, name: str, values: dict[str, Any], unset: tuple[str, ...] = (),
                            who: str | None = None) -> None:
        """Store ``values`` and forget ``unset``, in one transaction. The audit event names the keys only:
        values may be secrets, and the audit log is shown to operators and kept."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM plugins WHERE name = ?", (name,)).fetchone() is None:
                raise PluginNotFound(name)
            _write_settings(db, name, values)
            for key in unset:
                db.execute("DELETE FROM plugin_settings WHERE plugin = ? AND key = ?", (name, key))
            _event(db, name, "settings_changed", {"set": sorted(values), "unset": sorted(unset)}, who)

    # -- audit log -------------------------------------------------------------------------------------

    def record(self, plugin: str | None, kind: str, who: str | None = None, **detail: Any) -> None:
        """Append one audit event. ``who``: the actor ("local:<user>", "token:<name>"; None = the host)."""
        with self._tx() as db:
            _event(db, plugin, kind, detail, who)

    def events(self, plugin: str | None = None, limit: int = 100,
               kinds: Iterable[str] | None = None) -> list[Event]:
        """Newest first; only ``plugin``'s events and only ``kinds`` when given."""
        where, args = [], []
        if plugin:
            where.append("plugin = ?")
            args.append(plugin)
        if kinds is not None:
            wanted = [kinds] if isinstance(kinds, str) else list(kinds)  # "enabled" is one kind, not 7 letters
            if not wanted:
                return []
            where.append(f"kind IN ({', '.join('?' * len(wanted))})")
            args += wanted
        q = ("SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")  # noqa: S608 - placeholders only
             + " ORDER BY id DESC LIMIT ?")
        rows = self._conn().execute(q, (*args, limit)).fetchall()
        return [Event(r["id"], r["ts"], r["plugin"], r["kind"], json.loads(r["detail"]), r["who"]) for r in rows]

    def prune_events(self, retention_days: float, now: float | None = None) -> int:
        """Forget audit events older than ``retention_days`` (0 = keep forever); returns how many went."""
        if retention_days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - retention_days * 86400
        with self._tx() as db:
            return int(db.execute("DELETE FROM events WHERE ts < ?", (cutoff,)).rowcount)

    # -- admin tokens (issue 11) -----------------------------------------------------------------------

    def create_token(self, name: str, scope: str, who: str | None = None) -> str:
        """A new token ``name`` with ``scope`` ('admin' or 'read'). Returns the secret, which is stored only as
        its sha256 and cannot be shown again. ValueError for a bad name or scope, or a name in use by a token
        that is not revoked (a revoked token's name may be reused: rotation)."""
        if not isinstance(name, str) or not TOKEN_NAME.fullmatch(name):
            raise ValueError(f"bad token name {name!r}: 1-64 of letters, digits, '.', '_', '-', starting with a "
                             "letter or digit")
        if scope not in TOKEN_SCOPES:
            raise ValueError(f"bad token scope {scope!r}: one of {', '.join(TOKEN_SCOPES)}")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._tx() as db:
            row = db.execute("SELECT revoked FROM tokens WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] is None:
                raise ValueError(f"token {name!r} exists; revoke it first or choose another name")
            db.execute("DELETE FROM tokens WHERE name = ?", (name,))
            db.execute("DELETE FROM sessions WHERE token = ?", (name,))
            db.execute("INSERT INTO tokens (name, hash, scope, created) VALUES (?, ?, ?, ?)",
                       (name, _digest(secret), scope, time.time()))
            _event(db, None, "token_created", {"name": name, "scope": scope}, who)
        return secret

    def tokens(self) -> list[TokenRecord]:
        """Every token, revoked ones included, by name (never a secret: none is stored)."""
        rows = self._conn().execute("SELECT * FROM tokens ORDER BY name").fetchall()
        return [_token(r) for r in rows]

    def revoke_token(self, name: str, who: str | None = None) -> bool:
        """Revoke token ``name`` and end its sessions; False when no such active token exists."""
        with self._tx() as db:
            cur = db.execute("UPDATE tokens SET revoked = ? WHERE name = ? AND revoked IS NULL", (time.time(), name))
            if cur.rowcount == 0:
                return False
            db.execute("DELETE FROM sessions WHERE token = ?", (name,))
            _event(db, None, "token_revoked", {"name": name}, who)
            return True

    def check_token(self, secret: object) -> TokenRecord | None:
        """The active token whose secret this is, else None (unknown, revoked, malformed: all alike). The
        lookup is by sha256, so timing says nothing about the secret; refreshes last_used (to the minute)."""
        if not isinstance(secret, str) or not 0 < len(secret) <= _MAX_SECRET:
            return None
        digest = _digest(secret)
        row = self._conn().execute("SELECT * FROM tokens WHERE hash = ?", (digest,)).fetchone()
        if row is None or not hmac.compare_digest(str(row["hash"]), digest) or row["revoked"] is not None:
            return None
        return self._touch(_token(row))

    def _touch(self, rec: TokenRecord) -> TokenRecord:
        now = time.time()
        if rec.last_used is not None and now - rec.last_used < LAST_USED_RESOLUTION:
            return rec
        with self._tx() as db:
            db.execute("UPDATE tokens SET last_used = ? WHERE name = ? AND revoked IS NULL", (now, rec.name))
        return TokenRecord(rec.name, rec.scope, rec.created, now, rec.revoked)

    # -- admin UI sessions -----------------------------------------------------------------------------

    def create_session(self, token_name: str, ttl: float) -> tuple[str, str]:
        """A session for the active token ``token_name``, valid ``ttl`` seconds: (session id, CSRF token). Only
        the session id's sha256 is stored. ValueError when the token is unknown or revoked."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT 1 FROM tokens WHERE name = ? AND revoked IS NULL", (token_name,)).fetchone()
            if row is None:
                raise ValueError(f"no active token {token_name!r}")
            db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", (_digest(sid), token_name, csrf, now, now + ttl))
        return sid, csrf

    def check_session(self, sid: object) -> tuple[TokenRecord, str] | None:
        """(the session's token, its CSRF token) while the session is live and its token not revoked; else None."""
        if not isinstance(sid, str) or not 0 < len(sid) <= _MAX_SECRET:
            return None
        row = self._conn().execute(
            "SELECT t.*, s.csrf AS csrf FROM sessions s JOIN tokens t ON t.name = s.token "
            "WHERE s.hash = ? AND s.expires > ? AND t.revoked IS NULL", (_digest(sid), time.time())).fetchone()
        if row is None:
            return None
        return self._touch(_token(row)), str(row["csrf"])

    def end_session(self, sid: object) -> bool:
        """Forget the session (log out); False when there was none."""
        if not isinstance(sid, str) or not 0 < len(sid) <= _MAX_SECRET:
            return False
        with self._tx() as db:
            return db.execute("DELETE FROM sessions WHERE hash = ?", (_digest(sid),)).rowcount > 0

    # -- failed logins (rate limit per client address) -------------------------------------------------

    def login_failures(self, client: str, window: float = 60.0) -> int:
        """Failed logins from ``client`` in the last ``window`` seconds."""
        row = self._conn().execute("SELECT COUNT(*) FROM login_failures WHERE client = ? AND ts > ?",
                                   (client, time.time() - window)).fetchone()
        return int(row[0])

    def record_login_failure(self, client: str, window: float = 60.0) -> int:
        """Count one failed login from ``client``; returns the failures in the last ``window`` seconds, this one
        included. Rows older than an hour are dropped on the way."""
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM login_failures WHERE ts < ?", (now - max(window, 3600.0),))
            db.execute("INSERT INTO login_failures VALUES (?, ?)", (client, now))
            row = db.execute("SELECT COUNT(*) FROM login_failures WHERE client = ? AND ts > ?",
                             (client, now - window)).fetchone()
        return int(row[0])


def _event(db: sqlite3.Connection, plugin: str | None, kind: str, detail: dict[str, Any],
           who: str | None = None) -> None:
    db.execute(
        "INSERT INTO events (ts, plugin, kind, detail, who) VALUES (?, ?, ?, ?, ?)",
        (time.time(), plugin, kind, json.dumps(detail, default=str), who),
    )


def _raise_high_water(db: sqlite3.Connection, name: str, version: str) -> None:
    from packaging.version import InvalidVersion, Version  # installs only: not resident in the supervisor

    row = db.execute("SELECT version FROM high_water WHERE plugin = ?", (name,)).fetchone()
    try:
        if row is not None and Version(str(row[0])) >= Version(version):
            return
    except InvalidVersion:
        pass  # manifests are PEP 440; an unparsable stored mark is replaced
    db.execute("INSERT OR REPLACE INTO high_water VALUES (?, ?)", (name, version))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _token(row: sqlite3.Row) -> TokenRecord:
    return TokenRecord(row["name"], row["scope"], row["created"], row["last_used"], row["revoked"])


def _write_settings(db: sqlite3.Connection, name: str, values: dict[str, Any]) -> None:
    now = time.time()
    for key, value in values.items():
        db.execute("INSERT INTO plugin_settings VALUES (?, ?, ?, ?) ON CONFLICT(plugin, key) DO UPDATE "
                   "SET value=excluded.value, updated_at=excluded.updated_at", (name, key, json.dumps(value), now))


def _record(row: sqlite3.Row) -> PluginRecord:
    return PluginRecord(
        name=row["name"],
        version=row["version"],
        install_id=row["install_id"],
        manifest=json.loads(row["manifest"]),
        enabled=bool(row["enabled"]),
        uid_index=row["uid_index"],
        installed_at=row["installed_at"],
        updated_at=row["updated_at"],
    )

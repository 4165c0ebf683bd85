"""The registry's schema migrations, admin tokens, UI sessions, failed-login counts and audit retention."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

import pytest

from host.registry import _MIGRATIONS, _SCHEMA, SCHEMA_VERSION, Registry, TokenRecord

# The exact DDL of registry.db before versioning (user_version 0, commits 431ab2a..da12b89^) and of version 1
# (da12b89): copied here, not imported, so that editing an old step or the base schema fails this test.
V0_DDL = """
CREATE TABLE IF NOT EXISTS plugins (
    name        TEXT PRIMARY KEY,
    version     TEXT NOT NULL,
    install_id  TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    enabled     INTEGER NOT NULL DEFAULT 1,
    uid_index   INTEGER NOT NULL UNIQUE,
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
V1_DDL = V0_DDL + """
CREATE TABLE IF NOT EXISTS plugin_settings (
    plugin     TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (plugin, key)
);
PRAGMA user_version = 1;
"""


def _old_home(path: Path, ddl: str) -> None:
    """A registry as an older host left it: one plugin, its events, a host setting."""
    db = sqlite3.connect(path)
    db.executescript(ddl)
    db.execute("INSERT INTO plugins VALUES ('notes', '1.0', '1.0-abc', ?, 1, 3, 1.0, 2.0)",
               (json.dumps({"name": "notes"}),))
    db.execute("INSERT INTO events (ts, plugin, kind, detail) VALUES (?, 'notes', 'installed', ?)",
               (time.time(), json.dumps({"version": "1.0"})))
    db.execute("INSERT INTO settings VALUES ('uid_counter', '4')")
    db.commit()
    db.close()


@pytest.mark.parametrize(("ddl", "version"), [(V0_DDL, 0), (V1_DDL, 1)], ids=["v0", "v1"])
def test_a_registry_from_every_released_schema_opens_with_its_data(tmp_path: Path, ddl: str, version: int) -> None:
    path = tmp_path / "registry.db"
    _old_home(path, ddl)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == version

    reg = Registry(path)
    assert reg._conn().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    rec = reg.require("notes")
    assert (rec.version, rec.install_id, rec.uid_index, rec.enabled) == ("1.0", "1.0-abc", 3, True)
    assert reg.get_setting("uid_counter") == "4"
    [old] = reg.events("notes")
    assert (old.kind, old.detail, old.who) == ("installed", {"version": "1.0"}, None)
    # what the new steps added works on the migrated file
    reg.set_enabled("notes", False, who="local:alice")
    assert reg.events("notes", limit=1)[0].who == "local:alice"
    reg.set_plugin_settings("notes", {"title": "x"})
    assert reg.plugin_settings("notes") == {"title": "x"}
    secret = reg.create_token("ci", "read")
    assert reg.check_token(secret) is not None
    sid, _ = reg.create_session("ci", 60)
    assert reg.check_session(sid) is not None
    assert reg.record_login_failure("192.0.2.1") == 1
    reg.close()
    # opening it again (another process, a restart) changes nothing
    again = Registry(path)
    assert again.check_token(secret) is not None and len(again.events("notes")) == 3


@pytest.mark.parametrize("version", range(SCHEMA_VERSION))
def test_every_intermediate_version_migrates(tmp_path: Path, version: int) -> None:
    path = tmp_path / "registry.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_SCHEMA)
    for steps in _MIGRATIONS[:version]:
        for statement in steps:
            db.execute(statement)
    db.execute(f"PRAGMA user_version = {version}")
    db.execute("INSERT INTO events (ts, plugin, kind) VALUES (?, NULL, 'web_restarted')", (time.time(),))
    db.close()
    reg = Registry(path)
    assert reg._conn().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [e.kind for e in reg.events()] == ["web_restarted"]


def test_a_token_is_shown_once_and_stored_only_as_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    reg = Registry(path)
    secret = reg.create_token("deploy-bot", "admin", who="local:root")
    assert secret.startswith("phk_") and len(secret) == 4 + 43
    assert secret.encode() not in path.read_bytes() + (path.parent / "registry.db-wal").read_bytes()
    stored = reg._conn().execute("SELECT hash FROM tokens").fetchone()[0]
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    [tok] = reg.tokens()
    assert (tok.name, tok.scope, tok.revoked, tok.active) == ("deploy-bot", "admin", None, True)
    [ev] = reg.events(kinds=["token_created"])
    assert (ev.who, ev.detail) == ("local:root", {"name": "deploy-bot", "scope": "admin"})
    assert secret not in json.dumps([e.detail for e in reg.events()])
    assert reg.create_token("other", "read") != secret


@pytest.mark.parametrize("name", ["", "a b", "-x", "x" * 65, "ünï", "a/b", "a\nb"])
def test_bad_token_names_are_refused(tmp_path: Path, name: str) -> None:
    reg = Registry(tmp_path / "registry.db")
    with pytest.raises(ValueError, match="bad token name"):
        reg.create_token(name, "read")
    assert reg.tokens() == []


def test_a_token_name_is_unique_until_revoked_and_scopes_are_checked(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.db")
    first = reg.create_token("ci", "read")
    with pytest.raises(ValueError, match="exists"):
        reg.create_token("ci", "admin")
    with pytest.raises(ValueError, match="bad token scope"):
        reg.create_token("ci2", "root")
    assert reg.check_token(first) is not None and reg.check_token(first).scope == "read"  # type: ignore[union-attr]
    assert reg.revoke_token("ci", who="local:root") is True
    second = reg.create_token("ci", "admin")  # rotation under the same name
    assert reg.check_token(first) is None
    assert reg.check_token(second).scope == "admin"  # type: ignore[union-attr]


def test_check_token_answers_alike_for_unknown_revoked_and_malformed(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.db")
    secret = reg.create_token("ci", "admin")
    revoked = reg.create_token("old", "admin")
    assert reg.revoke_token("old") is True
    assert reg.revoke_token("old") is False and reg.revoke_token("never") is False
    before = reg.tokens()
    for candidate in (revoked, "phk_" + "A" * 43, secret[:-1], secret + "x", "", "phk_", "x" * 100_000, None, 42,
                      b"phk_", "\udcff", secret.upper()):
        assert reg.check_token(candidate) is None, candidate
    assert reg.tokens() == before  # nothing was written: a revoked token's last_used stays as it was
    assert reg.check_token(secret) == TokenRecord("ci", "admin", before[0].created, reg.tokens()[0].last_used, None)


def test_last_used_is_refreshed_at_most_once_a_minute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path / "registry.db")
    secret = reg.create_token("ci", "read")
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    assert reg.check_token(secret).last_used == 1_000_000.0  # type: ignore[union-attr]
    clock[0] += 30
    assert reg.check_token(secret).last_used == 1_000_000.0  # type: ignore[union-attr]
    clock[0] += 31
    assert reg.check_token(secret).last_used == 1_000_061.0  # type: ignore[union-attr]
    assert reg.tokens()[0].last_used == 1_000_061.0


def test_sessions_live_until_expiry_logout_or_revocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "registry.db"
    reg = Registry(path)
    reg.create_token("alice", "admin")
    with pytest.raises(ValueError, match="no active token"):
        reg.create_session("nobody", 60)
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    sid, csrf = reg.create_session("alice", 3600)
    assert sid.encode() not in path.read_bytes() + (tmp_path / "registry.db-wal").read_bytes()
    got = reg.check_session(sid)
    assert got is not None and got[0].name == "alice" and got[1] == csrf
    assert reg.check_session(sid + "x") is None and reg.check_session(None) is None
    clock[0] += 3601
    assert reg.check_session(sid) is None  # expired

    sid2, csrf2 = reg.create_session("alice", 3600)
    assert csrf2 != csrf
    assert reg.end_session(sid2) is True and reg.end_session(sid2) is False
    assert reg.check_session(sid2) is None  # logged out

    sid3, _ = reg.create_session("alice", 3600)
    reg.revoke_token("alice")
    assert reg.check_session(sid3) is None  # its token was revoked
    reg.create_token("alice", "read")  # a new token under the old name does not revive the old session
    assert reg.check_session(sid3) is None


def test_failed_logins_are_counted_per_client_within_the_window(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path / "registry.db")
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    assert [reg.record_login_failure("192.0.2.1") for _ in range(5)] == [1, 2, 3, 4, 5]
    assert reg.login_failures("192.0.2.1") == 5 and reg.login_failures("192.0.2.2") == 0
    clock[0] += 61
    assert reg.login_failures("192.0.2.1") == 0
    assert reg.record_login_failure("192.0.2.1") == 1


def test_events_filter_by_plugin_and_kinds_newest_first(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.db")
    reg.record("a", "crashed", code=1)
    reg.record("b", "enabled", who="token:ci")
    reg.record("a", "enabled", who="local:root")
    assert [(e.plugin, e.kind) for e in reg.events()] == [("a", "enabled"), ("b", "enabled"), ("a", "crashed")]
    assert [e.who for e in reg.events("a", kinds=["enabled", "disabled"])] == ["local:root"]
    assert reg.events(kinds=[]) == []
    assert [e.detail for e in reg.events(kinds=("crashed",))] == [{"code": 1}]
    assert [e.plugin for e in reg.events(kinds="enabled")] == ["a", "b"]
    assert len(reg.events(limit=2)) == 2


def test_retention_drops_only_events_older_than_the_setting(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.db")
    now = time.time()
    for age_days in (200, 91, 89, 1):
        reg.record("a", "crashed", age=age_days)
    with reg._tx() as db:  # back-date them
        for age_days in (200, 91, 89, 1):
            db.execute("UPDATE events SET ts = ? WHERE json_extract(detail, '$.age') = ?",
                       (now - age_days * 86400, age_days))
    assert reg.prune_events(0, now=now) == 0  # 0 = keep forever
    assert len(reg.events()) == 4
    assert reg.prune_events(90, now=now) == 2
    assert [e.detail["age"] for e in reg.events()] == [1, 89]
    assert reg.prune_events(90, now=now) == 0


def test_the_supervisor_prunes_at_start_then_once_a_day(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from host.settings import HostSettings
    from host.supervisor.core import Supervisor

    reg = Registry(tmp_path / "registry.db")
    sup = SimpleNamespace(registry=reg, settings=HostSettings(home=tmp_path, audit_retention_days=1),
                          _audit_pruned=None)
    clock = [5000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])

    def aged_event() -> None:
        reg.record(None, "old")
        with reg._tx() as db:
            db.execute("UPDATE events SET ts = ts - 2 * 86400 WHERE kind = 'old'")

    aged_event()
    Supervisor.prune_audit(sup)  # type: ignore[arg-type]  # at start
    assert reg.events(kinds=["old"]) == []
    aged_event()
    clock[0] += 86399
    Supervisor.prune_audit(sup)  # type: ignore[arg-type]  # not yet a day later
    assert len(reg.events(kinds=["old"])) == 1
    clock[0] += 2
    Supervisor.prune_audit(sup)  # type: ignore[arg-type]
    assert reg.events(kinds=["old"]) == []

"""Tokens and the audit log from the command line, audit retention at `host serve`, and a registry that a kill -9
in the middle of a write leaves consistent."""

from __future__ import annotations

import json
import os
import pwd
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.layout import Layout
from host.registry import Registry
from manifests import load_manifest
from tests.integration.harness import FIXTURES, ServedHost, run_host, short_home, wait_for

# getpass.getuser() reads these before the password database; empty = unset
NO_LOGIN_ENV = {"SUDO_USER": "", "LOGNAME": "", "USER": "", "LNAME": "", "USERNAME": ""}
ME = f"local:{pwd.getpwuid(os.geteuid()).pw_name}"


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """A home with one registered plugin and nothing served: enable/disable change the registry only."""
    with short_home() as h:
        layout = Layout(h)
        layout.ensure()
        manifest = load_manifest(FIXTURES / "echo").model_copy(update={"name": "demo"})
        Registry(layout.registry).put("demo", "1.0", "1.0-abc", manifest.model_dump(mode="json"), enabled=True)
        yield h


def test_token_create_list_revoke(home: Path) -> None:
    made = run_host(home, "token", "create", "ci-bot", "--scope", "admin", env=NO_LOGIN_ENV, check=True)
    secret = made.stdout.splitlines()[-1]
    assert secret.startswith("phk_") and len(secret) == 47
    assert "cannot be shown again" in made.stderr and secret not in made.stderr
    reg = Registry(home / "registry.db")
    assert reg.check_token(secret) is not None

    listed = run_host(home, "token", "list", check=True).stdout
    assert "ci-bot" in listed and "admin" in listed and secret not in listed and "phk_" not in listed
    [row] = json.loads(run_host(home, "token", "list", "--json", check=True).stdout)
    assert row["name"] == "ci-bot" and row["scope"] == "admin" and row["revoked"] is None
    assert row["last_used"] is not None  # check_token above used it
    assert "phk_" not in json.dumps(row)

    again = run_host(home, "token", "create", "ci-bot", "--scope", "read")
    assert again.returncode == 2 and "exists" in again.stderr and "phk_" not in again.stdout

    run_host(home, "token", "revoke", "ci-bot", env=NO_LOGIN_ENV, check=True)
    assert reg.check_token(secret) is None
    assert reg.tokens()[0].revoked is not None
    gone = run_host(home, "token", "revoke", "ci-bot")
    assert gone.returncode == 2 and "no active token" in gone.stderr

    events = json.loads(run_host(home, "audit", "--json", "-n", "2", check=True).stdout)
    assert [(e["kind"], e["who"], e["detail"]) for e in events] == [
        ("token_revoked", ME, {"name": "ci-bot"}), ("token_created", ME, {"name": "ci-bot", "scope": "admin"})]


def test_audit_names_the_local_user_of_cli_changes(home: Path) -> None:
    run_host(home, "disable", "demo", env=NO_LOGIN_ENV, check=True)
    run_host(home, "enable", "demo", env={**NO_LOGIN_ENV, "SUDO_USER": "alice"}, check=True)
    run_host(home, "config", "demo", "--idle-timeout", "30", env=NO_LOGIN_ENV, check=True)
    events = json.loads(run_host(home, "audit", "--plugin", "demo", "--json", check=True).stdout)
    assert [(e["kind"], e["who"]) for e in events][:3] == [("setting_changed", ME), ("enabled", "local:alice"),
                                                            ("disabled", ME)]
    assert events[-1]["kind"] == "installed" and events[-1]["who"] is None  # written by the fixture, not the CLI
    assert all(e["plugin"] == "demo" for e in events)

    text = run_host(home, "audit", "-n", "3", check=True).stdout.splitlines()
    assert text[0].split() == ["TIME", "WHO", "PLUGIN", "KIND", "DETAIL"]
    assert len(text) == 4
    assert text[2].split()[1:4] == ["local:alice", "demo", "enabled"]
    assert text[3].split()[1:4] == [ME, "demo", "disabled"]


def test_audit_names_who_restarted_and_uninstalled(home: Path) -> None:
    restart = run_host(home, "restart", "demo", env=NO_LOGIN_ENV)  # nothing serves: asked for, then refused
    assert restart.returncode == 1 and "supervisor" in restart.stderr
    run_host(home, "uninstall", "demo", env={**NO_LOGIN_ENV, "SUDO_USER": "bob"}, check=True)
    events = json.loads(run_host(home, "audit", "--plugin", "demo", "-n", "3", "--json", check=True).stdout)
    assert [(e["kind"], e["who"]) for e in events] == [("uninstalled", "local:bob"), ("disabled", "local:bob"),
                                                        ("restart_requested", ME)]


def test_installs_by_the_cli_name_the_local_user(served: ServedHost) -> None:
    installs = Registry(served.home / "registry.db").events(kinds=["installed"])
    assert len(installs) >= 5 and {e.who for e in installs} == {ME}


def test_serve_prunes_audit_events_past_retention() -> None:
    with short_home() as h:
        layout = Layout(h)
        layout.ensure()
        reg = Registry(layout.registry)
        for kind in ("ancient", "recent"):
            reg.record(None, kind)
        db = sqlite3.connect(layout.registry)
        with db:
            db.execute("UPDATE events SET ts = ts - 40 * 86400 WHERE kind = 'ancient'")
        db.close()
        host = ServedHost(h, env={"HOST_AUDIT_RETENTION_DAYS": "30", "HOST_ADMIN_BIND": ""}).start()
        try:
            wait_for(lambda: not reg.events(kinds=["ancient"]), 10, what="the 40-day-old event to be pruned")
            assert reg.events(kinds=["recent"])
            assert "audit log: removed 1 events older than 30 days" in host.read_log()
        finally:
            host.stop()


WRITER = """
import sys
import time
from pathlib import Path
import host.registry
from host.registry import Registry

write = host.registry._write_settings
def slowly(db, name, values):  # hold each transaction open a while, so that the kill lands inside one
    for key, value in values.items():
        write(db, name, {key: value})
        time.sleep(0.002)
host.registry._write_settings = slowly
reg = Registry(Path(sys.argv[1]))
if reg.get("demo") is None:
    reg.put("demo", "1.0", "1.0-a", {}, enabled=True)
i = reg.plugin_settings("demo").get("a", 0)
if i and f"t{i}" not in {t.name for t in reg.tokens()}:  # the last run died between a pass's two transactions
    reg.create_token(f"t{i}", "read")
print("go", flush=True)
while True:  # each pass: three settings and one audit event, in ONE transaction
    i += 1
    reg.set_plugin_settings("demo", {"a": i, "b": i, "c": "x" * (i % 4000)})
    reg.create_token(f"t{i}", "read")
"""


def test_a_kill_9_mid_write_leaves_the_registry_consistent(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    for round_ in range(3):
        with subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, cwd=Path(__file__).resolve().parents[2]) as proc:
            try:
                assert proc.stdout is not None and proc.stdout.readline() == "go\n"
                time.sleep(0.3 + 0.17 * round_)  # dozens of transactions in, at a different point each round
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        # SQLite in WAL mode: the next opener rolls back whatever the dead writer had not committed
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        a, b, c = (json.loads(db.execute("SELECT value FROM plugin_settings WHERE key = ?", (k,)).fetchone()[0])
                   for k in ("a", "b", "c"))
        assert a == b and c == "x" * (a % 4000), (a, b)  # all three keys from the same transaction
        changes = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'settings_changed'").fetchone()[0]
        assert changes == a  # every committed change has its audit event, and no event lacks its change
        tokens = db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]
        assert tokens in (a - 1, a)  # killed between the two transactions of a pass, or not
        assert db.execute("SELECT COUNT(*) FROM events WHERE kind = 'token_created'").fetchone()[0] == tokens
        db.close()
    assert a > 30  # it was really writing when it died
    assert Registry(path).check_token("phk_nothing") is None  # and it opens normally

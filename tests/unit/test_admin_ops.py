"""The supervisor's admin socket handler (host.supervisor.admin.AdminOps) on a real registry, without processes:
who may do what, CSRF for sessions, the login limit, and that every refusal is a problem, never an exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from host.layout import Layout
from host.registry import Registry
from host.settings import HostSettings
from host.supervisor.admin import LOGIN_FAILURES, AdminOps


class FakeSupervisor:
    def __init__(self, home: Path) -> None:
        self.settings = HostSettings(home=home)
        self.layout = Layout(home)
        self.layout.ensure()
        self.registry = Registry(self.layout.registry)
        self.web_user = None

    def status(self) -> dict[str, Any]:
        return {"plugins": {}}


@pytest.fixture
def ops(tmp_path: Path) -> tuple[AdminOps, Registry, dict[str, str]]:
    sup = FakeSupervisor(tmp_path / "h")
    tokens = {"admin": sup.registry.create_token("ops", "admin"), "read": sup.registry.create_token("viewer", "read")}
    return AdminOps(sup), sup.registry, tokens  # type: ignore[arg-type]


def status(reply: dict[str, Any]) -> int | None:
    return reply["problem"]["status"] if "problem" in reply else None


def test_every_op_but_login_needs_a_valid_credential(ops: tuple[AdminOps, Registry, dict[str, str]]) -> None:
    admin, registry, tokens = ops
    for op in sorted(admin.ops):
        for credential in (None, "", "phk_" + "x" * 43, "not-a-session", 42):
            assert status(admin.handle({"op": op, "credential": credential, "name": "notes"})) == 401, (op, credential)
    registry.revoke_token("ops")
    assert status(admin.handle({"op": "whoami", "credential": tokens["admin"]})) == 401


def test_a_read_token_reads_and_changes_nothing(ops: tuple[AdminOps, Registry, dict[str, str]]) -> None:
    admin, _, tokens = ops
    assert admin.handle({"op": "whoami", "credential": tokens["read"]}) == {"token": "viewer", "scope": "read"}
    assert admin.handle({"op": "plugins", "credential": tokens["read"]}) == {"plugins": []}
    for op in ("enable", "disable", "restart", "uninstall", "put_settings", "install"):
        reply = admin.handle({"op": op, "credential": tokens["read"], "name": "notes", "values": {}})
        assert status(reply) == 403 and "scope 'read'" in reply["problem"]["detail"], op
    # an admin token gets past the scope check (and on to "no such plugin")
    assert status(admin.handle({"op": "enable", "credential": tokens["admin"], "name": "notes"})) == 404


def test_a_change_by_session_needs_the_sessions_csrf_token(ops: tuple[AdminOps, Registry, dict[str, str]]) -> None:
    admin, _, tokens = ops
    login = admin.handle({"op": "login", "credential": tokens["admin"], "client": "10.0.0.1"})
    sid, csrf = login["session"], login["csrf"]
    assert admin.handle({"op": "whoami", "credential": sid}) == {"token": "ops", "scope": "admin"}
    for forged in (None, "", "x" * len(csrf)):
        reply = admin.handle({"op": "disable", "credential": sid, "csrf": forged, "name": "notes"})
        assert status(reply) == 403 and "CSRF" in reply["problem"]["detail"]
    assert status(admin.handle({"op": "disable", "credential": sid, "csrf": csrf, "name": "notes"})) == 404
    assert admin.handle({"op": "logout", "credential": sid})["ended"] is True
    assert status(admin.handle({"op": "whoami", "credential": sid})) == 401


def test_failed_logins_are_limited_per_client_and_audited(ops: tuple[AdminOps, Registry, dict[str, str]]) -> None:
    admin, registry, tokens = ops
    for _ in range(LOGIN_FAILURES):
        assert status(admin.handle({"op": "login", "credential": "phk_wrong", "client": "10.0.0.9"})) == 401
    reply = admin.handle({"op": "login", "credential": tokens["admin"], "client": "10.0.0.9"})
    assert status(reply) == 429 and reply["problem"]["retry_after"] == 60  # even with the right token
    assert "session" in admin.handle({"op": "login", "credential": tokens["admin"], "client": "10.0.0.10"})
    failed = registry.events(kinds=["login_failed"])
    assert len(failed) == LOGIN_FAILURES and failed[0].detail["client"] == "10.0.0.9"
    assert "phk_wrong" not in str([e.detail for e in registry.events()])


def test_unknown_ops_and_bad_arguments_are_problems(ops: tuple[AdminOps, Registry, dict[str, str]]) -> None:
    admin, _, tokens = ops
    assert status(admin.handle({"op": "shutdown", "credential": tokens["admin"]})) == 404
    assert status(admin.handle({"op": "logs", "credential": tokens["admin"]})) == 422  # no name
    assert status(admin.handle({"op": "audit", "credential": tokens["admin"], "n": "many"})) == 422
    assert status(admin.handle({"op": "install", "credential": tokens["admin"], "grant": [], "upload": "x"})) == 422


def test_cant_read_another_file_through_a_planted_access_log_link(ops: tuple[AdminOps, Registry, dict[str, str]],
                                                                   tmp_path: Path) -> None:
    """The web user owns run/access_log; root reads it for `GET plugins/<name>/access`. A link (or FIFO) planted
    there by a compromised web tier gives nothing, not even lines that would parse as entries."""
    import os

    from host.access_log import log_path

    admin, registry, tokens = ops
    registry.put("notes", "1.0.0", "1.0.0-abc", {"name": "notes"}, enabled=True, uid_index=1)
    secret = tmp_path / "root-only.jsonl"
    secret.write_text('{"time": "t", "path": "/the-secret", "status": 200}\n')
    os.chmod(secret, 0o600)
    current = log_path(admin.layout, "notes")
    current.parent.mkdir(parents=True, exist_ok=True)
    current.symlink_to(secret)
    os.mkfifo(current.with_name(current.name + ".1"))  # a FIFO would block a reader for ever
    reply = admin.handle({"op": "access", "credential": tokens["read"], "name": "notes"})
    assert reply == {"plugin": "notes", "lines": [], "entries": []}
    current.unlink()
    current.write_text('{"time": "t", "path": "/real", "status": 200}\n')
    assert [e["path"] for e in admin.handle({"op": "access", "credential": tokens["read"],
                                             "name": "notes"})["entries"]] == ["/real"]


def test_big_answers_are_cut_to_fit_the_socket(ops: tuple[AdminOps, Registry, dict[str, str]]) -> None:
    """host.control refuses an answer over 1 MiB: the newest events and access entries that fit come back."""
    import json

    from host.access_log import log_path
    from host.control import MAX_MESSAGE

    admin, registry, tokens = ops
    registry.put("notes", "1.0.0", "1.0.0-abc", {"name": "notes"}, enabled=True, uid_index=1)
    for i in range(300):
        registry.record("notes", "crashed", stderr=["x" * 4000], n=i)
    reply = admin.handle({"op": "audit", "credential": tokens["read"], "n": 1000})
    assert reply["truncated"] is True and 50 < len(reply["events"]) < 300
    assert reply["events"][0]["detail"]["n"] == 299  # the newest first
    assert len(json.dumps(reply)) < MAX_MESSAGE
    current = log_path(admin.layout, "notes")
    current.parent.mkdir(parents=True, exist_ok=True)
    current.write_text("".join(json.dumps({"path": f"/{i}/" + "p" * 3000, "status": 200}) + "\n" for i in range(1000)))
    reply = admin.handle({"op": "access", "credential": tokens["read"], "name": "notes", "n": 1000})
    assert reply["truncated"] is True and reply["entries"][-1]["path"].startswith("/999/")
    assert len(reply["lines"]) == len(reply["entries"]) < 1000
    assert len(json.dumps(reply)) < MAX_MESSAGE

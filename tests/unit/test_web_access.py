"""What the unprivileged web tier is given: its user, the routing snapshot, the public status view, its
environment, and answers that never carry a traceback."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from host import routes, webuser
from host.app import create_app
from host.directory import Directory
from host.errors import HostError
from host.registry import PluginRecord
from host.settings import HostSettings
from host.supervisor.web import public_view, web_env
from host.webuser import WebUser

MiB = 1024 * 1024


def record(name: str, enabled: bool = True, **requests: Any) -> PluginRecord:
    manifest = {"name": name, "description": f"{name} plugin", "permissions": {"requests": requests,
                                                                               "filesystem": {"read": ["/srv"]}}}
    return PluginRecord(name, "1.2.3", "inst", manifest, enabled, 3, 0.0, 0.0)


def test_routing_snapshot_holds_only_what_routing_needs() -> None:
    snap = json.loads(routes.snapshot([record("a", timeout_seconds=5, max_body_mb=2, max_websockets=3,
                                                      websocket_idle_seconds=7), record("b", False)]))
    assert snap == {"format": 1, "plugins": {
        "a": {"version": "1.2.3", "description": "a plugin", "enabled": True, "timeout": 5.0, "max_body": 2 * MiB,
              "max_websockets": 3, "websocket_idle": 7.0, "users_read": False, "nav": []},
        "b": {"version": "1.2.3", "description": "b plugin", "enabled": False, "timeout": 30.0, "max_body": 16 * MiB,
              "max_websockets": 16, "websocket_idle": 300.0, "users_read": False, "nav": []},
    }}


@pytest.mark.skipif(os.geteuid() != 0, reason="sharing with the web user's group needs root")
def test_snapshot_is_readable_by_the_web_group_only(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    routes.publish(path, routes.snapshot([record("a")]), WebUser(699999, 699998))
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 699998, 0o640)
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed into place


def test_snapshot_of_a_host_without_a_web_user_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    routes.publish(path, routes.snapshot([]), None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_directory_reads_the_snapshot_again_only_once_it_was_replaced(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    directory = Directory(path)
    assert directory.all() == []  # not published yet: nothing is routable
    routes.publish(path, routes.snapshot([record("a", timeout_seconds=7)]), None)
    entry = directory.get("a")
    assert entry is not None and entry.limits.timeout == 7.0 and entry.enabled
    table = directory._table()
    assert directory._table() is table  # unchanged file: served from the cache (one stat)
    routes.publish(path, routes.snapshot([record("a", False), record("b")]), None)
    assert [e.name for e in directory.all()] == ["a", "b"]
    assert directory.get("a").enabled is False  # type: ignore[union-attr]


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webuser.os, "geteuid", lambda: 0)


def test_each_home_gets_a_web_uid_of_its_own_from_the_machine_wide_file(
        as_root: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_such_user(name: str) -> Any:
        raise KeyError(name)

    monkeypatch.setattr(webuser.pwd, "getpwnam", no_such_user)
    uid_file = tmp_path / "lib" / "uids.json"
    homes = [tmp_path / "a", tmp_path / "b"]
    for home in homes:
        home.mkdir()
    a, b = (webuser.web_user(HostSettings(home=h, uid_file=uid_file, uid_base=900000)) for h in homes)
    assert a is not None and b is not None
    assert a.uid == a.gid and b.uid == b.gid and a.uid != b.uid and min(a.uid, b.uid) > 900000
    assert webuser.web_user(HostSettings(home=homes[0], uid_file=uid_file, uid_base=900000)) == a  # kept
    owners = json.loads(uid_file.read_text())["owners"]
    assert owners[str(a.uid)] == {"home": str(homes[0]), "plugin": "@web"}


def test_web_user_can_be_given(as_root: None) -> None:
    assert webuser.web_user(HostSettings(web_user="1234")) == WebUser(1234, 1234)
    assert webuser.web_user(HostSettings(web_user="1234:1235")) == WebUser(1234, 1235)


@pytest.mark.parametrize(("spec", "message"), [
    ("root", "never runs as root"),
    ("0", "never runs as root"),
    ("1234:0", "never runs as root"),
    ("700001", "inside the plugins' uid range"),
    ("no-such-user-here", "no such user"),
])
def test_web_user_refuses_root_plugin_uids_and_unknown_names(as_root: None, spec: str, message: str) -> None:
    with pytest.raises(HostError, match=message):
        webuser.web_user(HostSettings(web_user=spec, uid_base=700000))


def test_web_user_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="web_user"):
        HostSettings(web_user="x; rm -rf /")


def test_public_view_has_no_pid_reason_or_stderr() -> None:
    snapshot = {"name": "a", "state": "backoff", "pid": 42, "asleep": False, "restarts": 3,
                "reason": "exited with code 1: Traceback ... secret", "retry_in": 1.5,
                "last_exit": {"returncode": 1, "reason": "x", "stderr": ["secret"]}, "install_id": "i",
                "sandbox": {"backend": "bwrap", "level": "full", "missing": []}}
    assert public_view(snapshot) == {"state": "backoff", "retry_in": 1.5, "sandbox": "full"}


def test_web_tier_environment_carries_no_operator_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "https://user:token@mirror/simple")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = web_env(HostSettings(home=Path("/srv/h"), pip_args="--index-url https://user:token@mirror/simple"))
    assert "token" not in json.dumps(env) and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["HOST_HOME"] == "/srv/h" and env["LANG"] == "C.UTF-8" and "HOST_PIP_ARGS" not in env


def test_an_unhandled_error_is_a_problem_without_a_traceback(tmp_path: Path) -> None:
    app = create_app(HostSettings(home=tmp_path))

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("internal detail /etc/secret")

    r = app.test_client().get("/boom")
    assert r.status_code == 500 and r.mimetype == "application/problem+json"
    body = r.get_data(as_text=True)
    assert "internal detail" not in body and "Traceback" not in body and "RuntimeError" not in body
    assert r.get_json()["title"] == "Internal error"


def test_healthz_is_public_shape_only(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    routes.publish(tmp_path / "run" / "routes.json", routes.snapshot([record("a")]), None)
    r = create_app(HostSettings(home=tmp_path)).test_client().get("/healthz")
    assert r.status_code == 503  # no supervisor answers on the web socket
    body = r.get_json()
    assert body["supervisor"] == "unreachable"
    assert body["plugins"] == {"a": {"version": "1.2.3", "enabled": True, "state": "unknown", "sandbox": None}}

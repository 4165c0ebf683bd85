"""The admin app without a supervisor: its routes match its OpenAPI document both ways, the admin origin check,
problem details, and what reaches the supervisor (a fake backend records the calls)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from host.admin import api, openapi
from host.admin.app import admin_origins, create_admin_app
from host.errors import AdminError
from host.layout import Layout
from host.settings import HostSettings

ADMIN = "127.0.0.1:8001"


class FakeBackend:
    """Answers like the supervisor's admin socket: 401 without a token, else records the call."""

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "run" / "admin.sock"
        self.layout = Layout(tmp)
        self.calls: list[tuple[str, str | None, dict[str, Any]]] = []

    def call(self, op: str, credential: str | None, *, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        self.calls.append((op, credential, args))
        if credential != "phk_good":
            raise AdminError(401, "Unauthorized", "unknown or revoked token")
        if op == "whoami":
            return {"token": "t", "scope": "admin"}
        return {"plugins": []}


@pytest.fixture
def app(tmp_path: Path) -> tuple[Flask, FakeBackend]:
    backend = FakeBackend(tmp_path)
    settings = HostSettings(home=tmp_path, admin_bind=ADMIN)
    return create_admin_app(settings, Layout(tmp_path), backend), backend  # type: ignore[arg-type]


def test_every_registered_api_route_is_documented_and_every_documented_one_is_registered(
        app: tuple[Flask, FakeBackend]) -> None:
    flask_app, _ = app
    registered = openapi.flask_paths(((r.rule, r.methods or ()) for r in flask_app.url_map.iter_rules()), api.PREFIX)
    doc = openapi.document(api.ROUTES, api.PREFIX)
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert registered == documented
    assert ("POST", "/plugins/{name}/enable") in documented  # the comparison is not vacuous
    assert doc["openapi"] == "3.1.0"


def test_the_document_is_served_and_its_references_resolve(app: tuple[Flask, FakeBackend]) -> None:
    flask_app, _ = app
    doc = flask_app.test_client().get(f"{api.PREFIX}/openapi.json", headers={"Host": ADMIN}).get_json()
    text = str(doc)
    for ref in {part.split("'")[0] for part in text.split("'$ref': '")[1:]}:
        _, _, kind, name = ref.split("/")
        assert name in doc["components"][kind], ref


def test_a_request_for_another_host_is_misdirected(app: tuple[Flask, FakeBackend]) -> None:
    flask_app, backend = app
    r = flask_app.test_client().get(f"{api.PREFIX}/plugins", headers={"Host": "notes.localhost:8001",
                                                                       "Authorization": "Bearer phk_good"})
    assert r.status_code == 421
    assert r.mimetype == "application/problem+json"
    assert backend.calls == []  # refused before the supervisor hears of it


def test_a_cross_origin_request_is_forbidden(app: tuple[Flask, FakeBackend]) -> None:
    flask_app, backend = app
    r = flask_app.test_client().post(f"{api.PREFIX}/plugins/notes/disable",
                                     headers={"Host": ADMIN, "Origin": "http://127.0.0.1:8000",
                                              "Authorization": "Bearer phk_good"})
    assert r.status_code == 403
    assert backend.calls == []


def test_401_says_bearer_and_is_a_problem(app: tuple[Flask, FakeBackend]) -> None:
    flask_app, backend = app
    r = flask_app.test_client().get(f"{api.PREFIX}/plugins", headers={"Host": ADMIN})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.get_json()["title"] == "Unauthorized"
    assert backend.calls == [("plugins", None, {})]


def test_bad_inputs_are_422_before_the_supervisor(app: tuple[Flask, FakeBackend]) -> None:
    flask_app, backend = app
    client = flask_app.test_client()
    auth = {"Host": ADMIN, "Authorization": "Bearer phk_good"}
    assert client.get(f"{api.PREFIX}/audit?n=0", headers=auth).status_code == 422
    assert client.get(f"{api.PREFIX}/audit?n=abc", headers=auth).status_code == 422
    assert client.get(f"{api.PREFIX}/audit?plugin=../x", headers=auth).status_code == 422
    assert client.put(f"{api.PREFIX}/plugins/notes/settings", data="[1]", headers=auth,
                      content_type="application/json").status_code == 422
    assert client.get(f"{api.PREFIX}/plugins/NOT_A_NAME", headers=auth).status_code == 404
    assert backend.calls == []


def test_an_upload_without_a_token_writes_nothing(app: tuple[Flask, FakeBackend], tmp_path: Path) -> None:
    flask_app, backend = app
    (tmp_path / "run" / "_uploads").mkdir(parents=True)
    r = flask_app.test_client().post(f"{api.PREFIX}/plugins?grant={{}}&filename=p.zip", data=b"PK\x03\x04junk",
                                     headers={"Host": ADMIN}, content_type="application/octet-stream")
    assert r.status_code == 401
    assert [c[0] for c in backend.calls] == ["whoami"]
    assert list((tmp_path / "run" / "_uploads").iterdir()) == []


@pytest.mark.parametrize(("bind", "origin", "hosts"), [
    ("127.0.0.1:8001", "", {"127.0.0.1:8001", "localhost:8001", "[::1]:8001"}),
    ("0.0.0.0:9000", "", {"127.0.0.1:9000", "localhost:9000", "[::1]:9000"}),
    ("10.1.2.3:8001", "https://admin.example.com", {"10.1.2.3:8001", "admin.example.com", "admin.example.com:443"}),
])
def test_admin_origins(bind: str, origin: str, hosts: set[str]) -> None:
    got_hosts, got_origins = admin_origins(HostSettings(admin_bind=bind, admin_origin=origin))
    assert got_hosts == hosts
    if origin:
        assert origin in got_origins
    assert f"http://{bind}" in got_origins or bind.startswith("0.0.0.0")

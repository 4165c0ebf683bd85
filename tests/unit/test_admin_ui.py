"""The admin UI's sessions, CSRF and origin checks, login rate limit, settings form and install consent, against a
fake supervisor (no sockets): what the browser tests cannot reach cheaply or exactly."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from host.admin.forms import UploadDir, form_values
from host.admin.guard import LoginLimiter, cookie_value, cross_origin, parse_cookie
from host.admin.ui import CSP, register
from host.errors import AdminError
from host.headers import HOST_COOKIE
from host.layout import Layout

ADMIN = "phk_" + "a" * 43
READER = "phk_" + "r" * 43
ORIGIN = "http://localhost"  # Flask's test client's own origin
GRANT = {"network": {"enabled": False}}
GRANTS = [{"permission": "network", "value": "none", "enforced_by": "network namespace (no interfaces)"}]


class FakeHost:
    """The supervisor's admin ops as host.supervisor.admin answers them; every call is kept in ``calls``."""

    layout = Layout(Path("/nonexistent-home"))  # only for its paths; tests point ADMIN_UPLOADS elsewhere

    def __init__(self) -> None:
        self.tokens = {ADMIN: ("ops", "admin"), READER: ("viewer", "read")}
        self.sessions: dict[str, tuple[str, str, str]] = {}  # sid -> (token name, scope, csrf)
        self.enabled = {"notes": True}
        self.settings: dict[str, Any] = {"title": "Notes", "size": 10, "api_key": "s3cret-value"}
        self.calls: list[tuple[str, str | None, dict[str, Any]]] = []
        self.installed: list[dict[str, Any]] = []

    def call(self, op: str, credential: str | None, **args: Any) -> dict[str, Any]:
        self.calls.append((op, credential, args))
        if op == "login":
            if credential not in self.tokens:
                raise AdminError(401, "Unauthorized", "unknown or revoked token")
            name, scope = self.tokens[credential]
            sid, csrf = f"session{len(self.sessions):09d}", f"csrftoken{len(self.sessions):07d}"
            self.sessions[sid] = (name, scope, csrf)
            return {"session": sid, "csrf": csrf, "token": name, "scope": scope, "ttl": 3600.0}
        if credential not in self.sessions:
            raise AdminError(401, "Unauthorized", "the session has expired or ended; log in again")
        name, scope, csrf = self.sessions[credential]
        if op in ("enable", "disable", "restart", "put_settings", "install", "uninstall", "preview"):
            if scope != "admin":
                raise AdminError(403, "Forbidden", "needs an 'admin' token")
            if args.get("csrf") != csrf:
                raise AdminError(403, "Forbidden", "missing or wrong CSRF token")
        if op == "whoami":
            return {"token": name, "scope": scope}
        if op == "logout":
            del self.sessions[credential]
            return {"ok": True, "ended": True}
        if op == "plugins":
            return {"plugins": [self.plugin("notes")]}
        if op == "plugin":
            if args["name"] not in self.enabled:
                raise AdminError(404, "Not Found", f"{args['name']}: is not installed (see `host list`)")
            return {"plugin": self.plugin(args["name"])}
        if op in ("enable", "disable"):
            self.enabled[args["name"]] = op == "enable"
            return {"changed": True, "plugin": self.plugin(args["name"])}
        if op == "restart":
            return {"plugin": self.plugin(args["name"])}
        if op == "uninstall":
            del self.enabled[args["name"]]
            return {"uninstalled": args["name"], "kept": None}
        if op == "settings":
            row = {"secret": False, "required": False, "choices": None, "description": "", "default": None}
            return {"plugin": "notes", "settings": [
                {**row, "key": "title", "type": "string", "set": True, "value": self.settings["title"],
                 "description": "Shown on top"},
                {**row, "key": "size", "type": "integer", "set": True, "value": self.settings["size"], "default": 5},
                {**row, "key": "api_key", "type": "string", "secret": True, "set": True, "value": "••••"},
                {**row, "key": "debug", "type": "boolean", "set": False, "value": False, "default": False},
            ]}
        if op == "put_settings":
            self.settings.update(args["values"])
            return {}
        if op == "logs":
            return {"lines": ["<script>alert(1)</script> started", "\x1b[2Kevil \u202eesrever"]}
        if op == "audit":
            return {"events": [
                {"id": 2, "ts": 1.0e9 + 5, "plugin": "notes", "kind": "settings_changed", "who": "token:ops",
                 "detail": {"set": ["title"], "unset": [], "reason": None, "value": "x" * 300}},
                {"id": 1, "ts": 1.0e9, "plugin": "notes", "kind": "crashed", "who": None,
                 "detail": {"returncode": 1}}]}
        if op == "preview":
            return {"name": "extra", "version": "1.0", "permissions": GRANT, "grants": GRANTS, "installed": None,
                    "risk": {"score": 1, "reasons": ["+0 nothing beyond its own data dir"]}}
        if op == "install":
            self.installed.append({k: v for k, v in args.items() if k != "csrf"})
            self.enabled["extra"] = True
            return {"plugin": self.plugin("extra"), "changed": True}
        raise AdminError(404, "Not Found", f"no admin op {op!r}")

    def plugin(self, name: str) -> dict[str, Any]:
        return {"name": name, "version": "1.0", "description": "", "enabled": self.enabled[name],
                "state": "running" if self.enabled[name] else "disabled", "pid": 42, "restarts": 0,
                "last_error": None, "risk": {"score": 2, "reasons": []}, "permissions": GRANTS,
                "sandbox": {"level": "strict", "backend": "bwrap", "missing": []},
                "urls": ["http://notes.localhost:8000/"],
                "nav": [{"title": "My <b>notes</b>", "path": "/mine?x=1&y=2"}]}

    def ops(self) -> list[str]:
        return [op for op, _, _ in self.calls]


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def client(host: FakeHost, uploads: Path) -> Iterator[FlaskClient]:
    app = Flask(__name__)
    app.config["ADMIN_UPLOADS"] = str(uploads)
    register(app, host, limiter=LoginLimiter(limit=3, window=60, clock=lambda: 100.0))
    with app.test_client() as c:
        yield c


def login(client: FlaskClient, token: str = ADMIN) -> str:
    r = client.post("/admin/login", data={"token": token}, headers={"Origin": ORIGIN})
    assert r.status_code == 302, r.text
    cookie = client.get_cookie(HOST_COOKIE, path="/admin/")
    assert cookie is not None
    return str(cookie.value)


def csrf_of(client: FlaskClient, path: str = "/admin/") -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert m
    return m.group(1)


def test_pages_need_a_session(client: FlaskClient, host: FakeHost) -> None:
    r = client.get("/admin/audit")
    assert r.status_code == 302 and r.headers["Location"] == "/admin/login?next=/admin/audit"
    r = client.post("/admin/plugins/notes/disable", data={"csrf": "x"})
    assert r.status_code == 403 and "not logged in" in r.text
    client.set_cookie(HOST_COOKIE, "session000000009.csrftoken0000009", path="/admin/")  # well formed, unknown
    assert client.get("/admin/").status_code == 302
    assert host.enabled["notes"]


def test_login_sets_a_strict_host_only_cookie_and_logout_ends_the_session(client: FlaskClient,
                                                                           host: FakeHost) -> None:
    r = client.post("/admin/login", data={"token": ADMIN}, headers={"Origin": ORIGIN})
    assert r.status_code == 302 and r.headers["Location"] == "/admin/"
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(f"{HOST_COOKIE}=session000000000.csrftoken0000000;")
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= attrs and "domain" not in attrs
    assert "Path=/admin/" in cookie and "SameSite=Strict" in cookie and "Max-Age=3600" in cookie
    page = client.get("/admin/")
    assert page.status_code == 200 and 'id="who">ops<' in page.text
    assert 'name="csrf" value="csrftoken0000000"' in page.text
    r = client.post("/admin/logout", data={"csrf": csrf_of(client)}, headers={"Origin": ORIGIN})
    assert r.status_code == 302 and r.headers["Location"] == "/admin/login?done=logout"
    assert host.sessions == {}
    assert client.get_cookie(HOST_COOKIE, path="/admin/") is None
    assert client.get("/admin/").status_code == 302


def test_failed_logins_are_rate_limited_per_client(client: FlaskClient, host: FakeHost) -> None:
    for _ in range(3):
        r = client.post("/admin/login", data={"token": "phk_wrong"}, headers={"Origin": ORIGIN})
        assert r.status_code == 401 and "not valid" in r.text
    r = client.post("/admin/login", data={"token": ADMIN}, headers={"Origin": ORIGIN})
    assert r.status_code == 429 and r.headers["Retry-After"] == "60"
    assert host.ops().count("login") == 3  # the fourth never reached the supervisor
    other = client.post("/admin/login", data={"token": ADMIN}, headers={"Origin": ORIGIN},
                        environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert other.status_code == 302


def test_failed_logins_reach_the_supervisor_with_the_client_address(client: FlaskClient, host: FakeHost) -> None:
    client.post("/admin/login", data={"token": "phk_wrong"}, headers={"Origin": ORIGIN})
    assert host.calls[-1] == ("login", "phk_wrong", {"client": "127.0.0.1"})  # which audits it


def test_behind_a_front_proxy_the_limit_is_per_forwarded_client(host: FakeHost, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST_FORWARDED_ALLOW_IPS", "127.0.0.1")
    app = Flask(__name__)
    register(app, host)
    with app.test_client() as c:
        for client in ("203.0.113.9", "198.51.100.7"):
            c.post("/admin/login", data={"token": "phk_wrong"}, headers={"Origin": ORIGIN, "X-Forwarded-For": client})
            assert host.calls[-1] == ("login", "phk_wrong", {"client": client})


def test_the_supervisors_own_login_limit_is_shown(client: FlaskClient, host: FakeHost) -> None:
    def limited(op: str, credential: str | None, **args: Any) -> dict[str, Any]:
        raise AdminError(429, "Too Many Requests", "too many failed logins", retry_after=60)

    host.call = limited  # type: ignore[method-assign]
    r = client.post("/admin/login", data={"token": ADMIN}, headers={"Origin": ORIGIN})
    assert r.status_code == 401 and "Too many failed logins from 127.0.0.1" in r.text


def test_limiter_window_slides() -> None:
    now = [0.0]
    limiter = LoginLimiter(limit=2, window=10, clock=lambda: now[0])
    limiter.failed("a")
    now[0] = 5
    limiter.failed("a")
    assert limiter.retry_after("a") == 5 and limiter.retry_after("b") == 0
    now[0] = 10.5
    assert limiter.retry_after("a") == 0


def test_cant_login_from_another_origin(client: FlaskClient, host: FakeHost) -> None:
    r = client.post("/admin/login", data={"token": ADMIN}, headers={"Origin": "http://127.0.0.1:8000"})
    assert r.status_code == 403 and "another origin" in r.text
    assert "login" not in host.ops()


def test_cant_change_anything_without_the_csrf_token(client: FlaskClient, host: FakeHost) -> None:
    login(client)
    for data in ({}, {"csrf": "csrf-wrong"}):
        r = client.post("/admin/plugins/notes/disable", data=data, headers={"Origin": ORIGIN})
        assert r.status_code == 403 and "CSRF token" in r.text
    assert host.enabled["notes"] and "disable" not in host.ops()


@pytest.mark.parametrize("headers", [
    {"Origin": "http://127.0.0.1:8000"},  # a plugin's page by path: same site, another origin
    {"Origin": "null"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Referer": "http://notes.localhost:8000/x"},
])
def test_cant_change_anything_from_another_origin_even_with_the_token(client: FlaskClient, host: FakeHost,
                                                                      headers: dict[str, str]) -> None:
    login(client)
    r = client.post("/admin/plugins/notes/disable", data={"csrf": csrf_of(client)}, headers=headers)
    assert r.status_code == 403 and "another" in r.text
    assert host.enabled["notes"]


def test_disable_and_enable_with_the_token_from_the_page(client: FlaskClient, host: FakeHost) -> None:
    sid = login(client).split(".")[0]
    token = csrf_of(client)
    r = client.post("/admin/plugins/notes/disable", data={"csrf": token},
                    headers={"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 302 and not host.enabled["notes"]
    page = client.get(r.headers["Location"])
    assert "notes: disabled: its pages answer 404 now" in page.text
    assert 'data-state="disabled"' in page.text and 'data-action="enable"' in page.text
    r = client.post("/admin/plugins/notes/enable", data={"csrf": token, "back": "plugin"}, headers={"Origin": ORIGIN})
    assert r.headers["Location"] == "/admin/plugins/notes?done=enable&plugin=notes" and host.enabled["notes"]
    # as the session, with its CSRF token: the supervisor checks both and audits the token's name
    assert host.calls[-1] == ("enable", sid, {"name": "notes", "csrf": token})


def test_restart_and_uninstall(client: FlaskClient, host: FakeHost) -> None:
    login(client)
    token = csrf_of(client)
    r = client.post("/admin/plugins/notes/restart", data={"csrf": token}, headers={"Origin": ORIGIN})
    assert r.headers["Location"] == "/admin/?done=restart&plugin=notes" and host.ops()[-1] == "restart"
    page = client.get("/admin/plugins/notes").text
    assert 'data-confirm="Uninstall notes? Its code and virtualenv are removed."' in page
    r = client.post("/admin/plugins/notes/uninstall", data={"csrf": token}, headers={"Origin": ORIGIN})
    assert r.headers["Location"] == "/admin/?done=uninstall&plugin=notes" and "notes" not in host.enabled
    assert client.post("/admin/plugins/notes/explode", data={"csrf": token},
                       headers={"Origin": ORIGIN}).status_code == 404


def test_a_read_token_sees_but_cannot_change(client: FlaskClient, host: FakeHost) -> None:
    login(client, READER)
    page = client.get("/admin/")
    assert "notes" in page.text and 'data-action="disable"' not in page.text and "/admin/install" not in page.text
    r = client.post("/admin/plugins/notes/disable", data={"csrf": csrf_of(client)}, headers={"Origin": ORIGIN})
    assert r.status_code == 403 and "read scope" in r.text and host.enabled["notes"]


def test_pages_carry_a_strict_csp_and_are_not_cached(client: FlaskClient) -> None:
    for path in ("/admin/login", "/admin/static/admin.css", "/admin/static/admin.js"):
        with client.get(path) as r:
            assert r.status_code == 200 and r.headers["Content-Security-Policy"] == CSP
            assert r.headers["X-Frame-Options"] == "DENY"
    login(client)
    r = client.get("/admin/plugins/notes")
    assert r.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in CSP and "script-src 'self';" in CSP and "unsafe" not in CSP
    assert "<script>alert(1)</script>" not in r.text and "&lt;script&gt;alert(1)" in r.text  # logs are escaped
    assert "?[2Kevil ?esrever" in r.text  # no escape sequence, no bidirectional override from a plugin
    assert re.search(r"<(script|style)>", r.text) is None  # nothing inline that the CSP would block
    assert re.search(r" (style|on[a-z]+)=", r.text) is None


def test_plugin_page_shows_grants_with_layers_history_and_never_a_secret(client: FlaskClient) -> None:
    login(client)
    page = client.get("/admin/plugins/notes").text
    assert "network namespace (no interfaces)" in page  # the layer enforcing the grant
    assert "crashed" in page and "exit 1" in page  # restart history
    assert "s3cret" not in page and "••••" not in page  # the secret: write-only
    assert 'placeholder="set · leave empty to keep"' in page
    missing = client.get("/admin/plugins/nope")
    assert missing.status_code == 404 and "is not installed" in missing.text


def test_plugin_page_shows_its_menu_entries_as_escaped_links(client: FlaskClient) -> None:
    login(client)
    page = client.get("/admin/plugins/notes").text
    assert ('<a href="http://notes.localhost:8000/mine?x=1&amp;y=2" rel="noopener noreferrer" target="_blank">'
            "My &lt;b&gt;notes&lt;/b&gt;</a>") in page


def test_settings_form_sends_typed_values_and_keeps_an_empty_secret(client: FlaskClient, host: FakeHost) -> None:
    login(client)
    token = csrf_of(client)
    r = client.post("/admin/plugins/notes/settings", headers={"Origin": ORIGIN},
                    data={"csrf": token, "title": "Mine", "size": "12", "api_key": "", "debug.present": "1",
                          "debug": "true"})
    assert r.status_code == 302
    assert host.calls[-1][2]["values"] == {"title": "Mine", "size": 12, "debug": True}
    assert host.settings["api_key"] == "s3cret-value"
    r = client.post("/admin/plugins/notes/settings", headers={"Origin": ORIGIN},
                    data={"csrf": token, "size": "twelve"})
    assert r.status_code == 422 and "size: expected an integer" in r.text and 'value="twelve"' in r.text


def test_form_values() -> None:
    rows: list[dict[str, Any]] = [{"key": "a", "type": "number"}, {"key": "b", "type": "string"},
                                  {"key": "c", "type": "boolean"}, {"key": "d", "type": "integer", "secret": True}]
    assert form_values(rows, {"a": "0.5", "b": "", "c.present": "1", "d": ""}) == {"a": 0.5, "b": None, "c": False}
    assert form_values(rows, {"d": "7"}) == {"d": 7}


def consent_form(client: FlaskClient, name: str = "extra.zip") -> tuple[str, dict[str, str], str]:
    token = csrf_of(client)
    r = client.post("/admin/install", headers={"Origin": ORIGIN}, content_type="multipart/form-data",
                    data={"csrf": token, "archive": (io.BytesIO(b"PK..."), name)})
    assert r.status_code == 200, r.text
    staged = re.search(r'name="upload" value="([^"]+)"', r.text)
    grant = re.search(r'name="grant" value="([^"]+)"', r.text)
    assert staged and grant
    return r.text, {"csrf": token, "upload": staged.group(1), "grant": html.unescape(grant.group(1))}, staged.group(1)


def test_install_shows_the_asked_permissions_and_installs_only_with_consent(client: FlaskClient, host: FakeHost,
                                                                            uploads: Path) -> None:
    login(client)
    text, form, staged = consent_form(client, "../extra.zip")
    assert "Install extra" in text and "network namespace (no interfaces)" in text
    assert (uploads / staged).read_bytes() == b"PK..." and re.fullmatch(r"[0-9a-f]{32}\.zip", staged)
    r = client.post("/admin/install/confirm", headers={"Origin": ORIGIN}, data=form)
    assert r.status_code == 422 and "not granted" in r.text and not host.installed
    assert not (uploads / staged).exists()  # refused consent: the upload is gone
    text, form, staged = consent_form(client)
    r = client.post("/admin/install/confirm", headers={"Origin": ORIGIN}, data={**form, "consent": "yes"})
    assert r.status_code == 302 and r.headers["Location"] == "/admin/plugins/extra?done=install&plugin=extra"
    assert host.installed == [{"upload": staged, "grant": GRANT}]
    assert list(uploads.iterdir()) == []


def test_an_install_asking_more_than_granted_shows_the_difference(client: FlaskClient, host: FakeHost) -> None:
    login(client)
    _, form, _ = consent_form(client)
    real = host.call

    def refuse(op: str, credential: str | None, **args: Any) -> dict[str, Any]:
        if op == "install":
            raise AdminError(409, "Permissions not granted", "extra asks for more than the request grants",
                             excess=["resources.memory_mb: 512 > granted 256"])
        return real(op, credential, **args)

    host.call = refuse  # type: ignore[method-assign]
    r = client.post("/admin/install/confirm", headers={"Origin": ORIGIN}, data={**form, "consent": "yes"})
    assert r.status_code == 409 and "resources.memory_mb: 512 &gt; granted 256" in r.text


def test_the_consent_page_of_an_upgrade_shows_what_widens(client: FlaskClient, host: FakeHost) -> None:
    login(client)
    real = host.call

    def upgrade(op: str, credential: str | None, **args: Any) -> dict[str, Any]:
        if op == "preview":
            return {**real(op, credential, **args), "installed": "0.9", "changes": {
                "widened": ["network.outbound: + db.example.net:5432"], "narrowed": ["resources.memory_mb: 512 → 256"]}}
        return real(op, credential, **args)

    host.call = upgrade  # type: ignore[method-assign]
    text, _, _ = consent_form(client)
    assert "Changes since 0.9" in text
    assert "<strong>widened:</strong> network.outbound: + db.example.net:5432" in text
    assert "narrowed: resources.memory_mb: 512 → 256" in text
    assert "0.9 keeps serving unless you grant it" in text


def test_only_archives_are_staged(client: FlaskClient, uploads: Path) -> None:
    login(client)
    r = client.post("/admin/install", headers={"Origin": ORIGIN}, content_type="multipart/form-data",
                    data={"csrf": csrf_of(client), "archive": (io.BytesIO(b"x"), "evil.sh")})
    assert r.status_code == 422 and "not a plugin archive" in r.text and list(uploads.iterdir()) == []


def test_an_ended_session_sends_the_user_to_log_in(client: FlaskClient, host: FakeHost) -> None:
    login(client)
    assert client.get("/admin/").status_code == 200
    host.sessions.clear()
    r = client.get("/admin/")
    assert r.status_code == 302 and r.headers["Location"].startswith("/admin/login")


def test_login_redirects_only_within_the_admin_ui(client: FlaskClient) -> None:
    for target, expected in (("/admin/audit?plugin=notes", "/admin/audit?plugin=notes"), ("//evil.example/", "/admin/"),
                             ("https://evil.example/", "/admin/"), ("/admin//evil.example", "/admin/")):
        client.delete_cookie(HOST_COOKIE, path="/admin/")
        r = client.post("/admin/login", data={"token": ADMIN, "next": target}, headers={"Origin": ORIGIN})
        assert r.headers["Location"] == expected


def test_audit_log_shows_who_and_readable_details(client: FlaskClient, host: FakeHost) -> None:
    login(client)
    page = client.get("/admin/audit?plugin=notes&n=5").text
    assert host.calls[-1][2] == {"n": 5, "plugin": "notes"}
    assert "2001-09-09 01:46:45" in page and "token:ops" in page and "settings changed" in page
    assert "[&#34;title&#34;]" in page  # JSON, not Python's repr
    assert "unset" not in page and "reason" not in page  # empty values left out
    assert "x" * 157 + "..." in page  # long values cut, whole in the title
    client.get("/admin/audit?plugin=../etc&n=many")
    assert host.calls[-1][2] == {"n": 200}


def test_notices_are_a_fixed_set(client: FlaskClient) -> None:
    page = client.get("/admin/login?done=<b>owned</b>&plugin=<i>x</i>").text
    assert "owned" not in page and "<i>x" not in page


def test_cross_origin() -> None:
    own = "http://127.0.0.1:8001"
    assert cross_origin(own, "same-origin", None, own) is None
    assert cross_origin(None, None, None, own) is None  # curl: no browser a forged page could drive
    assert cross_origin(None, None, own + "/admin/", own) is None
    assert cross_origin("http://127.0.0.1:8000", None, None, own) is not None
    assert cross_origin(None, None, "http://127.0.0.1:8000/plugins/x/", own) is not None


def test_cookie_round_trip_and_junk() -> None:
    assert parse_cookie(cookie_value("a" * 43, "b" * 43)) == ("a" * 43, "b" * 43)
    for junk in (None, "", "nodot" * 10, "a" * 43 + ".", "." + "b" * 43, "a b" * 10 + "." + "b" * 43, "x" * 600):
        assert parse_cookie(junk) is None


def test_upload_dir_stages_under_a_random_name_and_sweeps_abandoned_ones(tmp_path: Path) -> None:
    up = UploadDir(tmp_path)
    name = up.stage(io.BytesIO(b"12345"), "p.tar.gz")
    assert name.endswith(".tar.gz") and (tmp_path / name).read_bytes() == b"12345"
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o640
    up.discard("../" + name)
    assert (tmp_path / name).exists()
    up.sweep(now=(tmp_path / name).stat().st_mtime + 60)
    assert (tmp_path / name).exists()
    up.sweep(now=(tmp_path / name).stat().st_mtime + 7200)
    assert not (tmp_path / name).exists()


def test_mounted_on_the_admin_app(host: FakeHost, tmp_path: Path) -> None:
    """create_admin_app mounts the UI: its pages, static files and CSP, behind the app's own origin check."""
    from host.admin.app import create_admin_app
    from host.settings import HostSettings

    app = create_admin_app(HostSettings(home=tmp_path, admin_bind="127.0.0.1:8001"), backend=host)  # type: ignore[arg-type]
    with app.test_client() as c:
        page = c.get("/admin/login", base_url="http://127.0.0.1:8001")
        assert page.status_code == 200 and page.headers["Content-Security-Policy"] == CSP and 'id="token"' in page.text
        css = page.text.split('rel="stylesheet" href="')[1].split('"')[0]
        with c.get(css, base_url="http://127.0.0.1:8001") as r:
            assert r.status_code == 200 and b".badge" in r.data
        assert c.get("/admin/login", base_url="http://plugin.localhost:8001").status_code == 421
        r = c.post("/admin/login", base_url="http://127.0.0.1:8001", data={"token": ADMIN},
                   headers={"Origin": "http://127.0.0.1:8000"})
        assert r.status_code == 403 and "login" not in host.ops()

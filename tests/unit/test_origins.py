"""One origin per plugin: which Host names which plugin, the default domain, settings, and how the web tier
routes by Host (Flask test client; the plugins are an httpx-style handler that echoes what it was sent)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from host import origins, routes
from host.app import create_app
from host.headers import request_headers, response_headers
from host.layout import Layout
from host.registry import PluginRecord, Registry
from host.settings import HostSettings
from tests.unit.mock_upstream import MockUpstream


@pytest.mark.parametrize(("bind", "domain"), [
    ("127.0.0.1:8000", "localhost"), ("127.1.2.3:80", "localhost"), ("[::1]:8000", "localhost"),
    ("localhost:8000", "localhost"), ("0.0.0.0:8000", ""), ("[::]:80", ""), ("10.0.0.5:80", ""),
    ("example.org:80", ""),
])
def test_origin_mode_is_on_by_default_only_on_loopback(bind: str, domain: str) -> None:
    assert HostSettings(bind=bind).origin_domain == domain


def test_plugin_domain_can_be_set_or_switched_off() -> None:
    assert HostSettings(bind="0.0.0.0:80", plugin_domain="Plugins.Example.COM.").origin_domain == "plugins.example.com"
    assert HostSettings(plugin_domain="").origin_domain == ""


@pytest.mark.parametrize("bad", ["a..b", "-a.example", "a_b.example", "x.example/", "a b"])
def test_plugin_domain_must_be_a_dns_name(bad: str) -> None:
    with pytest.raises(ValidationError, match="plugin_domain"):
        HostSettings(plugin_domain=bad)


def test_path_mode_off_needs_a_plugin_domain() -> None:
    assert HostSettings(path_mode=False).origin_domain == "localhost"
    with pytest.raises(ValidationError, match="only on their own origins"):
        HostSettings(path_mode=False, plugin_domain="")


@pytest.mark.parametrize(("host", "label"), [
    ("notes.localhost:8000", "notes"), ("NOTES.Localhost", "notes"), ("notes.localhost.:8000", "notes"),
    ("a.b.localhost", "a.b"), ("localhost:8000", None), ("127.0.0.1:8000", None), ("[::1]:8000", None),
    ("notes.localhost.evil.example", None), ("evillocalhost", None), (".localhost", None),
])
def test_plugin_label_of_a_host(host: str, label: str | None) -> None:
    assert origins.plugin_label(host, "localhost") == label
    assert origins.plugin_label(host, "") is None


def test_plugin_url_keeps_the_scheme_and_port_of_the_main_host() -> None:
    assert origins.plugin_url("notes", "localhost", "http", "127.0.0.1:8000") == "http://notes.localhost:8000/"
    assert (origins.plugin_url("notes", "plugins.example.com", "https", "host.example.com")
            == "https://notes.plugins.example.com/")


def test_on_its_own_origin_a_plugin_gets_no_prefix_and_its_public_host() -> None:
    sent = request_headers([("Host", "evil"), ("X-Forwarded-Prefix", "/plugins/x")], prefix="", client_ip="10.0.0.1",
                           scheme="http", host="notes.localhost:8000", content_length=None)
    names = {k.lower(): v for k, v in sent}
    assert "x-forwarded-prefix" not in names  # the runtime then sets SCRIPT_NAME = ""
    assert names["host"] == names["x-forwarded-host"] == "notes.localhost:8000"


@pytest.mark.parametrize(("cookie", "expected"), [
    ("sid=1; Path=/; HttpOnly", "sid=1; Path=/; HttpOnly"),  # its own Path, kept
    ("sid=1; Domain=localhost; Path=/app", "sid=1; Path=/app"),  # never the parent domain (siblings, host)
    ("sid=1; domain =.notes.localhost;SameSite=Lax", "sid=1; SameSite=Lax"),
    ("__Host-sid=1; Secure; Path=/", "__Host-sid=1; Secure; Path=/"),  # valid on an origin of its own
])
def test_on_its_own_origin_a_cookie_stays_host_only_with_its_own_path(cookie: str, expected: str) -> None:
    assert response_headers(httpx.Headers([("Set-Cookie", cookie)]), "") == [("set-cookie", expected)]


def test_on_its_own_origin_only_site_wide_headers_are_dropped() -> None:
    sent = httpx.Headers([("Strict-Transport-Security", "max-age=60"), ("Service-Worker-Allowed", "/"),
                          ("Clear-Site-Data", '"cookies"'), ("Set-Cookie", "plugin_host_session=x")])
    assert [k for k, _ in response_headers(sent, "")] == ["strict-transport-security", "service-worker-allowed"]
    assert response_headers(sent, "/plugins/p") == []


def record(name: str, enabled: bool = True) -> PluginRecord:
    return PluginRecord(name, "1.0", "inst", {"name": name, "description": f"{name} plugin"}, enabled, 1, 0.0, 0.0)


def plugin(request: httpx.Request) -> httpx.Response:
    """Every plugin: answers with the socket it was reached on, the path and the headers it got."""
    seen = {"plugin": request.extensions.get("socket"), "path": request.url.raw_path.decode(),
            "headers": {k.decode().lower(): v.decode() for k, v in request.headers.raw}}
    # a stream, as from a socket (json= would make a response that was read already)
    return httpx.Response(200, headers={"Content-Type": "application/json"},
                          stream=httpx.ByteStream(json.dumps(seen).encode()))


def client(tmp_path: Path, **settings: Any) -> Any:
    (tmp_path / "run").mkdir(exist_ok=True)
    routes.publish(tmp_path / "run" / "routes.json", routes.snapshot([record("notes"), record("off", False)]), None)
    app = create_app(HostSettings(home=tmp_path, **settings))

    def transport(sock: Path) -> MockUpstream:
        def handle(request: httpx.Request) -> httpx.Response:
            request.extensions["socket"] = sock.parent.name
            return plugin(request)
        return MockUpstream(handle)

    app.extensions["plugin_host"]["pool"].transport = transport
    return app.test_client()


def test_a_plugin_origin_routes_every_path_to_the_plugin_even_the_hosts_own(tmp_path: Path) -> None:
    c = client(tmp_path)
    for path in ("/", "/healthz", "/Home?x=1", "/plugins/notes/"):
        seen = c.get(path, headers={"Host": "notes.localhost:8000"}).get_json()
        assert seen["plugin"] == "notes" and seen["path"] == path  # at the root: the path as sent
        assert "x-forwarded-prefix" not in seen["headers"]
        assert seen["headers"]["host"] == seen["headers"]["x-forwarded-host"] == "notes.localhost:8000"
    assert "Welcome" in c.get("/", headers={"Host": "127.0.0.1:8000"}).get_data(as_text=True)
    by_path = c.get("/plugins/notes/Home", headers={"Host": "127.0.0.1:8000"}).get_json()
    assert by_path["path"] == "/Home" and by_path["headers"]["x-forwarded-prefix"] == "/plugins/notes"


@pytest.mark.parametrize("host", ["nope.localhost:8000", "off.localhost", "a.notes.localhost", "-x.localhost"])
def test_an_unknown_plugin_origin_is_a_404_problem(tmp_path: Path, host: str) -> None:
    r = client(tmp_path).get("/healthz", headers={"Host": host})
    assert r.status_code == 404 and r.mimetype == "application/problem+json"
    assert r.get_json()["title"] == "Unknown plugin"


def test_index_links_each_plugins_origin_and_warns_of_the_shared_one(tmp_path: Path) -> None:
    page = client(tmp_path).get("/", headers={"Host": "127.0.0.1:8000"}).get_data(as_text=True)
    assert 'href="http://notes.localhost:8000/"' in page and 'href="/plugins/notes/"' in page
    assert "share one browser origin" in page and 'id="shared-origin-warning"' in page


def test_path_mode_off_serves_plugins_on_their_origins_only(tmp_path: Path) -> None:
    c = client(tmp_path, path_mode=False)
    r = c.get("/plugins/notes/", headers={"Host": "127.0.0.1:8000"})
    assert r.status_code == 404 and r.get_json()["title"] == "Not Found"
    page = c.get("/", headers={"Host": "127.0.0.1:8000"}).get_data(as_text=True)
    assert 'href="http://notes.localhost:8000/"' in page and "/plugins/notes" not in page
    assert "shared-origin-warning" not in page


def test_origin_mode_off_keeps_path_mode_only(tmp_path: Path) -> None:
    c = client(tmp_path, plugin_domain="")
    r = c.get("/healthz", headers={"Host": "notes.localhost:8000"})
    assert r.status_code == 503 and r.get_json()["supervisor"] == "unreachable"  # the host's own /healthz
    page = c.get("/", headers={"Host": "127.0.0.1:8000"}).get_data(as_text=True)
    assert 'href="/plugins/notes/"' in page and "localhost" not in page and "HOST_PLUGIN_DOMAIN" in page


@pytest.mark.parametrize(("args", "domain"), [((), "localhost"), (("--plugin-domain", "Plugins.Example.com"),
                                                                 "plugins.example.com"),
                                              (("--plugin-domain", ""), "")])
def test_serve_takes_the_plugin_domain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: tuple[str, ...],
                                       domain: str) -> None:
    from click.testing import CliRunner

    from host import cli
    from host.settings_view import from_text

    seen: list[list[str]] = []

    def execv(path: str, argv: list[str]) -> None:  # where `host serve` becomes the supervisor process
        seen.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.delenv("HOST_PLUGIN_DOMAIN", raising=False)
    layout = Layout(tmp_path)
    layout.ensure()
    Registry(layout.registry)  # an existing home
    result = CliRunner().invoke(cli.cli, ["--home", str(tmp_path), "serve", *args])
    assert result.exit_code == 0, result.output
    argv = seen[0]
    assert argv[argv.index("-m") + 1] == "host.supervisor"
    with os.fdopen(int(argv[argv.index("--settings-fd") + 1])) as fh:
        assert from_text(fh.read()).origin_domain == domain


def test_doctor_says_whether_plugins_share_an_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    from host import cli

    report = cli.origin_report(HostSettings())
    assert report["plugin_domain"] == "localhost" and report["shared_origin"] is True
    assert any("share one browser origin" in line for line in report["detail"])
    alone = cli.origin_report(HostSettings(path_mode=False, plugin_domain="plugins.example.com"))
    assert alone["shared_origin"] is False and alone["detail"] == [
        "each plugin on its own origin: http://<name>.plugins.example.com:8000/ (HOST_PLUGIN_DOMAIN)"]


@pytest.mark.parametrize(("bind", "domain", "path_mode", "urls"), [
    ("127.0.0.1:8000", "localhost", True, ["http://wiki.localhost:8000/", "http://127.0.0.1:8000/plugins/wiki/"]),
    ("127.0.0.1:8000", "", True, ["http://127.0.0.1:8000/plugins/wiki/"]),
    ("0.0.0.0:80", "plugins.example.com", False, ["http://wiki.plugins.example.com:80/"]),
    ("[::]:8000", "", True, ["http://[::1]:8000/plugins/wiki/"]),
])
def test_public_urls_of_a_plugin(bind: str, domain: str, path_mode: bool, urls: list[str]) -> None:
    assert origins.public_urls("wiki", bind, domain, path_mode) == urls


def test_what_the_fast_front_leaves_to_flask_is_answered_as_before(tmp_path: Path) -> None:
    # host.front serves plugin requests without Flask; a method no proxy route allows stays Flask's 405 by path,
    # while a plugin's origin is the plugin's for every method (WebDAV's PROPFIND included).
    c = client(tmp_path)
    refused = c.open("/plugins/notes/x", method="PROPFIND", headers={"Host": "127.0.0.1:8000"})
    assert refused.status_code == 405 and refused.mimetype == "application/problem+json"
    dav = c.open("/x", method="PROPFIND", headers={"Host": "notes.localhost:8000"})
    assert dav.status_code == 200 and dav.get_json()["path"] == "/x"
    assert c.head("/plugins/notes/Home", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    unknown = c.get("/plugins/nope/x", headers={"Host": "127.0.0.1:8000"})
    assert unknown.status_code == 404 and unknown.mimetype == "application/problem+json"
    assert unknown.get_json() == {"type": "about:blank", "title": "Unknown plugin", "status": 404,
                                  "detail": "no enabled plugin named 'nope'"}
    assert c.get("/plugins/off/", headers={"Host": "127.0.0.1:8000"}).status_code == 404  # disabled

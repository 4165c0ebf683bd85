"""Path mode for apps unaware of their prefix: redirects moved under it, absolute links followed by Referer."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from host.headers import prefixed_location, response_headers
from tests.unit.test_origins import client

P = "/plugins/wiki"
PUBLIC = "http://127.0.0.1:8000"


@pytest.mark.parametrize(("location", "expected"), [
    ("/login", "/plugins/wiki/login"),
    ("/", "/plugins/wiki/"),
    ("/?next=%2Fx", "/plugins/wiki/?next=%2Fx"),
    ("/plugins/wiki/login", "/plugins/wiki/login"),  # url_for already put it under the prefix
    ("/plugins/wiki", "/plugins/wiki"),
    ("/plugins/wikipedia", "/plugins/wiki/plugins/wikipedia"),  # another prefix is no prefix of its own
    ("http://127.0.0.1:8000/login", "http://127.0.0.1:8000/plugins/wiki/login"),
    ("HTTP://127.0.0.1:8000", "HTTP://127.0.0.1:8000/plugins/wiki/"),
    ("http://127.0.0.1:8000/plugins/wiki/x", "http://127.0.0.1:8000/plugins/wiki/x"),
    ("http://127.0.0.1:80001/x", "http://127.0.0.1:80001/x"),  # another port: not this origin
    ("https://example.org/login", "https://example.org/login"),
    ("//example.org/login", "//example.org/login"),  # network-path reference: another host
    ("/\\example.org", "/\\example.org"),  # browsers read it as //example.org
    ("login", "login"),  # relative: resolved against the page, which is under the prefix already
])
def test_a_redirect_outside_the_prefix_is_moved_under_it(location: str, expected: str) -> None:
    assert prefixed_location(location, P, PUBLIC) == expected


def test_only_path_mode_moves_redirects() -> None:
    up = httpx.Headers([("Location", "/login")])
    assert response_headers(up, P, PUBLIC) == [("location", "/plugins/wiki/login")]
    assert response_headers(up, "", PUBLIC) == [("location", "/login")]  # on its own origin "/" is its root


def referred(c: object, path: str, referer: str, method: str = "GET") -> httpx.Response:
    return c.open(path, method=method, headers={"Host": "127.0.0.1:8000", "Referer": referer})  # type: ignore[attr-defined, no-any-return]


def test_an_absolute_link_on_a_plugins_page_is_sent_under_its_prefix(tmp_path: Path) -> None:
    c = client(tmp_path)
    r = referred(c, "/static/app.css?v=2", "http://127.0.0.1:8000/plugins/notes/Home")
    assert (r.status_code, r.headers["Location"]) == (307, "/plugins/notes/static/app.css?v=2")
    assert r.headers["Cache-Control"] == "no-store" and r.headers["Vary"] == "Referer"
    # a form's POST keeps its method and body (307), and "/" is the plugin's home, asked for from its page
    assert referred(c, "/login", "http://127.0.0.1:8000/plugins/notes/", "POST").headers["Location"] == \
        "/plugins/notes/login"
    assert referred(c, "/", "http://127.0.0.1:8000/plugins/notes").headers["Location"] == "/plugins/notes/"


@pytest.mark.parametrize("referer", [
    "",  # typed in, or a page that sends no Referer
    "http://127.0.0.1:8000/",  # the host's own index
    "http://evil.example/plugins/notes/",  # another site
    "http://127.0.0.1:9999/plugins/notes/",  # another origin on this machine
    "http://127.0.0.1:8000/plugins/off/",  # a disabled plugin
    "http://127.0.0.1:8000/plugins/nope/",  # no such plugin
    "http://127.0.0.1:8000/pluginsx/notes/",
])
def test_without_a_plugins_page_as_referer_the_host_answers(tmp_path: Path, referer: str) -> None:
    c = client(tmp_path)
    r = referred(c, "/static/app.css", referer)
    assert r.status_code == 404 and r.get_json()["title"] == "Not Found"
    assert "Welcome" in referred(c, "/", referer).get_data(as_text=True)


def test_the_hosts_own_pages_and_plugin_paths_are_never_redirected(tmp_path: Path) -> None:
    c = client(tmp_path)
    ref = "http://127.0.0.1:8000/plugins/notes/"
    assert referred(c, "/healthz", ref).status_code == 503  # the host's /healthz (no supervisor here)
    r = referred(c, "/plugins/nope/x", ref)
    assert r.status_code == 404 and r.get_json()["title"] == "Unknown plugin"


def test_the_fallback_can_be_switched_off(tmp_path: Path) -> None:
    r = referred(client(tmp_path, path_fallback=False), "/static/app.css", "http://127.0.0.1:8000/plugins/notes/")
    assert r.status_code == 404


@pytest.mark.parametrize(("origin", "refused"), [
    ("http://echo.localhost:8000", True),  # a sibling plugin's page: same site, so notes' cookies went along
    ("https://echo.localhost", True),
    ("http://notes.localhost:8000", False),  # its own pages
    ("http://127.0.0.1:8000", False),  # the main host name
    ("https://example.org", False),  # another site: its cookies are SameSite's business, and CORS's
    ("null", False),
    (None, False),
])
def test_a_sibling_plugins_page_may_not_post_to_a_plugin(tmp_path: Path, origin: str | None, refused: bool) -> None:
    c = client(tmp_path)
    headers = {"Host": "notes.localhost:8000", **({"Origin": origin} if origin else {})}
    r = c.post("/save", headers=headers, data=b"x")
    if refused:
        assert r.status_code == 403 and r.get_json()["title"] == "Cross-plugin request refused"
        assert r.get_json()["detail"] == "a page of plugin 'echo' may not send POST requests to plugin 'notes'"
    else:
        assert r.status_code == 200 and r.get_json()["plugin"] == "notes"
    assert c.get("/page", headers=headers).status_code == 200  # reading is CORS's business: the browser's


def test_a_sibling_plugins_page_may_not_open_a_websocket_to_a_plugin(tmp_path: Path) -> None:
    r = client(tmp_path).get("/ws", headers={"Host": "notes.localhost:8000", "Origin": "http://echo.localhost:8000",
                                             "Connection": "Upgrade", "Upgrade": "websocket",
                                             "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "x" * 22 + "=="})
    assert r.status_code == 403
    assert r.get_json()["detail"] == "a page of plugin 'echo' may not open a WebSocket to plugin 'notes'"

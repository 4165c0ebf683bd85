"""WebSocket handshakes at the proxy: which requests are handshakes, what headers the plugin gets, and that the
host routes a handshake to the proxy instead of refusing it (Flask test client: no server, no sockets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from host import routes, ws_relay
from host.app import create_app
from host.headers import request_headers
from host.registry import PluginRecord
from host.settings import HostSettings
from host.websocket import handshake_headers, requested

UPGRADE = {"Connection": "keep-alive, Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.mark.parametrize(("method", "connection", "upgrade", "expected"), [
    ("GET", "Upgrade", "websocket", True),
    ("GET", "keep-alive, upgrade", "WebSocket", True),
    ("POST", "Upgrade", "websocket", False),
    ("GET", "keep-alive", "websocket", False),
    ("GET", "Upgrade", "h2c", False),
])
def test_which_requests_are_websocket_handshakes(method: str, connection: str, upgrade: str, expected: bool) -> None:
    environ = {"REQUEST_METHOD": method, "HTTP_CONNECTION": connection, "HTTP_UPGRADE": upgrade}
    assert requested(environ) is expected


def test_handshake_keeps_the_websocket_headers_and_nothing_of_the_hosts() -> None:
    incoming = [("Host", "127.0.0.1:8000"), ("Connection", "Upgrade, Sec-WebSocket-Extensions"),
                ("Upgrade", "websocket"), ("Sec-WebSocket-Key", "k"), ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Extensions", "permessage-deflate"), ("Cookie", "plugin_host_session=s; a=1"),
                ("X-Forwarded-For", "6.6.6.6"), ("Keep-Alive", "5"), ("Authorization", "Bearer phk_admin")]
    sanitized = request_headers(incoming, prefix="/plugins/p", client_ip="10.0.0.1", scheme="http",
                                host="127.0.0.1:8000", content_length=None)
    out = handshake_headers(sanitized, incoming)
    names = [k.lower() for k, _ in out]
    assert {k.lower(): v for k, v in out} == {
        "host": "127.0.0.1:8000", "sec-websocket-key": "k", "sec-websocket-version": "13",
        "sec-websocket-extensions": "permessage-deflate",  # named by Connection, and kept all the same
        "cookie": "a=1", "x-forwarded-for": "10.0.0.1", "x-forwarded-proto": "http",
        "x-forwarded-host": "127.0.0.1:8000", "x-forwarded-prefix": "/plugins/p",
        "connection": "Upgrade", "upgrade": "websocket",
    }
    assert len(names) == len(set(names))  # each once


def record(name: str, **requests: int) -> PluginRecord:
    return PluginRecord(name, "1.0", "inst", {"name": name, "permissions": {"requests": requests}}, True, 1, 0.0,
                        0.0)


@pytest.fixture
def client(tmp_path: Path) -> Any:
    (tmp_path / "run").mkdir()
    routes.publish(tmp_path / "run" / "routes.json",
                   routes.snapshot([record("p"), record("closed", max_websockets=0)]), None)
    return create_app(HostSettings(home=tmp_path)).test_client()


def test_handshake_reaches_the_proxy_instead_of_a_400(client: Any) -> None:
    """werkzeug answers 400 to a handshake on a route not marked as a WebSocket route, which every host route
    is; the host routes it as HTTP. Under the test client there is no gunicorn connection to hand over: 501."""
    r = client.get("/plugins/p/ws", headers=UPGRADE)
    assert r.status_code == 501
    assert r.get_json()["title"] == "WebSockets unavailable"
    assert client.get("/plugins/nope/ws", headers=UPGRADE).status_code == 404
    assert client.get("/", headers=UPGRADE).status_code == 200  # the host's own pages: as for any request


def test_cant_open_a_websocket_to_a_plugin_that_allows_none(client: Any) -> None:
    r = client.get("/plugins/closed/ws", headers=UPGRADE)
    assert r.status_code == 403
    assert r.get_json()["title"] == "WebSockets not allowed"


def test_cant_send_a_body_with_a_handshake(client: Any) -> None:
    r = client.get("/plugins/p/ws", headers=UPGRADE, data=b"smuggled")
    assert r.status_code == 400
    assert r.get_json()["title"] == "Bad WebSocket handshake"


@pytest.mark.parametrize(("limits", "raised", "budget"), [
    ((1024, 524288), (524288, 524288), (524288 - 256) // 2),  # systemd's default: the soft limit is raised
    ((20000, 20000), None, (20000 - 256) // 2),
    ((200, 200), None, 0),  # too few to spare any: every handshake gets a 503, ordinary requests still work
])
def test_websockets_never_take_the_descriptors_ordinary_requests_need(
        monkeypatch: pytest.MonkeyPatch, limits: tuple[int, int], raised: tuple[int, int] | None,
        budget: int) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(ws_relay.resource, "getrlimit", lambda _: limits)
    monkeypatch.setattr(ws_relay.resource, "setrlimit", lambda _, value: calls.append(value))
    assert ws_relay.descriptor_budget() == budget
    assert calls == ([raised] if raised else [])

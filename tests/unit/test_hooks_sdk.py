"""The plugin SDK's hook endpoint (host/runtime/plugin_sdk/hooks.py) against calls signed by the host's
signer (host.hooks.signing): verified, deduplicated, and forged or replayed calls refused."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from host.hooks import signing
from host.hooks.events import CloudEvent
from host.runtime.plugin_sdk import hooks as sdk

SECRET = signing.new_secret()


def call(h: Any, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST to ``h`` (a Hooks, or any WSGI app) under the hook prefix."""
    handle = h.handle if isinstance(h, sdk.Hooks) else h
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": sdk.PREFIX + path, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body),
               **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()}}
    got: list[str] = []
    out = b"".join(handle(environ, lambda status, hdrs: got.append(status)))
    return int(got[0].split()[0]), json.loads(out)


@pytest.fixture
def seen(tmp_path: Path) -> tuple[sdk.Hooks, list[dict[str, Any]]]:
    h = sdk.Hooks(secret=SECRET, seen_path=str(tmp_path / "seen.db"))
    got: list[dict[str, Any]] = []
    h.on("notes.*")(got.append)
    return h, got


def event_body(kind: str = "notes.note.created") -> tuple[str, bytes]:
    ev = CloudEvent(source="/plugins/notes", type=kind, data={"title": "hi"})
    return ev.id, ev.to_json().encode()


def test_a_signed_event_reaches_its_handler_once(seen: tuple[sdk.Hooks, list[dict[str, Any]]]) -> None:
    h, got = seen
    msg_id, body = event_body()
    assert call(h, "events", body, signing.headers(SECRET, msg_id, body)) == (200, {"handled": 1})
    # the host's retry of the same event (new timestamp and signature, same id): answered, not handled again
    assert call(h, "events", body, signing.headers(SECRET, msg_id, body, time.time() + 1)) == (200, {"duplicate": True})
    assert [e["id"] for e in got] == [msg_id]


def test_cant_forge_a_delivery(seen: tuple[sdk.Hooks, list[dict[str, Any]]]) -> None:
    h, got = seen
    msg_id, body = event_body()
    forged = signing.headers(signing.new_secret(), msg_id, body)  # another (or an old instance's) secret
    assert call(h, "events", body, forged) == (401, {"error": "invalid signature: no matching signature"})
    tampered = signing.headers(SECRET, msg_id, body)
    assert call(h, "events", body.replace(b"hi", b"ho"), tampered)[0] == 401
    assert call(h, "events", body, {})[1] == {"error": "invalid signature: missing webhook headers or no secret"}
    assert got == []


def test_cant_replay_an_old_delivery(seen: tuple[sdk.Hooks, list[dict[str, Any]]]) -> None:
    h, got = seen
    msg_id, body = event_body()
    captured = signing.headers(SECRET, msg_id, body, now=time.time() - signing.TOLERANCE - 5)
    assert call(h, "events", body, captured) == (401, {"error": "invalid signature: webhook-timestamp outside "
                                                                 "the tolerance"})
    assert got == []


def test_an_unhandled_type_unsubscribes_and_failures_retry(seen: tuple[sdk.Hooks, list[dict[str, Any]]]) -> None:
    h, _ = seen
    msg_id, body = event_body("plugin.installed")
    assert call(h, "events", body, signing.headers(SECRET, msg_id, body))[0] == 410

    @h.on("notes.note.deleted")
    def boom(event: dict[str, Any]) -> None:
        raise sdk.RetryLater(7)

    msg_id, body = event_body("notes.note.deleted")
    assert call(h, "events", body, signing.headers(SECRET, msg_id, body)) == (429, {"retry_after": 7})
    # not marked seen: the retry runs the handler again
    assert call(h, "events", body, signing.headers(SECRET, msg_id, body))[0] == 429


def test_filters_answer_their_verdict(seen: tuple[sdk.Hooks, list[dict[str, Any]]]) -> None:
    h, _ = seen

    @h.filter("waf")
    def waf(c: dict[str, Any]) -> dict[str, Any]:
        return sdk.reject(451, "nope") if c["data"]["path"] == "/bad" else sdk.allow({"X-Checked": "1"})

    for path, verdict in (("/bad", {"action": "reject", "status": 451, "reason": "nope"}),
                          ("/ok", {"action": "allow", "headers": {"X-Checked": "1"}})):
        body = json.dumps({"point": "request.before", "data": {"path": path}}).encode()
        assert call(h, "filters/waf", body, signing.headers(SECRET, "f1", body)) == (200, verdict)
    assert call(h, "filters/nope", b"{}", signing.headers(SECRET, "f2", b"{}"))[0] == 404


def test_a_seed_style_plugin_gets_its_hooks_through_the_hosts_wsgi_wrapper(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a plugin venv: plugin_base, plugin_host_wsgi and plugin_sdk side by side, and a PluginBase module
    that declares a filter with the SDK's module-level decorator (nothing registered with Flask)."""
    from host.runtime import RUNTIME_DIR

    (tmp_path / "seedmod.py").write_text(
        "from plugin_base import PluginBase\n"
        "from plugin_sdk import hooks\n\n"
        "class Seed(PluginBase):\n"
        "    def register(self):\n"
        "        self.app.add_url_rule('/', 'index', lambda: 'hi')\n\n"
        "@hooks.filter('policy')\n"
        "def policy(call):\n"
        "    return hooks.reject(451, 'the seed says no')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(RUNTIME_DIR))
    monkeypatch.setenv("PLUGIN_HOST_WEBHOOK_SECRET", SECRET)
    for mod in ("plugin_sdk", "plugin_sdk.hooks", "plugin_base", "plugin_host_wsgi", "seedmod"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
        monkeypatch.setitem(sys.modules, mod, None)  # set and then deleted: undo removes what the test imports
        del sys.modules[mod]
    import plugin_host_wsgi  # type: ignore[import-not-found]

    app = plugin_host_wsgi._Prefixed(plugin_host_wsgi.load("seedmod"))
    body = json.dumps({"point": "plugin.install", "data": {"name": "x"}}).encode()
    status, verdict = call(app, "filters/policy", body, signing.headers(SECRET, "flt_1", body))
    assert (status, verdict) == (200, {"action": "reject", "status": 451, "reason": "the seed says no"})
    got: list[str] = []
    page = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "x", "SERVER_PORT": "80",
                         "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO()}, lambda s, h: got.append(s)))
    assert (got, page) == (["200 OK"], b"hi")  # the plugin's own pages as before

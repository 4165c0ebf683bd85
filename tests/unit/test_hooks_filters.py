"""Filter chains (host.hooks.filters, request_filter, install_filter): order, short-circuit, on_error, the
circuit breaker, header allow-list and the reserved hook path. Fake callers: no sockets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from host.hooks import reserved
from host.hooks.client import complete
from host.hooks.filters import Breaker, FilterFailed, run_chain
from host.hooks.install_filter import install_policy
from host.hooks.request_filter import RequestFilters
from host.hooks.table import FilterRef, FilterTable, Live, snapshot
from host.layout import Layout
from manifests import parse_manifest


def live(plugin: str, *filters: dict[str, Any]) -> Live:
    return Live(plugin, {"hooks": {"filters": list(filters)}}, f"{plugin}/1.sock", "whsec_AAAA")


def table(tmp_path: Path, *plugins: Live, cap: float = 1.0) -> Path:
    path = tmp_path / "hooks.json"
    path.write_bytes(snapshot(plugins, cap))
    return path


class Script:
    """Answers per filter key: a verdict dict or an exception; records the call order."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, ref: FilterRef, payload: bytes) -> dict[str, Any]:
        self.calls.append(ref.key)
        a = self.answers.get(ref.key.replace("/", "_").replace("-", "_"), {"action": "allow"})
        if isinstance(a, Exception):
            raise a
        return dict(a)


def test_order_is_priority_then_plugin_then_name_and_the_first_rejection_wins(tmp_path: Path) -> None:
    path = table(tmp_path,
                 live("zeta", {"name": "a", "point": "request.before", "priority": 5}),
                 live("alpha", {"name": "b", "point": "request.before", "priority": 50},
                      {"name": "a", "point": "request.before", "priority": 50}),
                 live("mid", {"name": "x", "point": "request.before", "priority": 10}))
    refs = FilterTable(path).at("request.before")
    assert [r.key for r in refs] == ["zeta/a", "mid/x", "alpha/a", "alpha/b"]
    script = Script(mid_x={"action": "reject", "status": 429, "reason": "slow down"})
    verdict = run_chain(refs, "request.before", {}, Breaker(), script)
    assert (verdict.allowed, verdict.status, verdict.reason, verdict.by) == (False, 429, "slow down", "mid/x")
    assert script.calls == ["zeta/a", "mid/x"]  # short-circuit: alpha's filters never ran


def test_a_failing_filter_gets_its_on_error(tmp_path: Path) -> None:
    path = table(tmp_path, live("lax", {"name": "f", "point": "request.before", "priority": 1, "on_error": "allow"}),
                 live("strict", {"name": "f", "point": "request.before", "priority": 2, "on_error": "reject"}))
    refs = FilterTable(path).at("request.before")
    script = Script(lax_f=FilterFailed("no answer within 0.2s"), strict_f=FilterFailed("no answer within 0.2s"))
    verdict = run_chain(refs, "request.before", {}, Breaker(), script)
    assert (verdict.allowed, verdict.status, verdict.by) == (False, 503, "strict/f")
    assert verdict.reason == "filter strict/f failed: no answer within 0.2s"
    assert script.calls == ["lax/f", "strict/f"]


def test_the_host_caps_the_deadline(tmp_path: Path) -> None:
    path = table(tmp_path, live("p", {"name": "f", "point": "request.before", "deadline_ms": 60000}), cap=0.5)
    ref = FilterTable(path).at("request.before")[0]
    assert ref.deadline == 0.5
    assert ref.socket == str(tmp_path / "p" / "1.sock")  # relative to run/, as the reader reaches it


def test_a_filter_that_keeps_failing_is_skipped_loudly(tmp_path: Path) -> None:
    refs = FilterTable(table(tmp_path, live("p", {"name": "f", "point": "request.before"}))).at("request.before")
    opened: list[str] = []
    breaker = Breaker(threshold=3, cooldown=3600, opened=lambda ref, why: opened.append(f"{ref.key}: {why}"))
    script = Script(p_f=FilterFailed("HTTP 500"))
    for _ in range(5):
        assert run_chain(refs, "request.before", {}, breaker, script).allowed  # on_error = allow (default)
    assert script.calls == ["p/f"] * 3  # then skipped, not called
    assert opened == ["p/f: HTTP 500"] and breaker.skipped == {"p/f": 2}


def test_request_filters_add_only_allowed_headers_and_strip_client_copies(tmp_path: Path) -> None:
    path = table(tmp_path, live("waf", {"name": "f", "point": "request.before"}))
    script = Script(waf_f={"action": "allow", "headers": {"X-Filter-User": "ann", "X-Tenant": "t1",
                                                          "X-Plugin-Host-User": "root"}})
    gate = RequestFilters(path, "X-Tenant", caller=script)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "HTTP_X_FILTER_USER": "forged", "HTTP_X_TENANT": "f"}
    assert gate.gate(environ, "notes", "x") is None
    assert environ["HTTP_X_FILTER_USER"] == "ann" and environ["HTTP_X_TENANT"] == "t1"
    assert "HTTP_X_PLUGIN_HOST_USER" not in environ
    # the filter's own plugin is not filtered by itself
    assert gate.gate({"PATH_INFO": "/"}, "waf", "") is None and script.calls == ["waf/f"]


def test_no_filter_means_no_call(tmp_path: Path) -> None:
    script = Script()
    assert RequestFilters(tmp_path / "absent.json", caller=script).gate({"PATH_INFO": "/"}, "notes", "") is None
    assert RequestFilters(table(tmp_path), caller=script).gate({"PATH_INFO": "/"}, "notes", "") is None
    assert script.calls == []


@pytest.mark.parametrize("path", ["/.well-known/plugin-host/events", ".well-known/plugin-host/filters/f",
                                  "/.well-known%2Fplugin-host/events", "//.Well-Known/plugin-host/events",
                                  "%252Ewell-known%252Fplugin-host%252Fevents", "\\.well-known\\plugin-host"])
def test_cant_reach_the_hook_path_by_any_spelling(path: str, tmp_path: Path) -> None:
    assert reserved(path)
    refused = RequestFilters(tmp_path / "absent.json").gate({"RAW_URI": "/plugins/x/" + path}, "x", path)
    assert refused == (404, "Not found", "this path is reserved for the host's hook calls")


def test_an_install_policy_vetoes_with_its_reason(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.run.mkdir(parents=True)
    layout.hooks.write_bytes(snapshot([live("policy", {"name": "p", "point": "plugin.install"})], 1.0))
    m = parse_manifest({"name": "shady", "version": "1.0", "entrypoint": "app:app",
                        "permissions": {"network": {"outbound": True}}})
    seen: list[dict[str, Any]] = []

    def policy(ref: FilterRef, payload: bytes) -> dict[str, Any]:
        data = json.loads(payload)["data"]
        seen.append(data)
        ok = data["manifest"]["permissions"]["network"]["outbound"] is False
        return {"action": "allow"} if ok else {"action": "reject", "status": 403, "reason": "no network plugins"}

    assert install_policy(layout, m, policy) == "refused by policy/p: no network plugins"
    assert seen[0]["name"] == "shady"


def test_the_installer_asks_the_policy_before_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from host import installer
    from host.errors import InstallError
    from host.hooks import install_filter
    from host.registry import Registry
    from host.settings import HostSettings

    settings = HostSettings(home=tmp_path / "home")
    layout = Layout(settings.home_dir)
    layout.ensure()
    layout.hooks.write_bytes(snapshot([live("policy", {"name": "p", "point": "plugin.install"})], 1.0))
    src = tmp_path / "shady"
    src.mkdir()
    (src / "plugin.toml").write_text('name = "shady"\nversion = "1.0"\nentrypoint = "app:app"\n')
    (src / "app.py").write_text("app = None\n")
    monkeypatch.setattr(install_filter, "call", lambda ref, payload: {"action": "reject", "reason": "not today"})
    monkeypatch.setattr(installer.Installer, "_build", lambda *a: pytest.fail("built despite the veto"))
    with pytest.raises(InstallError) as exc:
        installer.Installer(settings, Registry(layout.registry), lambda msg: None).install(src)
    assert str(exc.value) == ("shady: install failed while checking the install policy: refused by policy/p: "
                              "not today")
    assert Registry(layout.registry).get("shady") is None


def test_answers_are_parsed_only_when_complete() -> None:
    assert complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{\"a\"") is None
    assert complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}") == (200, {"content-length": "2"}, b"{}")
    assert complete(b"HTTP/1.1 429 X\r\nRetry-After: 7\r\n\r\nboom", eof=True) == (429, {"retry-after": "7"},
                                                                                      b"boom")
    with pytest.raises(FilterFailed, match="not an HTTP answer"):
        complete(b"garbage\r\n\r\n")


def test_open_circuits_and_the_outbox_are_on_metrics(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from host import request_metrics as names
    from host.admin import metrics as admin_metrics

    snap = {"uptime": 1.0, "web": {}, "states": [], "plugins": {}, "filters_tripped": {"waf/rules": 2},
            "hook_deliveries": {"inbox": {"delivered": 7, "dead": 1}}}
    text = admin_metrics.exposition(snap, tmp_path / "none").decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[(names.FILTER_CIRCUIT_OPEN + "_total", (("filter", "rules"), ("plugin", "waf")))] == 2
    assert samples[(names.HOOK_DELIVERIES, (("plugin", "inbox"), ("state", "dead")))] == 1


def test_an_unreachable_fail_closed_policy_holds_installs(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.run.mkdir(parents=True)
    layout.hooks.write_bytes(snapshot([live("policy", {"name": "p", "point": "plugin.install",
                                                       "on_error": "reject"})], 1.0))
    m = parse_manifest({"name": "any", "version": "1.0", "entrypoint": "app:app"})

    def down(ref: FilterRef, payload: bytes) -> dict[str, Any]:
        raise FilterFailed("cannot reach the plugin: No such file or directory")

    assert install_policy(layout, m, down) == ("refused by policy/p: filter policy/p failed: cannot reach the "
                                               "plugin: No such file or directory")

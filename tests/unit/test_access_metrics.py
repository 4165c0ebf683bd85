"""The access log (format, rotation, reading back), what an exchange counts as sent, and the /metrics
exposition (names, types, labels; it parses with prometheus_client's own parser)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from host import request_metrics as names
from host.access_log import AccessLog, Entry, format_entry, read_access
from host.admin import metrics as admin_metrics
from host.layout import Layout
from host.observe import Observer
from host.request_metrics import RequestMetrics, status_class


def entry(i: int = 0, plugin: str = "notes", **kw: Any) -> Entry:
    fields: dict[str, Any] = {"time": 1_790_000_000.25 + i, "client": "127.0.0.1", "method": "GET",
                              "path": f"/plugins/notes/{i}", "status": 200, "bytes_in": 0, "bytes_out": 12,
                              "duration": 0.0042, "plugin": plugin}
    return Entry(**{**fields, **kw})


def test_a_line_is_one_json_object_whatever_the_path_holds() -> None:
    line = entry(path='/plugins/notes/a"b\n{"status": 200}').line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = json.loads(line)
    assert record == {"time": "2026-09-21T14:13:20.250Z", "client": "127.0.0.1", "method": "GET",
                      "path": '/plugins/notes/a"b\n{"status": 200}', "status": 200, "bytes_in": 0,
                      "bytes_out": 12, "duration_ms": 4.2, "plugin": "notes", "aborted": False}
    assert format_entry(record) == ('2026-09-21T14:13:20.250Z 127.0.0.1 GET "/plugins/notes/a\\"b\\n{\\"status\\": '
                                    '200}" 200 in=0 out=12 4.2ms')


@pytest.mark.parametrize("kw", [
    {},
    {"path": "/plugins/notes/\u00e9\u2603\U0001f600\x00\x1f\\\"", "client": "::1", "method": "M\u00c9"},
    {"duration": 12345.678901, "status": 599, "bytes_in": 10**12, "aborted": True, "websocket": True},
    {"time": 1_790_000_000.9999, "duration": 0.0, "path": "/" * 5000},
])
def test_a_line_is_what_the_json_encoder_writes(kw: dict[str, Any]) -> None:
    e = entry(**kw)
    whole = int(e.time)
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((e.time - whole) * 1000):03d}Z",
        "client": e.client, "method": e.method, "path": e.path[:2048], "status": e.status, "bytes_in": e.bytes_in,
        "bytes_out": e.bytes_out, "duration_ms": round(e.duration * 1000, 2), "plugin": e.plugin,
        "aborted": e.aborted}
    if e.websocket:
        record["websocket"] = True
    assert e.line() == json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def test_rotation_keeps_one_previous_file_and_reading_spans_both(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.access_logs.mkdir(parents=True)
    size = len(entry().line())
    # two writers (two web workers) on the same files, alternating
    logs = [AccessLog(layout.access_logs, 10 * size), AccessLog(layout.access_logs, 10 * size)]
    for log in logs:
        log.REOPEN = 0  # look for the other's rotation before every line (a second apart in the web tier)
    for i in range(25):
        logs[i % 2].write(entry(i))
    current, previous = layout.access_logs / "notes.log", layout.access_logs / "notes.log.1"
    assert current.stat().st_size <= 11 * size and previous.stat().st_size <= 11 * size
    lines = previous.read_bytes().splitlines() + current.read_bytes().splitlines()
    paths = [json.loads(ln)["path"] for ln in lines]
    assert paths == [f"/plugins/notes/{i}" for i in range(25 - len(paths), 25)]  # in order, none lost since
    assert len(paths) > 12 and previous.exists()
    got = read_access(layout, "notes", 12)  # reaches into notes.log.1
    assert [r["path"] for r in got] == paths[-12:]
    assert read_access(layout, "notes", 0) == [] and read_access(layout, "other", 5) == []


def test_a_writer_that_has_not_seen_a_rotation_yet_writes_into_the_previous_file(tmp_path: Path) -> None:
    size = len(entry().line())
    early, late = AccessLog(tmp_path, 3 * size), AccessLog(tmp_path, 3 * size)
    late.write(entry(0))  # opened, and checked, just now
    for i in range(1, 5):
        early.write(entry(i))  # rotates after the 4th line
    late.write(entry(5))
    previous = [json.loads(ln)["path"] for ln in (tmp_path / "notes.log.1").read_bytes().splitlines()]
    assert previous == [f"/plugins/notes/{i}" for i in (0, 1, 2, 3, 5)]  # kept, not lost
    late.REOPEN = 0
    late.write(entry(6))
    current = [json.loads(ln)["path"] for ln in (tmp_path / "notes.log").read_bytes().splitlines()]
    assert current == ["/plugins/notes/4", "/plugins/notes/6"]


def test_a_cut_line_is_skipped_when_reading(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.access_logs.mkdir(parents=True)
    AccessLog(layout.access_logs, 1 << 20).write(entry(1))
    with open(layout.access_logs / "notes.log", "ab") as fh:
        fh.write(b'{"time": "2026-')  # a write cut short by a full disk
    AccessLog(layout.access_logs, 1 << 20).write(entry(2))
    assert [r["path"] for r in read_access(layout, "notes", 10)] == ["/plugins/notes/1"]


class _Resp:
    def __init__(self, body: Any, status: int = 200) -> None:
        self.response = body
        self.status_code = status


def _observed(tmp_path: Path, body: Any, method: str = "GET", status: int = 200) -> tuple[Any, Observer]:
    (tmp_path / "access").mkdir(exist_ok=True)
    observer = Observer(AccessLog(tmp_path / "access", 1 << 20), RequestMetrics())
    exchange = observer.begin("notes", method, "/plugins/notes/x", "10.0.0.1")
    return exchange.watch(_Resp(body, status)), observer


def _logged(tmp_path: Path) -> dict[str, Any]:
    lines = (tmp_path / "access" / "notes.log").read_bytes().splitlines()
    assert len(lines) == 1
    return dict(json.loads(lines[0]))


def test_a_complete_body_is_logged_when_it_ends_with_every_byte(tmp_path: Path) -> None:
    resp, _ = _observed(tmp_path, [b"abc", b"defg"])
    assert not (tmp_path / "access" / "notes.log").exists()  # not before the body is sent
    assert b"".join(resp.response) == b"abcdefg"
    resp.response.close()
    rec = _logged(tmp_path)
    assert (rec["status"], rec["bytes_out"], rec["aborted"]) == (200, 7, False)


def test_an_abandoned_body_counts_only_what_the_server_took_and_is_marked_aborted(tmp_path: Path) -> None:
    closed = []

    def stream() -> Iterator[bytes]:
        try:
            yield from (b"a" * 100, b"b" * 100, b"c" * 100)
        finally:
            closed.append(True)

    resp, observer = _observed(tmp_path, stream())
    it = iter(resp.response)
    next(it), next(it)  # the server wrote the first piece, then failed writing the second (client gone)
    resp.response.close()
    rec = _logged(tmp_path)
    assert (rec["bytes_out"], rec["aborted"]) == (100, True) and closed == [True]
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(
        observer.metrics.registry).decode())}  # type: ignore[union-attr]
    assert _value(families, names.ABORTED, plugin="notes") == 1
    assert _value(families, names.IN_FLIGHT, plugin="notes") == 0


def test_a_body_that_fails_midway_is_aborted(tmp_path: Path) -> None:
    def stream() -> Iterator[bytes]:
        yield b"x" * 10
        raise OSError("plugin reset the connection")

    resp, _ = _observed(tmp_path, stream())
    with pytest.raises(OSError):
        list(resp.response)
    resp.response.close()
    rec = _logged(tmp_path)
    assert (rec["bytes_out"], rec["aborted"]) == (10, True)


def test_head_and_204_are_complete_without_a_body(tmp_path: Path) -> None:
    resp, _ = _observed(tmp_path, [b"ignored"], method="HEAD")
    resp.response.close()
    assert _logged(tmp_path)["aborted"] is False


def _value(families: dict[str, Any], name: str, **labels: str) -> float:
    fam = families[name.removesuffix("_total")]
    return float(sum(s.value for s in fam.samples if s.labels == labels and not s.name.endswith("_created")))


def test_request_series_names_and_status_classes(tmp_path: Path) -> None:
    resp, observer = _observed(tmp_path, [b"x" * 5], status=503)
    list(resp.response)
    resp.response.close()
    text = generate_latest(observer.metrics.registry).decode()  # type: ignore[union-attr]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert _value(families, names.REQUESTS, plugin="notes", status="5xx") == 1
    assert _value(families, names.RESPONSE_BYTES, plugin="notes") == 5
    assert families[names.REQUEST_DURATION].type == "histogram"
    assert families[names.IN_FLIGHT].type == "gauge"
    assert [status_class(s) for s in (101, 200, 302, 404, 599, 600, 42)] == ["1xx", "2xx", "3xx", "4xx", "5xx",
                                                                           "other", "other"]


SNAPSHOT = {"uptime": 12.5, "web": {"public": True, "admin": True},
            "states": ["stopped", "starting", "running", "degraded", "backoff", "quarantined", "stopping"],
            "plugins": {
                "notes": {"state": "running", "enabled": True, "restarts": 2, "quarantines": 1, "start_seconds": 0.8,
                          "egress_refused": 3, "memory_bytes": 52428800, "cpu_seconds": 1.5, "processes": 3},
                "wiki": {"state": "quarantined", "enabled": True, "restarts": 12, "quarantines": 1,
                         "start_seconds": None, "egress_refused": 0}}}


def test_supervisor_series_parse_and_name_every_plugin(tmp_path: Path) -> None:
    text = admin_metrics.exposition(SNAPSHOT, tmp_path / "none").decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert all(name.startswith("plugin_host_") for name in families)
    assert _value(families, names.PLUGIN_STATE, plugin="wiki", state="quarantined") == 1
    assert _value(families, names.PLUGIN_STATE, plugin="wiki", state="running") == 0
    assert _value(families, names.PLUGIN_RESTARTS, plugin="notes") == 2
    assert families[names.PLUGIN_RESTARTS].type == "counter"
    assert _value(families, names.PLUGIN_MEMORY, plugin="notes") == 52428800
    assert _value(families, names.PLUGINS, state="running") == 1
    assert _value(families, names.WEB_UP, app="public") == 1
    assert "plugin_host_plugin_memory_bytes{plugin=\"wiki\"}" not in text  # nothing measured, nothing shown


class Refused(Exception):
    """Stands in for host.errors.AdminError: what the admin client raises when the supervisor says no."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class _Backend:
    def __init__(self, tmp_path: Path, token: str | None = "phk_good") -> None:
        self.path = tmp_path / "run" / "admin.sock"
        self.token = token
        self.calls: list[tuple[str, str | None]] = []

    def call(self, op: str, credential: str | None, *, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        self.calls.append((op, credential))
        if credential != self.token:
            raise Refused(401, "send a token")
        return SNAPSHOT


def test_metrics_route_passes_the_bearer_token_to_the_supervisor(tmp_path: Path) -> None:
    app = Flask(__name__)
    backend = _Backend(tmp_path)

    @app.errorhandler(Refused)
    def refused(exc: Refused) -> tuple[str, int]:
        return str(exc), exc.status

    admin_metrics.register(app, backend)
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer phk_good"})
    assert ok.status_code == 200 and ok.mimetype == "text/plain"
    assert backend.calls == [("metrics", None), ("metrics", "phk_good")]
    assert any(f.name == names.PLUGIN_STATE for f in text_string_to_metric_families(ok.get_data(as_text=True)))


def _app(tmp_path: Path, **settings: Any) -> Any:
    from host import routes
    from host.app import create_app
    from host.registry import PluginRecord
    from host.settings import HostSettings

    (tmp_path / "run" / "access_log").mkdir(parents=True)
    off = PluginRecord("off", "1.0", "inst", {"name": "off"}, False, 3, 0.0, 0.0)
    routes.publish(tmp_path / "run" / "routes.json", routes.snapshot([off]), None)
    return create_app(HostSettings(home=tmp_path, **settings))


def test_requests_to_a_plugin_are_logged_without_their_query_string(tmp_path: Path) -> None:
    app = _app(tmp_path)
    client = app.test_client()
    for path in ("/plugins/off/page?reset_code=s3cret", "/plugins/nosuch/page"):  # disabled; no such plugin
        with client.get(path) as resp:  # logged when the server closes the response
            assert resp.status_code == 404
    lines = read_access(Layout(tmp_path), "off", 10)
    assert [(r["path"], r["status"], r["method"]) for r in lines] == [("/plugins/off/page", 404, "GET")]
    assert "s3cret" not in (tmp_path / "run" / "access_log" / "off.log").read_text()
    assert sorted(p.name for p in (tmp_path / "run" / "access_log").iterdir()) == ["off.log"]
    text = generate_latest(app.extensions["plugin_host"]["observer"].metrics.registry).decode()
    assert 'plugin="off"' in text and "nosuch" not in text


def test_access_log_and_request_metrics_can_be_switched_off(tmp_path: Path) -> None:
    app = _app(tmp_path, access_log=False, request_metrics=False)
    with app.test_client().get("/plugins/off/page") as resp:
        assert resp.status_code == 404
    assert not (tmp_path / "run" / "access_log" / "off.log").exists()
    assert app.extensions["plugin_host"]["observer"].metrics is None


def test_follow_opens_no_link_the_web_user_planted(tmp_path: Path) -> None:
    from host.access_log import open_current

    layout = Layout(tmp_path)
    layout.access_logs.mkdir(parents=True)
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret\n")
    (layout.access_logs / "notes.log").symlink_to(secret)
    assert open_current(layout, "notes") is None
    (layout.access_logs / "notes.log").unlink()
    AccessLog(layout.access_logs, 1 << 20).write(entry(1))
    fh = open_current(layout, "notes")
    assert fh is not None
    with fh:
        assert json.loads(fh.readline())["path"] == "/plugins/notes/1"


class _Sup:
    """What op ``metrics`` reads of the supervisor: no plugins, no web tier."""

    def __init__(self, home: Path, **settings: Any) -> None:
        import threading

        from host.registry import Registry
        from host.settings import HostSettings

        self.settings = HostSettings(home=home, **settings)
        self.layout = Layout(home)
        self.layout.ensure()
        self.registry = Registry(self.layout.registry)
        self.web_user = None
        self._lock = threading.Lock()
        self.workers: dict[str, Any] = {}
        self.egress_refusals: dict[str, int] = {}
        self.started = 0.0
        self.tiers: dict[str, Any] = {}


@pytest.mark.parametrize("public", [False, True])
def test_the_metrics_op_needs_a_read_token_unless_metrics_are_public(tmp_path: Path, public: bool) -> None:
    from host.supervisor.admin import AdminOps

    sup = _Sup(tmp_path / "h", metrics_public=public)
    read = sup.registry.create_token("prometheus", "read")
    ops = AdminOps(sup)  # type: ignore[arg-type]
    assert "plugins" in ops.handle({"op": "metrics", "credential": read})
    anonymous = ops.handle({"op": "metrics"})
    assert ("plugins" in anonymous) is public
    assert ops.handle({"op": "metrics", "credential": "phk_" + "x" * 43})["problem"]["status"] == 401
    if not public:
        assert anonymous["problem"]["status"] == 401

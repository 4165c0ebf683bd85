"""/metrics on the admin listener and the per-plugin access log, against a real host with two public web
workers: counts exact across workers, the text parses with prometheus_client's own parser, and the access log
has a line for a normal, a streamed, an aborted request and a WebSocket."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from host.registry import Registry
from tests.integration import ws_client
from tests.integration.harness import FIXTURES, ServedHost, run_host, short_home, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a root host: web user, cgroups")


@pytest.fixture(scope="module")
def host() -> Iterator[ServedHost]:
    with short_home() as home:
        for src in (FIXTURES / "echo", FIXTURES / "websocket"):
            run_host(home, "install", str(src), "--yes", check=True)
        served = ServedHost(home, env={"HOST_WEB_WORKERS": "2", "HOST_WEB_THREADS": "8",
                                       "HOST_LOG_MAX_BYTES": "1048576"})
        served.start(wait_plugins=("echo", "websocket"))
        try:
            yield served
        finally:
            served.stop()


@pytest.fixture(scope="module")
def token(host: ServedHost) -> str:
    return Registry(host.home / "registry.db").create_token("prometheus", "read")


def scrape(host: ServedHost, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # The first one waits for the admin web tier to start (it starts with the admin listener's first connection).
    return httpx.get(f"{host.admin_url}/metrics", headers=headers, timeout=60)


def samples(host: ServedHost, token: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = scrape(host, token)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return got.get((name, frozenset(labels.items())), 0.0)


def access(host: ServedHost, name: str) -> list[dict[str, Any]]:
    path = host.home / "run" / "access_log" / f"{name}.log"
    return [json.loads(ln) for ln in path.read_bytes().splitlines()] if path.exists() else []


def logged(host: ServedHost, name: str, pred: Any, what: str) -> dict[str, Any]:
    """The access log line ``pred`` picks, waited for (a line is written when the response has ended)."""
    return dict(wait_for(lambda: next((r for r in access(host, name) if pred(r)), None), 10, what=what))


def test_metrics_need_a_read_token(host: ServedHost, token: str) -> None:
    refused = scrape(host, None)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert scrape(host, "phk_" + "x" * 43).status_code == 401
    assert scrape(host, token).status_code == 200
    # never on the public listener
    assert httpx.get(f"{host.url}/metrics", timeout=10).status_code == 404


def test_requests_are_counted_exactly_across_web_workers(host: ServedHost, token: str) -> None:
    before = samples(host, token)
    n = 60

    def one(i: int) -> httpx.Response:
        # a new connection each: both workers accept on the listening socket
        return httpx.get(f"{host.url}/plugins/echo/status/{200 if i % 3 else 404}", timeout=10)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, range(n)))
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 40 and codes.count(404) == 20, [r.text for r in answers if r.status_code > 404]
    # every request is counted when its response has ended, which the client may see first
    def counted() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        got = samples(host, token)
        done = value(got, "plugin_host_requests_total", plugin="echo", status="2xx") - value(
            before, "plugin_host_requests_total", plugin="echo", status="2xx")
        return got if done >= 40 else None

    after = wait_for(counted, 10, what="40 requests counted")
    for status, expected in (("2xx", 40), ("4xx", 20)):
        delta = value(after, "plugin_host_requests_total", plugin="echo", status=status) - value(
            before, "plugin_host_requests_total", plugin="echo", status=status)
        assert delta == expected, (status, delta)
    assert value(after, "plugin_host_request_duration_seconds_count", plugin="echo") - value(
        before, "plugin_host_request_duration_seconds_count", plugin="echo") == n
    assert value(after, "plugin_host_requests_in_flight", plugin="echo") == 0
    # the counts came from both workers' files
    workers = {p.stem.rpartition("_")[2] for p in (host.home / "run" / "web_metrics").glob("counter_*.db")}
    assert len(workers) >= 2, workers


def test_metrics_show_each_plugins_state_restarts_and_resources(host: ServedHost, token: str) -> None:
    assert host.get("/plugins/echo/status/200").status_code == 200
    got = samples(host, token)
    for plugin in ("echo", "websocket"):
        assert value(got, "plugin_host_plugin_state", plugin=plugin, state="running") == 1
        assert value(got, "plugin_host_plugin_state", plugin=plugin, state="quarantined") == 0
        assert ("plugin_host_plugin_restarts_total", frozenset({("plugin", plugin)})) in got
        assert 1_000_000 < value(got, "plugin_host_plugin_memory_bytes", plugin=plugin) < 256 * 2**20
        assert value(got, "plugin_host_plugin_processes", plugin=plugin) >= 2
        assert value(got, "plugin_host_plugin_cpu_seconds_total", plugin=plugin) > 0
        assert 0 < value(got, "plugin_host_plugin_start_seconds", plugin=plugin) < 60
    assert value(got, "plugin_host_plugins", state="running") == 2
    assert value(got, "plugin_host_web_tier_up", app="public") == 1
    assert value(got, "plugin_host_supervisor_uptime_seconds") > 0
    assert value(got, "plugin_host_requests_total", plugin="echo", status="2xx") >= 1


def test_access_log_has_normal_streamed_and_uploaded_requests(host: ServedHost) -> None:
    assert host.get("/plugins/echo/status/201?reset_code=s3cret").status_code == 201
    line = logged(host, "echo", lambda r: r["path"] == "/plugins/echo/status/201", "the 201")
    assert (line["method"], line["status"], line["bytes_out"], line["aborted"]) == ("GET", 201, 10, False)
    assert line["client"] == "127.0.0.1" and line["plugin"] == "echo" and line["duration_ms"] > 0
    assert "s3cret" not in (host.home / "run" / "access_log" / "echo.log").read_text()

    size = 3 * 2**20 + 7
    with httpx.stream("GET", f"{host.url}/plugins/echo/bytes/{size}", timeout=30) as r:
        assert sum(len(c) for c in r.iter_raw()) == size
    line = logged(host, "echo", lambda r: r["path"] == f"/plugins/echo/bytes/{size}", "the stream")
    assert (line["status"], line["bytes_out"], line["aborted"]) == (200, size, False)

    body = os.urandom(300_000)
    assert httpx.post(f"{host.url}/plugins/echo/echo", content=body, timeout=30).json()["length"] == len(body)
    line = logged(host, "echo", lambda r: r["method"] == "POST", "the upload")
    assert line["bytes_in"] == len(body)

    web_uid = host.status()["web"]["uid"]
    assert (host.home / "run" / "access_log").stat().st_uid == web_uid != 0


def test_an_aborted_download_is_logged_with_what_was_sent(host: ServedHost) -> None:
    size = 512 * 2**20
    sock = socket.create_connection(("127.0.0.1", host.port), timeout=10)
    sock.sendall(f"GET /plugins/echo/bytes/{size} HTTP/1.1\r\nHost: 127.0.0.1:{host.port}\r\n\r\n".encode())
    got = 0
    while got < 2**20:
        got += len(sock.recv(65536))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    sock.close()
    line = logged(host, "echo", lambda r: r["path"] == f"/plugins/echo/bytes/{size}", "the aborted download")
    assert line["aborted"] is True and line["status"] == 200
    assert got - 2**16 <= line["bytes_out"] < size // 4


def test_a_websocket_is_one_line_at_close(host: ServedHost) -> None:
    answer = ws_client.connect(("127.0.0.1", host.port), "/plugins/websocket/echo")
    assert answer.ws is not None, answer
    answer.ws.send(b"x" * 1000)
    assert answer.ws.recv()[1] == b"x" * 1000
    time.sleep(0.2)
    assert not any(r.get("websocket") for r in access(host, "websocket"))  # still open: not yet
    answer.ws.close()
    line = logged(host, "websocket", lambda r: r.get("websocket"), "the WebSocket's line")
    assert line["status"] == 101 and line["bytes_in"] >= 1000 and line["bytes_out"] >= 1000


def test_host_logs_access_prints_the_last_lines(host: ServedHost) -> None:
    for i in range(3):
        assert host.get(f"/plugins/echo/status/20{i}").status_code == 200 + i
    wait_for(lambda: any(r["path"] == "/plugins/echo/status/202" for r in access(host, "echo")), 10)
    out = host.cli("logs", "echo", "--access", "-n", "2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[-1].split()[1:5] == ["127.0.0.1", "GET", '"/plugins/echo/status/202"', "202"]
    assert lines[-1].endswith("ms") and " out=10 " in lines[-1]


def test_unknown_plugin_names_leave_no_file(host: ServedHost) -> None:
    assert host.get("/plugins/nosuchplugin/x").status_code == 404
    assert not Path(host.home / "run" / "access_log" / "nosuchplugin.log").exists()


def test_the_access_log_outlives_a_restart_and_goes_with_uninstall(host: ServedHost, token: str) -> None:
    assert host.get("/plugins/websocket/").status_code in (200, 404)
    wait_for(lambda: access(host, "websocket"), 10, what="a line for websocket")
    kept = len(access(host, "echo"))
    assert kept > 0
    host.stop()
    host.start(wait_plugins=("echo", "websocket"), port=host.port)
    assert len(access(host, "echo")) == kept  # history, not wiped with the metrics files
    got = samples(host, token)
    assert value(got, "plugin_host_requests_total", plugin="echo", status="2xx") == 0  # counted from this start
    out = host.cli("uninstall", "websocket")
    assert out.returncode == 0, out.stderr
    assert not list((host.home / "run" / "access_log").glob("websocket.log*"))

"""Operators change a running host: install, disable, enable, uninstall while `host serve` runs."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import BUNDLED, FIXTURES, ServedHost, alive, served_plugins, wait_for


@pytest.fixture
def live() -> Iterator[ServedHost]:
    with served_plugins(BUNDLED / "example_plugin", wait=("example",)) as host:
        yield host


def test_install_while_serving_starts_it_and_reports_healthy(live: ServedHost) -> None:
    r = live.cli("install", str(FIXTURES / "echo"), "--yes")
    assert r.returncode == 0, r.stderr
    assert "==> starting" in r.stderr
    port = live.port
    assert f"==> healthy: serving at http://echo.localhost:{port}/ and http://127.0.0.1:{port}/plugins/echo/" \
        in r.stderr  # the running host's addresses, not the CLI's defaults
    assert live.get("/plugins/echo/status/201").status_code == 201
    with live.origin_client("echo") as on_its_origin:
        assert on_its_origin.get("/status/202").status_code == 202


def test_disable_stops_it_and_enable_brings_it_back(live: ServedHost) -> None:
    pid = live.plugin("example")["pid"]
    r = live.cli("disable", "example")
    assert r.returncode == 0, r.stderr
    assert live.get("/plugins/example/example").status_code == 404
    wait_for(lambda: not alive(pid), 15, what="the disabled plugin's process to exit")
    assert json.loads(live.cli("list", "--json").stdout)[0]["state"] == "disabled"

    assert live.cli("enable", "example").returncode == 0
    live.wait_state("example", "running", 30)
    assert live.get("/plugins/example/example").text == "Hello from Example Plugin!"


def test_uninstall_while_serving_stops_and_removes_it(live: ServedHost) -> None:
    pid = live.plugin("example")["pid"]
    r = live.cli("uninstall", "example")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not alive(pid), 15, what="the uninstalled plugin's process to exit")
    assert live.get("/plugins/example/example").status_code == 404
    assert "example" not in live.health()["plugins"]
    assert not (live.home / "plugins" / "example").exists()
    assert not (live.home / "data" / "example").exists()


def test_unknown_plugin_commands_fail_with_usage_code(live: ServedHost) -> None:
    for args in (("enable", "nope"), ("disable", "nope"), ("restart", "nope"), ("logs", "nope")):
        r = live.cli(*args)
        assert r.returncode == 2, args
        assert r.stderr.strip() == "error: nope: is not installed (see `host list`)"


def test_upgrade_while_serving_switches_with_no_failed_request_and_keeps_data(live: ServedHost, tmp_path: Path) -> None:
    src = tmp_path / "example-v2"
    shutil.copytree(BUNDLED / "example_plugin", src)
    (src / "plugin.toml").write_text((src / "plugin.toml").read_text().replace('"1.0.0"', '"1.1.0"'))
    (src / "example_plugin.py").write_text(
        (src / "example_plugin.py").read_text().replace("Hello from Example Plugin!", "Hello from v2!"))
    marker = live.home / "data" / "example" / "kept.txt"
    marker.write_text("survives upgrades")
    old_pid = live.plugin("example")["pid"]

    stop = threading.Event()
    seen: list[tuple[int, str]] = []

    def hammer() -> None:
        for _ in range(5000):
            if stop.is_set():
                return
            r = httpx.get(live.url + "/plugins/example/example", timeout=30)
            seen.append((r.status_code, r.text))

    t = threading.Thread(target=hammer)
    t.start()
    try:
        r = live.cli("install", str(src), "--yes")
    finally:
        time.sleep(0.5)
        stop.set()
        t.join(30)
    assert r.returncode == 0, r.stderr
    assert "==> healthy" in r.stderr
    assert live.get("/plugins/example/example").text == "Hello from v2!"
    assert {code for code, _ in seen} == {200}, sorted(set(seen))
    assert live.plugin("example")["version"] == "1.1.0"
    assert live.plugin("example")["pid"] != old_pid
    assert marker.read_text() == "survives upgrades"
    assert _events(live.home, "example", "restarted") == 1  # one switch, however often the CLI reconciled


def _events(home: Path, plugin: str, kind: str) -> int:
    with sqlite3.connect(home / "registry.db") as db:
        q = "SELECT COUNT(*) FROM events WHERE plugin = ? AND kind = ?"
        return int(db.execute(q, (plugin, kind)).fetchone()[0])


def test_an_upgrade_that_cannot_start_is_reported_and_the_old_version_keeps_serving(
        live: ServedHost, tmp_path: Path) -> None:
    src = tmp_path / "example-broken"
    shutil.copytree(BUNDLED / "example_plugin", src)
    (src / "plugin.toml").write_text((src / "plugin.toml").read_text().replace('"1.0.0"', '"2.0.0"'))
    # imports fine for the install check, dies when gunicorn loads it
    (src / "example_plugin.py").write_text("import sys\nif 'gunicorn' in sys.modules:\n"
                                           "    raise RuntimeError('v2 cannot start')\n"
                                           + (src / "example_plugin.py").read_text())
    old_pid = live.plugin("example")["pid"]
    r = live.cli("install", str(src), "--yes")
    assert r.returncode == 1
    assert "installed 2.0.0, but it did not start; the previous version keeps serving" in r.stderr
    assert live.get("/plugins/example/example").text == "Hello from Example Plugin!"
    assert live.plugin("example")["pid"] == old_pid
    assert _events(live.home, "example", "restart_failed") == 1
    # the install the old instance runs from is still on disk after yet another install
    serving = [d for d in (live.home / "plugins" / "example").iterdir() if d.name.startswith("1.0.0-")]
    assert serving, "the live install was deleted"

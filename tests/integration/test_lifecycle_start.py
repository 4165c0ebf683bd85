"""Lifecycle, end to end: start-up deadlines, liveness probes and scale to zero.

One home holds the installs; each test serves it with the settings it needs (short deadlines and probe
intervals would make a loaded machine's healthy plugins look sick, so they never apply to other tests).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import FIXTURES, ServedHost, run_host, unmount_under, wait_for
from tests.integration.lifecycle_support import (
    RequestLoop,
    events,
    plugin_pids,
    plugin_status,
    wait_gone,
)

IDLE = 3.0  # steady's idle timeout (scale to zero)
# The web tier marks a plugin active at most once a second, so idleness is measured from up to 1 s early.
ACTIVITY_GRANULARITY = 1.0


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ph-", dir="/tmp"))
    home = d / "h"
    for src in ("hang_on_start", "hang_on_request"):
        run_host(home, "install", str(FIXTURES / src), "--yes", "--no-enable", check=True)
    run_host(home, "install", str(FIXTURES / "steady"), "--yes", check=True)
    r = run_host(home, "config", "steady", "--idle-timeout", str(IDLE), check=True)
    assert f"idle_timeout = {IDLE}" in r.stdout
    try:
        yield home
    finally:
        unmount_under(d)  # disk images a killed host left mounted
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def serve(home: Path) -> Iterator[list[ServedHost]]:
    """Call ``serve[0]``-style: tests append the host they start; it is stopped afterwards."""
    hosts: list[ServedHost] = []
    try:
        yield hosts
    finally:
        for h in hosts:
            h.stop()


def start(home: Path, hosts: list[ServedHost], **env: str) -> ServedHost:
    host = ServedHost(home, env={f"HOST_{k.upper()}": v for k, v in env.items()})
    hosts.append(host)
    return host.start()


def test_hang_on_start_times_out_and_leaves_nothing_behind(home: Path, serve: list[ServedHost]) -> None:
    # 5 s, not less: on a loaded 2-core machine the plugin's own last words must have been printed by then
    host = start(home, serve, start_timeout="5", max_failures="2")
    try:
        assert host.cli("enable", "hang-on-start").returncode == 0
        st = host.wait_state("hang-on-start", "quarantined", timeout=30)
        assert "2 failures in 600s" in st["reason"]
        # not ready (the readiness probe's last error), then the plugin's own last words
        expected = "not ready within 5s (last probe: no answer within "
        assert expected in st["reason"] and st["reason"].endswith("hang-on-start: waiting for a dependency that "
                                                                   "never comes"), st["reason"]
        crashed = events(home, "hang-on-start", "crashed")
        assert crashed and crashed[0].detail["reason"].startswith(expected)
        assert crashed[0].detail["cause"] == "readiness"
        # The hung instances were killed, whole trees, not just abandoned.
        wait_gone(plugin_pids(home, "hang-on-start"), timeout=5)
        r = host.get("/plugins/hang-on-start/")
        assert r.status_code == 503 and r.json()["title"] == "Plugin quarantined"
    finally:
        host.cli("disable", "hang-on-start")


def test_liveness_probe_restarts_a_hung_plugin(home: Path, serve: list[ServedHost]) -> None:
    host = start(home, serve, probe_interval="0.3", probe_timeout="0.5", probe_failures="2")
    try:
        assert host.cli("enable", "hang-on-request").returncode == 0
        host.wait_state("hang-on-request", "running", timeout=30)
        before = host.get("/plugins/hang-on-request/started").json()["started"]
        old = plugin_pids(home, "hang-on-request")
        assert host.get("/plugins/hang-on-request/").text == "alive"
        r = httpx.post(host.url + "/plugins/hang-on-request/hang", timeout=10)
        assert r.text == "hanging from now on"
        # Every request hangs now, the probe's too: after two missed probes it is killed and restarted.
        wait_for(lambda: events(home, "hang-on-request", "crashed"), 15, what="the hung plugin to be killed")
        (crash,) = events(home, "hang-on-request", "crashed")
        assert crash.detail["reason"] == ("unhealthy: no answer within 0.5s to GET / (its manifest's health_path): "
                                          "every one of its threads busy (resources.threads), or a slow page")
        wait_gone(old)
        host.wait_state("hang-on-request", "running", timeout=15)
        assert host.get("/plugins/hang-on-request/").text == "alive"
        assert host.get("/plugins/hang-on-request/started").json()["started"] != before
        assert plugin_status(host, "hang-on-request")["restarts"] == 1
    finally:
        host.cli("disable", "hang-on-request")


def _ready_count(home: Path) -> int:
    return len(events(home, "steady", "ready"))


def test_scale_to_zero_cold_start_one_start_for_concurrent_requests_and_idle_stop(
        home: Path, serve: list[ServedHost]) -> None:
    host = start(home, serve)
    # Asleep from the start: an idle-timeout plugin waits for its first request.
    time.sleep(0.5)
    st = plugin_status(host, "steady")
    assert st["state"] == "stopped" and st["pid"] is None and st["asleep"]
    assert plugin_pids(home, "steady") == set()

    # Cold start: the first request starts it and gets a real answer.
    readies = _ready_count(home)
    t0 = time.monotonic()
    r = host.get("/plugins/steady/")
    assert r.status_code == 200 and r.text == "steady"
    cold = time.monotonic() - t0
    assert _ready_count(home) == readies + 1
    assert plugin_status(host, "steady")["state"] == "running"

    # Kept awake while used: a request loop longer than the idle timeout does not let it sleep.
    with RequestLoop(host.url + "/plugins/steady/", max_seconds=IDLE * 2) as loop:
        time.sleep(IDLE * 1.5)
    loop.assert_all_ok()
    assert not events(home, "steady", "scaled_to_zero")

    # Idle: it stops by itself, its processes with it.
    t_idle = time.monotonic()
    live = plugin_pids(home, "steady")
    wait_for(lambda: events(home, "steady", "scaled_to_zero"), IDLE + 10, what="steady to scale to zero")
    assert time.monotonic() - t_idle >= IDLE - ACTIVITY_GRANULARITY - 0.1
    wait_gone(live)
    assert plugin_status(host, "steady")["state"] == "stopped"

    # Concurrent first requests: every one is answered, and the plugin was started ONCE.
    readies = _ready_count(home)
    results: list[int] = []
    barrier = threading.Barrier(8)

    def first_request() -> None:
        barrier.wait(10)
        results.append(httpx.get(host.url + "/plugins/steady/", timeout=30).status_code)

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 8, host.read_log()[-6000:]
    assert _ready_count(home) == readies + 1
    assert cold < 30  # sanity only; bench/lifecycle.py measures it


def test_the_supervisor_probes_bubblewrap_once_not_at_every_start(home: Path, serve: list[ServedHost]) -> None:
    """Each start and cold start runs bwrap once (the sandbox), not twice (a probe first): the supervisor
    probed it when it started and names the backend in the policy."""
    from sandbox_runner.bwrap import find

    real, _ = find()
    if real is None:
        pytest.skip("no bubblewrap on this machine")
    calls = home.parent / "bwrap-calls"
    wrapper = home.parent / "bwrap-counting"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    host = ServedHost(home, env={"SANDBOX_RUNNER_BWRAP": str(wrapper)})
    serve.append(host)
    host.start()
    def starts() -> int:  # a restart of a plugin that fell asleep again (IDLE) is a start, not a replacement
        return _ready_count(home) + len(events(home, "steady", "restarted"))

    before = starts()
    assert host.get("/plugins/steady/").status_code == 200  # a cold start
    run_host(home, "restart", "steady", check=True)  # and a second instance
    assert starts() == before + 2
    lines = calls.read_text().splitlines()
    sandboxes = [ln for ln in lines if "--die-with-parent" in ln]
    probes = [ln for ln in lines if ln.endswith("-- /bin/true")]
    assert len(sandboxes) == 2, lines
    assert len(probes) <= 1, lines  # the supervisor's own, once

"""Lifecycle, end to end: nothing outlives its owner. A plugin's daemonised grandchild dies with its instance;
host SIGTERM leaves no process; host SIGKILL takes every plugin and the web tier along; stale sockets go.

``leak-children`` leaves a setsid() grandchild that ignores SIGTERM/SIGHUP and carries a marker in its argv,
so the test finds its host-visible pid in /proc (inside its pid namespace it has another pid).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import FIXTURES, ServedHost, alive, run_host, unmount_under, wait_for
from tests.integration.lifecycle_support import (
    pids_matching,
    plugin_pids,
    root_pid,
    status,
    wait_gone,
)

PLUGINS = ("leak-children", "steady")


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ph-", dir="/tmp"))
    home = d / "h"
    for src in ("leak_children", "steady"):
        run_host(home, "install", str(FIXTURES / src), "--yes", check=True)
    try:
        yield home
    finally:
        unmount_under(d)  # disk images a killed host left mounted
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def host(home: Path) -> Iterator[ServedHost]:
    served = ServedHost(home).start(wait_plugins=PLUGINS)
    try:
        yield served
    finally:
        served.stop()
        # Whatever a test did, nothing of this home may survive its host (the tests below prove why).
        if served.proc is not None and served.proc.returncode is not None:
            leftovers = pids_matching(str(home))
            for pid in leftovers:  # only processes of our own temp home: never someone else's
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def leak(host: ServedHost) -> int:
    """Make leak-children leave a daemon; return its host-visible pid."""
    token = uuid.uuid4().hex[:12]
    r = httpx.post(f"{host.url}/plugins/leak-children/leak/{token}", timeout=10)
    assert r.status_code == 200 and r.text == "leaked"
    (pid,) = wait_for(lambda: pids_matching(f"leak-marker-{token}"), 5, what="the leaked daemon")
    assert alive(pid)
    return int(pid)


def test_leaked_daemon_dies_with_its_instance_on_restart(host: ServedHost) -> None:
    daemon = leak(host)
    old = root_pid(host, "leak-children")
    r = host.cli("restart", "leak-children")
    assert r.returncode == 0, r.stderr
    assert root_pid(host, "leak-children") != old
    wait_gone({daemon, old})
    assert host.get("/plugins/leak-children/").text == "alive"


def test_leaked_daemon_dies_when_the_plugin_stops(host: ServedHost) -> None:
    daemon = leak(host)
    tree = plugin_pids(host.home, "leak-children")
    assert host.cli("disable", "leak-children").returncode == 0
    try:
        wait_gone(tree | {daemon})
        assert plugin_pids(host.home, "leak-children") == set()
    finally:
        assert host.cli("enable", "leak-children").returncode == 0
    host.wait_state("leak-children", "running")


def test_host_sigterm_leaves_no_process(host: ServedHost) -> None:
    daemon = leak(host)
    everything = host.all_pids() | {daemon}
    assert len(everything) >= 10  # supervisor, web tier (master + worker), 2 plugins x 4, the daemon
    assert host.stop(signal.SIGTERM) == 0
    wait_gone(everything)
    assert pids_matching(str(host.home)) == set()
    assert "shutting down" in host.read_log()


def test_ctrl_c_stops_everything_in_order(host: ServedHost) -> None:
    """A terminal's Ctrl-C signals the whole foreground process group of `host serve`."""
    everything = host.all_pids()
    web = status(host)["web"]["pid"]
    assert host.proc is not None
    os.killpg(host.proc.pid, signal.SIGINT)
    assert host.proc.wait(30) == 0
    wait_gone(everything)
    log = host.read_log()
    assert "received SIGINT" in log
    assert "web tier exited" not in log, "the web tier died first and was restarted"
    assert web in everything


def test_host_sigkill_takes_every_plugin_and_the_web_tier_down(host: ServedHost) -> None:
    daemon = leak(host)
    web = status(host)["web"]["pid"]
    plugins = set().union(*(plugin_pids(host.home, n) for n in PLUGINS))
    everything = host.all_pids() | {daemon}
    assert web in everything and plugins <= everything and len(plugins) >= 8
    assert host.proc is not None
    host.proc.kill()  # SIGKILL: no handler, no clean-up; only PDEATHSIG and pid namespaces remain
    host.proc.wait(10)
    wait_gone(everything - {host.proc.pid})
    assert pids_matching(str(host.home)) == set()


def test_stale_sockets_are_removed_on_the_next_start(home: Path) -> None:
    run_dir = home / "run" / "steady"
    # A socket file nobody listens on any more: what a SIGKILLed instance leaves behind.
    stale = run_dir / "99.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    (run_dir / "http.sock").unlink(missing_ok=True)
    (run_dir / "http.sock").symlink_to("99.sock")
    served = ServedHost(home).start(wait_plugins=PLUGINS)
    try:
        assert not stale.exists()
        target = run_dir / (run_dir / "http.sock").readlink()
        assert target != stale and target.is_socket()
        assert served.get("/plugins/steady/").text == "steady"
    finally:
        served.stop()


def test_no_orphans_after_a_clean_stop_or_a_restart(home: Path) -> None:
    """Nothing of ours is ever adopted as an orphan when nothing was killed: not bwrap's init outliving an
    instance's runner, not the runner's own bwrap probe, not the host's own helper processes."""
    logs = []
    for _ in range(2):  # the second start comes after a clean stop
        served = ServedHost(home).start(wait_plugins=PLUGINS)
        try:
            assert served.cli("restart", "steady").returncode == 0  # an instance ends
            time.sleep(3)  # the reaper looks every second
        finally:
            assert served.stop() == 0
        logs.append(served.read_log())
    assert not [ln for log in logs for ln in log.splitlines() if "orphaned" in ln]

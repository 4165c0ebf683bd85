"""What a plugin instance is as processes: no resident sandbox runner (bwrap backend), a graceful stop still
reaches the plugin's gunicorn, and killing the instance's pid still ends its whole sandbox."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from sandbox_runner.bwrap import usable
from tests.integration.harness import FIXTURES, ServedHost, descendants, served_plugins, wait_for
from tests.integration.lifecycle_support import cmdline, wait_gone

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or usable()[0] is None,
                                reason="needs a root host where bubblewrap works (the non-resident backend)")


@pytest.fixture(scope="module")
def host() -> Iterator[ServedHost]:
    with served_plugins(FIXTURES / "steady", wait=("steady",)) as h:
        yield h


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            return sum(int(line.split()[1]) for line in fh if line.startswith("Pss:"))
    except OSError:
        return 0


def instance_pid(host: ServedHost) -> int:
    return int(host.wait_state("steady", "running")["pid"])


def test_no_sandbox_runner_stays_resident_per_plugin(host: ServedHost) -> None:
    pid = instance_pid(host)
    tree = {pid} | descendants(pid)
    # Beside the plugin's own gunicorn (arbiter and worker) only bwrap and the sandbox's init, both the bwrap
    # binary: the runner became bwrap. A resident runner was a Python interpreter of ~7.7 MiB PSS.
    assert exe(pid) == "bwrap"
    plumbing = [p for p in tree if exe(p) == "bwrap"]
    assert len(plumbing) == 2
    assert all(cmdline(p).split(" ")[1:3] == ["-m", "gunicorn"] for p in tree - set(plumbing))
    assert sum(pss_kib(p) for p in plumbing) < 3 * 1024


def exe(pid: int) -> str:
    return os.path.basename(os.readlink(f"/proc/{pid}/exe"))


def test_a_stop_reaches_the_plugins_gunicorn_gracefully(host: ServedHost) -> None:
    old = instance_pid(host)
    host.cli("restart", "steady")
    wait_for(lambda: host.plugin("steady").get("pid") not in (None, old), 60, what="a new instance")
    # gunicorn's arbiter logs the SIGTERM it handled: the old instance was stopped, not torn down
    # (a signal to bwrap would have killed its whole sandbox without a word)
    previous = host.cli("logs", "steady", "--previous", "-n", "200").stdout
    assert "Handling signal: term" in previous


def test_killing_the_instance_ends_its_whole_sandbox(host: ServedHost) -> None:
    pid = instance_pid(host)
    tree = {pid} | descendants(pid)
    assert len(tree) >= 4  # bwrap, the sandbox's init, gunicorn's arbiter and its worker
    os.kill(pid, signal.SIGKILL)
    wait_gone(tree, timeout=20)
    wait_for(lambda: host.plugin("steady").get("pid") not in (None, pid), 60, what="a new instance after the kill")
    host.wait_state("steady", "running")
    assert host.get("/plugins/steady/").text == "steady"

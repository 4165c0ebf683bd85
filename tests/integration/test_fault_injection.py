"""No leftovers, whatever dies: SIGKILL the sandbox runner, the supervisor or the web tier at a random point
(while plugins start, serve or restart), let the host recover (or start the next one), stop it cleanly, and
find nothing of it: no process, cgroup, mount, socket or run file.

PH_FAULT_ITERATIONS sets the number of rounds (3 by default, to keep CI cheap; 20 when asked); the rounds
are bounded in time too. PH_FAULT_SEED replays a run.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_runner.layers import cgroup
from tests.integration.harness import FIXTURES, ServedHost, alive, descendants, mounts_under, run_host, unmount_under
from tests.integration.lifecycle_support import cmdline, pids_matching, status, wait_gone

ITERATIONS = int(os.environ.get("PH_FAULT_ITERATIONS", "3"))
BUDGET = 60 + 90 * ITERATIONS  # seconds, for all rounds
PLUGINS = ("steady", "leak-children")
TARGETS = ("runner", "supervisor", "web tier")


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ph-", dir="/tmp"))
    home = d / "h"
    for src in ("steady", "leak_children"):
        run_host(home, "install", str(FIXTURES / src), "--yes", check=True)
    try:
        yield home
    finally:
        for pid in pids_matching(str(home)):  # only processes of our own temp home, if a round failed
            os.kill(pid, signal.SIGKILL)
        unmount_under(d)
        shutil.rmtree(d, ignore_errors=True)


def leftovers(home: Path) -> dict[str, list[str]]:
    """Everything of this home's hosts that may outlive them, when none is running."""
    prefix = f"plugin-host-{hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:8]}-"
    run = home / "run"
    return {
        "processes": [f"{p} {cmdline(p)[:100]}" for p in sorted(pids_matching(str(home)))],
        "cgroups": cgroup.leftovers(prefix),
        "mounts": mounts_under(home),
        "sockets": sorted(str(p) for p in run.rglob("*") if p.is_socket() or p.name.endswith(".sock")),
        "run files": sorted(str(p) for p in run.glob(".*.exit.json")),
    }


def runners(host: ServedHost) -> list[int]:
    """The instances' roots among the supervisor's children (one per live instance): the sandbox runner, or
    bwrap once a non-resident runner has become it."""
    assert host.proc is not None
    from host.supervisor.process import children_of

    return [p for p in children_of(host.proc.pid)
            if "-m sandbox_runner" in cmdline(p) or os.path.basename(cmdline(p).split(" ")[0]) == "bwrap"]


def test_sigkill_anything_at_any_point_and_nothing_remains(home: Path) -> None:
    seed = int(os.environ.get("PH_FAULT_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    deadline = time.monotonic() + BUDGET
    done: list[str] = []
    for i in range(ITERATIONS):
        assert time.monotonic() < deadline, f"out of time after {done} (seed {seed})"
        target = TARGETS[i % len(TARGETS)] if i < len(TARGETS) else rng.choice(TARGETS)
        delay = rng.uniform(0.0, 2.5)
        host = ServedHost(home)
        seen: set[int] = set()
        rc = None
        try:
            if target == "supervisor":
                # Mid start-up as often as not: plugins spawning, disk images mounting, the web tier booting;
                # otherwise after a restart, so a runner of another generation than the next host's first
                # ones dies with it (its cgroups are the next start's to remove, no runner will reuse them).
                if i == 1 or rng.random() < 0.5:  # the first supervisor round always
                    host.start(wait_plugins=PLUGINS, timeout=60)
                    host.cli("restart", rng.choice(PLUGINS))
                else:
                    _launch(host)
                time.sleep(delay)
                seen = _everything(host)
                assert host.proc is not None
                host.proc.kill()
                host.proc.wait(10)
                wait_gone(seen - {host.proc.pid}, timeout=20)  # parent-death signals and pid namespaces
                host = ServedHost(home)  # the next host cleans up after it
            host.start(wait_plugins=PLUGINS, timeout=60)
            if target != "supervisor":
                restarting = threading.Thread(target=host.cli, args=("restart", rng.choice(PLUGINS)), daemon=True)
                if rng.random() < 0.5:
                    restarting.start()  # a new instance starting while we strike
                time.sleep(delay)
                victim = rng.choice(runners(host) or [0]) if target == "runner" else status(host)["web"]["pid"]
                assert victim, f"no {target} to kill"
                seen = _everything(host)
                os.kill(victim, signal.SIGKILL)
                if restarting.is_alive():
                    restarting.join(60)
                for name in PLUGINS:
                    host.wait_state(name, "running", timeout=60)
                _wait_web(host, victim if target == "web tier" else None)
            seen |= _everything(host)
        finally:
            rc = host.stop()
        assert rc == 0, host.read_log()[-3000:]
        wait_gone(seen - ({host.proc.pid} if host.proc else set()), timeout=20)
        left = leftovers(home)
        assert not any(left.values()), f"round {i} ({target} after {delay:.2f}s, seed {seed}) left {left}"
        done.append(f"{target}@{delay:.2f}s")
    print(f"\n{len(done)} rounds, nothing left: {', '.join(done)} (seed {seed})")


def _launch(host: ServedHost) -> None:
    """Start `host serve` without waiting for it."""
    import subprocess

    from tests.integration.harness import HOST, free_port

    host.port = free_port()
    host.log = host.home.parent / f"serve-{host.port}.log"
    with open(host.log, "wb") as log:
        host.proc = subprocess.Popen([*HOST, "--home", str(host.home), "serve", "--bind", f"127.0.0.1:{host.port}"],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)


def _everything(host: ServedHost) -> set[int]:
    assert host.proc is not None
    return {host.proc.pid} | descendants(host.proc.pid) | pids_matching(str(host.home))


def _wait_web(host: ServedHost, killed: int | None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        web = status(host)["web"]["pid"]
        if web is not None and web != killed and alive(web):
            return
        time.sleep(0.1)
    raise AssertionError("the web tier did not come back")

"""PluginWorker decisions without processes: fake instances, a fake clock, one loop turn at a time."""

from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from host.exits import ExitReport
from host.registry import Registry
from host.settings import HostSettings
from host.supervisor import worker as worker_mod
from host.supervisor.logs import Tail
from host.supervisor.process import Readiness
from host.supervisor.state import State


class FakeInstance:
    """Duck-types host.supervisor.process.Instance; ``exit(rc)`` makes it die."""

    def __init__(self, run_dir: Path, generation: int, ready: Readiness = Readiness.READY) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.spec = SimpleNamespace(socket=run_dir / "http.sock", instance_socket=run_dir / f"{generation}.sock",
                                    install_id="i1",
                                    manifest=SimpleNamespace(permissions=SimpleNamespace(resources=None)))
        self.pid = 1000 + generation
        self.started_at = 0.0
        self.health_path = "/"
        self.returncode: int | None = None
        self.tail = Tail()
        self._ready = ready
        self.stopped = False
        self.ran_for = 1.0
        self.last_probe_error: str | None = None
        self.worker_exits: deque[int | None] = deque()
        self.oom_kills = 0  # what the cgroup counted since the last look

    def cgroup_news(self) -> dict[str, int]:
        news, self.oom_kills = self.oom_kills, 0
        return {"oom_kills": news, "forks_refused": 0}

    def exit_report(self) -> ExitReport | None:
        # what the runner writes when the command ended by itself (a stopped or killed runner writes none)
        return None if self.returncode is None or self.stopped else ExitReport(self.returncode, True)

    @property
    def live_pid(self) -> int | None:
        return self.pid if self.returncode is None else None

    def wait_ready(self, timeout: float, cancelled: Any, wake_fd: int | None = None) -> Readiness:
        if self._ready == Readiness.EXITED:
            self.returncode = 3
        return self._ready

    def poll(self) -> int | None:
        return self.returncode

    def wait_exit(self, timeout: float, extra_fd: int | None = None) -> bool:
        return self.returncode is not None

    def exit(self, rc: int) -> None:
        self.returncode = rc

    def stop(self, grace: float) -> int | None:
        self.stopped = True
        if self.returncode is None:
            self.returncode = 0
        return self.returncode

    def kill(self) -> None:
        self.stop(0)

    def cleanup(self) -> None:
        pass

    def last_lines(self, n: int = 5, drain: float = 0.0) -> tuple[str, ...]:
        return self.tail.last(n)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Worker(worker_mod.PluginWorker):
    """Spawns FakeInstances and never blocks: sleeping is a no-op, so one _step() is one decision."""

    def __init__(self, *a: Any, ready: Readiness = Readiness.READY, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.spawned: list[FakeInstance] = []
        self.ready = ready

    def _spawn(self) -> Any:
        self.generation += 1
        inst = FakeInstance(self.layout.run_dir(self.plugin), self.generation, self.ready)
        self.spawned.append(inst)
        return inst

    def _sleep(self, timeout: float | None) -> None:
        self._consume_wake()


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(worker_mod, "probe", lambda *a: None)  # every liveness probe succeeds

    def _make(idle: float = 0.0, ready: Readiness = Readiness.READY, **settings: Any) -> Worker:
        s = HostSettings(home=tmp_path / "h", idle_timeout=idle, probe_interval=1000.0, **settings)
        (tmp_path / "h" / "run").mkdir(parents=True, exist_ok=True)
        reg = Registry(tmp_path / "h" / "registry.db")
        return Worker("p", s, reg, clock=Clock(), ready=ready)

    return _make


def kinds(w: Worker) -> list[str]:
    return [e.kind for e in reversed(w.registry.events("p"))]


def test_enable_starts_and_points_the_public_socket_at_the_instance(make: Any) -> None:
    w = make()
    w.submit("enable")
    w._step()
    assert w.lc.state == State.RUNNING
    (inst,) = w.spawned
    assert inst.spec.socket.readlink().name == inst.spec.instance_socket.name
    assert kinds(w) == ["ready"]


def test_an_idle_timeout_plugin_sleeps_until_the_first_request(make: Any) -> None:
    w = make(idle=30)
    w.submit("enable")
    w._step()
    assert w.lc.state == State.STOPPED and not w.spawned and w.snapshot()["asleep"]
    w.submit("wake")
    w._step()
    assert w.lc.state == State.RUNNING and len(w.spawned) == 1


def test_concurrent_wakes_start_it_once_and_release_every_waiter(make: Any) -> None:
    w = make(idle=30)
    w.submit("enable")
    w._step()
    done = [threading.Event() for _ in range(5)]
    for ev in done:
        w._cmds.append(worker_mod.Command("wake", ev))
    w._step()
    assert len(w.spawned) == 1
    assert all(ev.is_set() for ev in done)
    assert kinds(w).count("ready") == 1


def test_a_wake_never_starts_a_disabled_or_quarantined_plugin(make: Any) -> None:
    w = make(idle=30)
    ev = threading.Event()
    w._cmds.append(worker_mod.Command("wake", ev))
    w._step()
    assert not w.spawned and ev.is_set()  # disabled: the waiter is told at once, nothing starts

    q = make(max_failures=1, ready=Readiness.EXITED)
    q.submit("enable")
    q._step()
    assert q.lc.state == State.QUARANTINED
    q.submit("wake")
    q._step()
    assert len(q.spawned) == 1 and q.lc.state == State.QUARANTINED


def test_a_crash_backs_off_then_restarts_and_a_restart_clears_quarantine(make: Any) -> None:
    w = make(max_failures=2)
    w.submit("enable")
    w._step()
    first = w.spawned[0]
    first.tail.add("Traceback (most recent call last):")
    first.tail.add("ValueError: bad config")
    first.tail.add("[INFO] Shutting down: Master")
    first.exit(1)
    w._step()
    assert w.lc.state == State.BACKOFF
    assert w.lc.reason == "exited with code 1: ValueError: bad config"
    w.lc.clock.t += 10  # type: ignore[attr-defined]
    w._step()
    assert w.lc.state == State.RUNNING and len(w.spawned) == 2 and w.lc.restarts == 1
    w.spawned[1].exit(-9)
    w._step()
    assert w.lc.state == State.QUARANTINED
    assert "killed by SIGKILL" in (w.lc.reason or "")
    assert kinds(w)[-1] == "quarantined"
    w.submit("restart")
    w._step()
    assert w.lc.state == State.RUNNING and w.lc.reason is None and len(w.spawned) == 3


def test_restart_while_running_replaces_with_no_gap(make: Any) -> None:
    w = make()
    w.submit("enable")
    w._step()
    old = w.spawned[0]
    w.submit("restart")
    w._step()
    new = w.spawned[1]
    assert w.instance is new and old.spec.socket.readlink().name == new.spec.instance_socket.name
    for t in w._drains:
        t.join(5)
    assert old.stopped and not new.stopped
    assert "restarted" in kinds(w)


def test_idle_plugin_scales_to_zero(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    w = make(idle=5)
    w.submit("enable")
    w.submit("wake")
    w._step()
    inst = w.spawned[0]
    monkeypatch.setattr(w, "_idle_for", lambda _inst: 4.0)
    w._step()
    assert w.lc.state == State.RUNNING
    monkeypatch.setattr(w, "_idle_for", lambda _inst: 6.0)
    w._step()
    assert w.lc.state == State.STOPPED and w.asleep and inst.stopped
    assert "scaled_to_zero" in kinds(w)
    assert not inst.spec.socket.exists()


def test_failed_probes_kill_and_restart(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    w = make(probe_failures=2)
    w.submit("enable")
    w._step()
    monkeypatch.setattr(worker_mod, "probe", lambda *a: "no answer within 3.0s")
    for _ in range(2):
        w._next_probe = 0.0
        w._step()
    assert w.spawned[0].stopped
    assert w.lc.state == State.BACKOFF and w.lc.reason == (
        "unhealthy: no answer within 3.0s to GET / (its manifest's health_path): every one of its threads busy "
        "(resources.threads), or a slow page")


def test_a_missing_public_socket_is_restored_not_restarted(make: Any) -> None:
    w = make()
    w.submit("enable")
    w._step()
    inst = w.spawned[0]
    inst.spec.socket.unlink()
    w._next_probe = 0.0
    w._step()
    assert inst.spec.socket.readlink().name == inst.spec.instance_socket.name
    assert w.lc.state == State.RUNNING and len(w.spawned) == 1


def test_snapshot_never_reaps(make: Any) -> None:
    w = make()
    w.submit("enable")
    w._step()
    inst = w.spawned[0]
    inst.poll = None  # type: ignore[method-assign,assignment]  # any call would raise
    assert w.snapshot()["pid"] == inst.pid


def test_stale_sockets_are_swept(make: Any) -> None:
    w = make()
    run_dir = w.layout.run_dir("p")
    run_dir.mkdir(parents=True)
    (run_dir / "7.sock").write_text("")
    (run_dir / "http.sock").symlink_to("7.sock")
    (run_dir / "keep.txt").write_text("")
    w.sweep_run_dir()
    assert sorted(p.name for p in run_dir.iterdir()) == ["keep.txt"]


def test_a_weaker_sandbox_is_announced_loudly(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    w = make(sandbox="weak")
    report = {"plugin": "p", "backend": "syscalls",
              "layers": {"namespaces": {"applied": False, "detail": "bwrap not usable"},
                         "landlock": {"applied": True, "detail": "ABI 7"}}}
    w.layout.sandbox_report("p").write_text(json.dumps(report))
    w.submit("enable")
    with caplog.at_level("WARNING"):
        w._step()
    assert w.lc.state == State.RUNNING
    assert "p: running with a weaker sandbox (HOST_SANDBOX=weak): missing namespaces" in caplog.text
    assert kinds(w) == ["ready", "sandbox_weak"]


def test_a_full_sandbox_is_not_announced(make: Any) -> None:
    w = make()
    w.layout.sandbox_report("p").write_text(json.dumps({"layers": {"landlock": {"applied": True}}}))
    w.submit("enable")
    w._step()
    assert kinds(w) == ["ready"]


def test_a_crash_is_recorded_with_its_cause_and_run_time_and_noted_in_the_plugins_log(make: Any) -> None:
    w = make()
    w.submit("enable")
    w._step()
    w.spawned[0].tail.add("MemoryError")
    w.spawned[0].exit(1)
    w._step()
    (crash,) = [e for e in w.registry.events("p") if e.kind == "crashed"]
    assert crash.detail == {"cause": "exited", "reason": "exited with code 1: MemoryError", "returncode": 1,
                            "ran_for": 1.0, "during_start": False}
    log = (w.layout.logs("p") / "current.log").read_text()
    assert "[plugin-host] instance ended after 1.0s: exited with code 1: MemoryError" in log
    # Recovered: the current reason goes, the last exit stays.
    w.lc.clock.t += 10  # type: ignore[attr-defined]
    w._step()
    snap = w.snapshot()
    assert snap["state"] == "running" and snap["reason"] is None
    assert snap["last_exit"]["reason"] == "exited with code 1: MemoryError"


def test_a_killed_plugin_is_replaced_on_the_next_turn_a_second_kill_waits_for_the_backoff(make: Any) -> None:
    w = make()
    w.submit("enable")
    w._step()
    w.spawned[0].exit(-9)  # SIGKILLed (the OOM killer, an operator's kill -9)
    w._step()
    assert w.lc.state == State.BACKOFF and w.snapshot()["retry_in"] == 0
    w._step()  # the clock did not move: no backoff to wait out
    assert w.lc.state == State.RUNNING and len(w.spawned) == 2 and w.lc.restarts == 1
    w.spawned[1].exit(-9)
    w._step()
    w._step()
    assert w.lc.state == State.BACKOFF and len(w.spawned) == 2  # a second failure in the window waits
    w.lc.clock.t += 1  # type: ignore[attr-defined]
    w._step()
    assert w.lc.state == State.RUNNING and len(w.spawned) == 3


def test_a_start_that_times_out_says_what_the_last_probe_saw(make: Any) -> None:
    w = make(ready=Readiness.TIMEOUT, start_timeout=2)
    w.submit("enable")
    w._step()
    assert w.lc.state == State.BACKOFF
    assert w.lc.reason == ("not ready within 2s (last probe: none; it probes GET /, its manifest's health_path, "
                           "for up to HOST_START_TIMEOUT)")
    (crash,) = [e for e in w.registry.events("p") if e.kind == "crashed"]
    assert crash.detail["cause"] == "readiness"


def test_a_stop_is_history_not_a_failure(make: Any) -> None:
    w = make()
    w.submit("enable")
    w._step()
    w.submit("stop", why="disabled")
    w._step()
    (stopped,) = [e for e in w.registry.events("p") if e.kind == "stopped"]
    assert stopped.detail["cause"] == "stopped" and stopped.detail["reason"] == "stopped by the host: disabled"
    assert w.lc.state == State.STOPPED and not w.lc.failures and w.lc.reason is None


def test_dying_workers_degrade_the_plugin_then_quarantine_it_loudly(make: Any) -> None:
    w = make(max_failures=3)
    w.submit("enable")
    w._step()
    inst = w.spawned[0]
    inst.tail.add("KeyError: 'user'")
    inst.worker_exits.append(1)
    w._step()
    assert w.lc.state == State.DEGRADED and w.instance is inst and not inst.stopped
    assert w.lc.reason == "worker exited with code 1: KeyError: 'user' (1 of 3 failures in 600s)"
    assert w.snapshot()["state"] == "degraded"
    inst.oom_kills = 1
    inst.worker_exits.append(-9)
    w._step()
    (death, oom) = [e for e in w.registry.events("p")[::-1] if e.kind == "worker_died"]
    assert oom.detail["cause"] == "out_of_memory" and death.detail["cause"] == "exited"
    inst.worker_exits.append(-9)
    w._step()
    assert w.lc.state == State.QUARANTINED and inst.stopped and w.instance is None
    assert w.lc.reason == "3 failures in 600s; last: worker killed by SIGKILL (not by the OOM killer): KeyError: 'user'"
    assert kinds(w)[-1] == "quarantined"
    log = (w.layout.logs("p") / "current.log").read_text()
    assert log.count("[plugin-host] worker died") == 3


def test_a_report_never_makes_a_plugin_look_better(make: Any) -> None:
    """Reports only ever add failures: a forged "OOM" without the cgroup's OOM kill reads as a plain kill,
    and nothing a plugin prints clears its degraded state or its failure window."""
    w = make(max_failures=10)
    w.submit("enable")
    w._step()
    inst = w.spawned[0]
    inst.tail.add("out of memory: the kernel's OOM killer ended a process")
    inst.worker_exits.append(-9)
    w._step()
    assert w.lc.state == State.DEGRADED and len(w.lc.failures) == 1
    assert w.lc.last_exit is not None and w.lc.last_exit.cause == "signal"


def test_reports_of_a_replaced_instance_are_ignored(make: Any) -> None:
    w = make()
    w.submit("enable")
    w._step()
    old = w.spawned[0]
    w.submit("restart")
    w._step()
    for t in w._drains:
        t.join(5)
    old.worker_exits.append(1)  # its shutdown, seen after the switch
    w._step()
    assert w.lc.state == State.RUNNING and not w.lc.failures

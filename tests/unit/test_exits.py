"""Exit causes from evidence (wait status, the runner's exit report, what the host did), never guesses."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from host.exits import Cause, ExitReport, Limits, classify, headline, host_killed, worker_death

SETUP = frozenset({2, 120, 121, 122})
LIMITS = Limits(memory_mb=128, processes=16, cpu_seconds=2, file_size_mb=1)
TAIL = ("Traceback (most recent call last):", '  File "app.py", line 3', "RuntimeError: boom",
        "[INFO] Shutting down: Master")


def run(rc: int, report: ExitReport | None, start: bool = False, tail: tuple[str, ...] = ()) -> tuple[str, str]:
    info = classify(rc, report, LIMITS, during_start=start, setup_codes=SETUP, stderr_tail=tail, ran_for=1.5)
    assert info.ran_for == 1.5
    return info.cause, info.reason


@pytest.mark.parametrize(("rc", "report", "start", "tail", "cause", "reason"), [
    # The OOM killer, counted by the cgroup: not a guess from the signal.
    (-9, ExitReport(-9, True, oom_kills=1), False, (), Cause.OOM,
     "out of memory: the kernel's OOM killer ended a process at the memory limit (memory_mb=128); killed by SIGKILL"),
    # SIGKILL without an OOM kill: whoever sent it, it was not the memory limit.
    (-9, ExitReport(-9, True), False, (), Cause.SIGNAL,
     "killed by SIGKILL (not by the OOM killer; its CPU time limit, cpu_seconds=2, ends a process that ignores "
     "SIGXCPU this way)"),
    # The runner itself was SIGKILLed from outside: it wrote no report.
    (-9, None, False, (), Cause.KILLED, "killed by SIGKILL from outside the host (its sandbox runner, pid namespace "
                                        "and all)"),
    # Someone outside sent the runner SIGTERM, which it forwarded: gunicorn exited 0 as asked.
    (0, ExitReport(0, True, signals=("SIGTERM",)), False, (), Cause.KILLED,
     "stopped by SIGTERM from outside the host (exited with code 0)"),
    (-24, ExitReport(-24, True), False, (), Cause.CPU_LIMIT, "CPU time limit (cpu_seconds=2): killed by SIGXCPU"),
    (-25, ExitReport(-25, True), False, (), Cause.FILE_SIZE, "file size limit (file_size_mb=1): killed by SIGXFSZ"),
    (1, ExitReport(1, True, forks_refused=7), False, TAIL, Cause.PID_LIMIT,
     "process limit reached (processes=16): the kernel refused 7 fork(s); exited with code 1: RuntimeError: boom"),
    (3, ExitReport(3, True), True, TAIL, Cause.IMPORT, "crashed at import (exited with code 3): RuntimeError: boom"),
    (3, ExitReport(3, True), False, TAIL, Cause.EXITED, "exited with code 3: RuntimeError: boom"),
    (0, ExitReport(0, True), False, (), Cause.EXITED, "exited with code 0 although nobody asked it to stop"),
    (-11, ExitReport(-11, True), False, (), Cause.SIGNAL, "killed by SIGSEGV"),
    (121, None, True, ("sandbox_runner: p: landlock: unavailable",), Cause.SETUP,
     "sandbox set-up failed (exit 121): sandbox_runner: p: landlock: unavailable"),
    (122, ExitReport(122, False), True, (), Cause.SETUP, "sandbox set-up failed (exit 122)"),
])
def test_instance_exits_say_what_happened(rc: int, report: ExitReport | None, start: bool, tail: tuple[str, ...],
                                          cause: Cause, reason: str) -> None:
    assert run(rc, report, start, tail) == (cause, reason)


def test_only_a_setup_failure_is_not_worth_retrying() -> None:
    assert classify(121, None, LIMITS, during_start=True, setup_codes=SETUP).setup_failure
    assert classify(122, ExitReport(122, False), LIMITS, during_start=True, setup_codes=SETUP).setup_failure
    # A command that exits 2 (gunicorn's usage error) is not the runner's USAGE once the report says it ran.
    assert not classify(2, ExitReport(2, True), LIMITS, during_start=True, setup_codes=SETUP).setup_failure


def test_worker_deaths_are_described_with_the_hosts_own_cgroup_reading() -> None:
    oom = worker_death(-9, LIMITS, oom_kills=1)
    assert oom.worker and oom.cause == Cause.OOM
    assert oom.reason.endswith("; worker killed by SIGKILL")
    # A forged "SIGKILL" report without an OOM kill in the cgroup reads as what it is.
    assert worker_death(-9, Limits(), stderr_tail=()).reason == "worker killed by SIGKILL (not by the OOM killer)"
    assert worker_death(1, LIMITS, stderr_tail=TAIL).reason == "worker exited with code 1: RuntimeError: boom"
    assert worker_death(-24, LIMITS).reason == "CPU time limit (cpu_seconds=2): worker killed by SIGXCPU"
    assert worker_death(None, LIMITS).reason == "worker exited"


def test_the_host_says_when_it_killed_it() -> None:
    ready = host_killed(Cause.READINESS, "not ready within 2s (last probe: no answer within 2.0s)", -9,
                        ("hang-on-start: waiting for a dependency",), 2.1, during_start=True)
    assert ready.reason == ("not ready within 2s (last probe: no answer within 2.0s): hang-on-start: waiting for a "
                            "dependency")
    assert ready.cause == Cause.READINESS and ready.during_start and not ready.setup_failure
    assert host_killed(Cause.UNHEALTHY, "unhealthy: no answer within 0.5s", -9, TAIL).reason == \
        "unhealthy: no answer within 0.5s"


def test_exit_report_is_read_once_and_garbage_is_no_report(tmp_path: Path) -> None:
    path = tmp_path / "exit.json"
    path.write_text(json.dumps({"status": -9, "started": True, "signals": ["SIGTERM"], "oom_kills": 2,
                                "forks_refused": 0}))
    assert ExitReport.read(path) == ExitReport(-9, True, ("SIGTERM",), 2, 0)
    assert not path.exists()
    assert ExitReport.read(path) is None
    path.write_text("{not json")
    assert ExitReport.read(path) is None
    path.write_text(json.dumps({"started": True}))
    assert ExitReport.read(path) is None


def test_headline_prefers_the_exception_line() -> None:
    lines = ("Traceback (most recent call last):", '  File "app.py", line 3', "KeyError: 'x'",
             "[ERROR] Worker (pid:4) exited with code 3.", "[ERROR] Reason: Worker failed to boot.")
    assert headline(lines) == "KeyError: 'x'"
    assert headline(("just a line",)) == "just a line"
    assert headline(()) is None


def test_signal_names_for_unknown_numbers() -> None:
    assert worker_death(-signal.SIGABRT, Limits()).reason == "worker killed by SIGABRT"
    assert worker_death(-77, Limits()).reason == "worker killed by signal 77"


def test_gunicorns_own_lines_are_not_a_plugins_last_words() -> None:
    lines = ("misbehave: exiting with code 1", "[2026-11-30 13:52:07 +0000] [2] [ERROR] Worker (pid:3) was sent "
             "SIGKILL! Perhaps out of memory?", "[2026-11-30 13:52:07 +0000] [5] [INFO] Booting worker with pid: 5")
    assert headline(lines) == "misbehave: exiting with code 1"
    assert headline(lines[1:]) is None

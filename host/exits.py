"""Why a plugin process ended, from evidence the plugin cannot forge: the runner's wait status and exit
report (the command's status, the signals forwarded to it, the cgroup's OOM-kill and refused-fork counters,
read after the tree died), and what the host itself did. Pure: no processes, no sockets.

Used for running instances, for their gunicorn workers and at install time (pip, the entrypoint check), so
every failure a user sees is worded the same way.
"""

from __future__ import annotations

import enum
import json
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Cause(enum.StrEnum):
    """What ended it, as a stable word for machines (`host list --json`, `host status --json`, events)."""

    EXITED = "exited"  # exited with code N on its own
    IMPORT = "import_error"  # crashed while importing the app
    SIGNAL = "signal"  # killed by a signal from inside its sandbox (SIGSEGV, SIGABRT, ...)
    OOM = "out_of_memory"  # the kernel's OOM killer, at the cgroup memory limit
    PID_LIMIT = "pid_limit"  # forks refused at the cgroup's process limit
    CPU_LIMIT = "cpu_limit"  # RLIMIT_CPU: SIGXCPU
    FILE_SIZE = "file_size_limit"  # RLIMIT_FSIZE: SIGXFSZ
    KILLED = "killed"  # a signal from outside the host (an operator, another program)
    STOPPED = "stopped"  # the host stopped it (disable, restart, uninstall, idle, shutdown)
    READINESS = "readiness"  # never answered its health path in time; the host killed it
    UNHEALTHY = "unhealthy"  # failed its liveness probe; the host killed it
    SETUP = "sandbox_setup"  # the sandbox could not be built
    TIMEOUT = "timeout"  # an install step ran out of time


@dataclass(frozen=True)
class Limits:
    """The resource limits the process ran under, to name the one it hit."""

    memory_mb: int | None = None
    processes: int | None = None
    cpu_seconds: int | None = None
    file_size_mb: int | None = None

    @classmethod
    def of(cls, resources: Any) -> Limits:
        """From a manifest's ``permissions.resources`` (or anything with those attributes)."""
        return cls(getattr(resources, "memory_mb", None), getattr(resources, "processes", None),
                   getattr(resources, "cpu_seconds", None), getattr(resources, "file_size_mb", None))


@dataclass(frozen=True)
class ExitReport:
    """What the runner wrote once the command ended (``Policy.exit_path``)."""

    status: int  # the command's exit code, or -signal
    started: bool  # the command was exec'd (False: the sandbox set-up failed)
    signals: tuple[str, ...] = ()  # signals the runner was sent and forwarded to the command
    oom_kills: int = 0
    forks_refused: int = 0

    @classmethod
    def read(cls, path: Path, remove: bool = True) -> ExitReport | None:
        """The report at ``path`` (removed once read), or None when the runner wrote none (it was killed)."""
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        finally:
            if remove:
                path.unlink(missing_ok=True)
        try:
            return cls(int(raw["status"]), bool(raw.get("started")), tuple(str(s) for s in raw.get("signals", ())),
                       int(raw.get("oom_kills", 0)), int(raw.get("forks_refused", 0)))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class ExitInfo:
    """How an instance (or one of its workers) ended, in words an operator can act on."""

    returncode: int | None
    during_start: bool
    reason: str
    setup_failure: bool = False  # the sandbox could not be set up: retrying will not help
    stderr_tail: tuple[str, ...] = ()
    cause: Cause = Cause.EXITED
    ran_for: float | None = None  # seconds from spawn to exit
    worker: bool = False  # a gunicorn worker died; the instance still serves


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b")
# gunicorn's exit codes: a worker that cannot boot / an app the master cannot load halts the whole server
BOOT_ERRORS = (3, 4)


# gunicorn's own log lines ("[2026-11-30 13:52:07 +0000] [2] [ERROR] Worker (pid:3) was sent SIGKILL!"):
# its guesses and shutdown chatter, never the plugin's last words
_GUNICORN_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:]+ [+-]\d{4}\] \[\d+\] \[[A-Z]+\] ")


def headline(lines: tuple[str, ...]) -> str | None:
    """The one output line that best says why a process died: the last exception line of a traceback
    (gunicorn prints its own "Shutting down"/"Reason" lines after it), else the last line that is not
    gunicorn's own."""
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()
    own = [line.strip() for line in lines if not _GUNICORN_LINE.match(line)]
    return own[-1] if own else None


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def describe(status: int, limits: Limits, *, oom_kills: int = 0, forks_refused: int = 0,
             during_start: bool = False, what: str = "") -> tuple[Cause, str]:
    """(cause, reason) for a process of the sandbox that ended with ``status`` (exit code or -signal).

    ``what`` prefixes the subject ("worker " for a gunicorn worker)."""
    if oom_kills:
        mem = f" (memory_mb={limits.memory_mb})" if limits.memory_mb else ""
        how = f"{what}killed by SIGKILL" if status == -signal.SIGKILL else _ended(status, what)
        return Cause.OOM, f"out of memory: the kernel's OOM killer ended a process at the memory limit{mem}; {how}"
    if status == -signal.SIGXCPU:
        cpu = f" (cpu_seconds={limits.cpu_seconds})" if limits.cpu_seconds else ""
        return Cause.CPU_LIMIT, f"CPU time limit{cpu}: {what}killed by SIGXCPU"
    if status == -signal.SIGKILL and limits.cpu_seconds:
        # the hard RLIMIT_CPU (one second past the soft one) sends SIGKILL to a process that ignored SIGXCPU
        return Cause.SIGNAL, (f"{what}killed by SIGKILL (not by the OOM killer; its CPU time limit, "
                              f"cpu_seconds={limits.cpu_seconds}, ends a process that ignores SIGXCPU this way)")
    if status == -signal.SIGXFSZ:
        size = f" (file_size_mb={limits.file_size_mb})" if limits.file_size_mb else ""
        return Cause.FILE_SIZE, f"file size limit{size}: {what}killed by SIGXFSZ"
    if forks_refused:
        procs = f" (processes={limits.processes})" if limits.processes else ""
        return Cause.PID_LIMIT, (f"process limit reached{procs}: the kernel refused {forks_refused} fork(s); "
                                 f"{_ended(status, what)}")
    if status < 0:
        extra = " (not by the OOM killer)" if status == -signal.SIGKILL else ""
        return Cause.SIGNAL, f"{what}killed by {signal_name(-status)}{extra}"
    if during_start and status in BOOT_ERRORS:
        return Cause.IMPORT, f"crashed at import ({what}exited with code {status})"
    if status == 0 and not what:
        # Nobody asked it to stop (a requested stop never gets here), so a clean exit is a failure.
        return Cause.EXITED, "exited with code 0 although nobody asked it to stop"
    return Cause.EXITED, f"{what}exited with code {status}"


def _ended(status: int, what: str) -> str:
    return f"{what}killed by {signal_name(-status)}" if status < 0 else f"{what}exited with code {status}"


def classify(returncode: int, report: ExitReport | None, limits: Limits, *, during_start: bool,
             setup_codes: frozenset[int], stderr_tail: tuple[str, ...] = (), ran_for: float | None = None
             ) -> ExitInfo:
    """An instance (the runner and the sandbox below it) ended and the host did not ask for it."""
    line = headline(stderr_tail)
    if report is None:
        # The runner wrote nothing: it never got that far, or something killed the runner itself.
        if returncode in setup_codes:
            return _info(returncode, during_start, Cause.SETUP, f"sandbox set-up failed (exit {returncode})",
                         line, stderr_tail, ran_for, setup=True)
        if returncode < 0:
            return _info(returncode, during_start, Cause.KILLED,
                         f"killed by {signal_name(-returncode)} from outside the host (its sandbox runner, pid "
                         "namespace and all)", None, stderr_tail, ran_for)
        return _info(returncode, during_start, Cause.EXITED, f"the sandbox runner exited with code {returncode}",
                     line, stderr_tail, ran_for)
    if not report.started:
        return _info(report.status, during_start, Cause.SETUP, f"sandbox set-up failed (exit {report.status})",
                     line, stderr_tail, ran_for, setup=True)
    if report.signals and not report.oom_kills:
        sent = ", ".join(report.signals)
        return _info(report.status, during_start, Cause.KILLED,
                     f"stopped by {sent} from outside the host ({_ended(report.status, '')})", None, stderr_tail,
                     ran_for)
    cause, reason = describe(report.status, limits, oom_kills=report.oom_kills, forks_refused=report.forks_refused,
                             during_start=during_start)
    return _info(report.status, during_start, cause, reason, line, stderr_tail, ran_for)


def _info(rc: int, during_start: bool, cause: Cause, reason: str, line: str | None, tail: tuple[str, ...],
          ran_for: float | None, setup: bool = False) -> ExitInfo:
    return ExitInfo(rc, during_start, f"{reason}: {line}" if line else reason, setup_failure=setup,
                    stderr_tail=tail, cause=cause, ran_for=ran_for)


def worker_death(status: int | None, limits: Limits, *, oom_kills: int = 0, forks_refused: int = 0,
                 stderr_tail: tuple[str, ...] = (), ran_for: float | None = None) -> ExitInfo:
    """One gunicorn worker died and its master replaced it. ``status`` is what the master's report says
    (the plugin could forge it, but a forged report only adds a failure); the counters are the host's own
    reading of the cgroup, so a forged "out of memory" without an OOM kill reads as what it was."""
    if status is None:
        cause, reason = Cause.EXITED, "worker exited"
    else:
        cause, reason = describe(status, limits, oom_kills=oom_kills, forks_refused=forks_refused, what="worker ")
    line = headline(stderr_tail)
    return ExitInfo(status, False, f"{reason}: {line}" if line else reason, stderr_tail=stderr_tail, cause=cause,
                    ran_for=ran_for, worker=True)


def host_killed(cause: Cause, reason: str, returncode: int | None, stderr_tail: tuple[str, ...] = (),
                ran_for: float | None = None, during_start: bool = False) -> ExitInfo:
    """The host ended it (failed readiness or liveness): the reason is the host's own, plus the last line."""
    line = headline(stderr_tail) if cause == Cause.READINESS else None
    return ExitInfo(returncode, during_start, f"{reason}: {line}" if line else reason, stderr_tail=stderr_tail,
                    cause=cause, ran_for=ran_for)

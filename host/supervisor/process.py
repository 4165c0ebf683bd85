"""One running instance of a plugin: spawn it (via the sandbox runner), wait until it is ready, stop it.

The instance leads its own process group. With the bwrap backend the runner sets the sandbox up and becomes
bwrap (``Policy.resident=False``): the instance's pid is bwrap's, SIGTERM goes to the command inside, and we
read the exit status and the cgroup counters and remove the groups, as a resident runner would have. With
the syscalls backend the runner stays as the instance's root, forwards SIGTERM and writes an exit report.
Either way the sandbox's pid namespace (or cgroup) guarantees that when the instance's root dies, its whole
tree dies.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from host.exits import ExitReport
from host.launch import LaunchSpec
from host.supervisor.health import INTERRUPTED, probe
from host.supervisor.logs import LogSink, Tail
from sandbox_runner.layers import cgroup

log = logging.getLogger(__name__)
READY_POLL = 0.005  # a probe costs ~1 ms; every poll interval is start-up latency


class Children:
    """The supervisor's own children (instance roots, the web tier), so that an orphan the supervisor adopts
    as child subreaper can be told apart from them. Spawn while holding ``lock``: a child forked but not yet
    registered must never look like an orphan."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pids: set[int] = set()
        # What becomes ours when an instance's bwrap exits: the sandbox's init, which bwrap does not wait for
        # (it exits as soon as the init reports the command's status). {pid: start time}; adopted, killed and
        # reaped like any orphan, but expected, so not reported as one.
        self.expected: dict[int, int] = {}


def children_of(pid: int) -> set[int]:
    """Direct children of ``pid`` (every thread's), from /proc: its tasks' ``children`` files, or, on kernels
    built without them (CONFIG_PROC_CHILDREN), every process's parent in /proc/*/stat."""
    out: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    if not os.path.exists(f"/proc/{pid}/task/{tasks[0]}/children" if tasks else "/"):
        return {p for p, parent in _parents().items() if parent == pid}
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out.update(int(k) for k in fh.read().split())
        except OSError:
            continue
    return out


def _parents() -> dict[int, int]:
    """{pid: parent pid} of every process."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                out[int(entry)] = int(stat[1])
    return out


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_group(pid: int) -> int | None:
    stat = _stat(pid)
    return int(stat[2]) if stat is not None else None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks: with the pid, an identity that survives pid reuse."""
    stat = _stat(pid)
    try:
        return int(stat[19]) if stat is not None else None
    except (IndexError, ValueError):
        return None


def tree(pid: int) -> dict[int, int]:
    """Every live descendant of ``pid`` as {pid: start time}."""
    found: dict[int, int] = {}
    todo = [pid]
    while todo and len(found) < 100_000:
        for kid in children_of(todo.pop()):
            st = start_time(kid)
            if st is not None and kid not in found:
                found[kid] = st
                todo.append(kid)
    return found


def kill_tree(snapshot: dict[int, int]) -> None:
    """SIGKILL each process of a :func:`tree` snapshot that is still the same process."""
    for pid, st in snapshot.items():
        if start_time(pid) == st:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _written(path: str | None) -> bool:
    try:
        return path is not None and os.path.getsize(path) > 0
    except OSError:
        return False


def _signal_if_same(pid: int, born: int, sig: int) -> None:
    """Send ``sig`` to ``pid`` only while it is the process that started at ``born`` (a pidfd pins it first:
    the pid may have been reused since it was read from /proc)."""
    fd = os.pidfd_open(pid)
    try:
        if start_time(pid) == born:
            signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)


def runner_env() -> dict[str, str]:
    """The runner's own environment (the plugin's comes from its policy): PATH plus the operator's
    SANDBOX_RUNNER_* knobs (e.g. SANDBOX_RUNNER_BWRAP, a system bubblewrap)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("SANDBOX_RUNNER_")})
    return env


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


_STATUS = re.compile(r"\bstatus=(-?\d{1,4})\b")


class Readiness(enum.Enum):
    READY = "ready"
    EXITED = "exited before it was ready"
    TIMEOUT = "timed out waiting for the plugin to answer"
    CANCELLED = "cancelled"


class Instance:
    def __init__(self, spec: LaunchSpec, sink: LogSink, health_path: str,
                 children: Children | None = None, listener: socket.socket | None = None,
                 netns_fd: int | None = None, notify: Callable[[], None] | None = None) -> None:
        self.spec = spec
        # Worker deaths its gunicorn master reported (exit code or -signal; None: unknown), oldest first;
        # ``notify`` is called (from the log pump's thread) after each. Bounded: a plugin printing fake
        # reports in a loop costs memory it cannot grow, and is quarantined long before the bound matters.
        self.worker_exits: deque[int | None] = deque(maxlen=1024)
        self.notify = notify
        self.on_cleanup: Callable[[], None] | None = None  # once it has exited (revokes its host-API token)
        self._counted = {"oom_kills": 0, "forks_refused": 0}
        # The listening socket the host bound for this instance; handed to the plugin at spawn, after
        # which only the plugin holds it (so a dead plugin means refused connections, not hanging ones).
        self.listener = listener
        self.netns_fd = netns_fd  # the plugin's egress namespace, owned by the egress point (not closed here)
        self.children = children or Children()
        self.sink = sink
        self.health_path = health_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd: int | None = None
        self.started_at = 0.0
        self.ended_at: float | None = None
        self.returncode: int | None = None
        self.tail = Tail()
        self.last_probe_error: str | None = None  # why the last readiness probe failed
        self._pump: threading.Thread | None = None
        self._exit_report: ExitReport | None = None
        self._exit_read = False
        self.was_ready = False  # wait_ready saw it answer: the command surely started
        self._init_noted = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def live_pid(self) -> int | None:
        """The pid while the instance runs, as last observed by its owner. Safe from any thread: unlike
        :meth:`poll`, it never reaps or closes the pidfd another thread may be waiting on."""
        return self.proc.pid if self.proc is not None and self.returncode is None else None

    def last_lines(self, n: int = 5, drain: float = 0.0) -> tuple[str, ...]:
        """The instance's last output lines; ``drain`` waits that long for the pipe to reach EOF first
        (its whole process tree is gone by then, so the last words are not lost to a race)."""
        if drain > 0 and self._pump is not None:
            self._pump.join(drain)
        return self.tail.last(n)

    @property
    def ran_for(self) -> float | None:
        """Seconds from spawn to the exit we observed (or until now while it runs)."""
        if not self.started_at:
            return None
        return round((self.ended_at or time.monotonic()) - self.started_at, 3)

    def exit_report(self) -> ExitReport | None:
        """How the runner says the instance ended (read once, then removed); None while it runs, or when
        the runner itself was killed and wrote nothing."""
        if self.poll() is None:
            return None
        if not self._exit_read:
            self._exit_read = True
            path = self.spec.policy.exit_path
            if not self.spec.policy.resident:
                self._exit_report = self._bwrap_exit_report()
            else:
                self._exit_report = ExitReport.read(Path(path)) if path else None
        return self._exit_report

    def _bwrap_exit_report(self) -> ExitReport | None:
        """The report a resident runner would have written, from bwrap's exit status and the cgroups' counters
        (read here, before :meth:`cleanup` removes the groups). None when bwrap (or the runner before it became
        bwrap) was killed by a signal: from outside, as a killed resident runner wrote nothing either."""
        rc = self.returncode
        if rc is None or rc < 0:
            return None
        # bwrap reports a command killed by signal N as exit 128+N, like a shell (a command that really
        # exits with 128+N reads the same, as it did through the resident runner)
        status = -(rc - 128) if 128 < rc < 128 + signal.NSIG else rc
        name = self.spec.policy.cgroup_name
        counted = cgroup.counters(cgroup.find(name)) if name else {}
        return ExitReport(status, self.was_ready or _written(self.spec.policy.report_path), (),
                          counted.get("oom_kills", 0), counted.get("forks_refused", 0))

    def cleanup(self) -> None:
        """Once it has exited: remove the socket it left in the run dir (gunicorn leaves it behind when
        killed) and, when the runner died without its exit report (killed), the cgroups it could not remove
        and anything still in them. Not the policy file: it is per plugin, and a successor may read it."""
        if self.poll() is None:
            return
        if self.on_cleanup is not None:
            self.on_cleanup()
            self.on_cleanup = None
        self.spec.instance_socket.unlink(missing_ok=True)
        if (self.exit_report() is None or not self.spec.policy.resident) and self.spec.policy.cgroup_name:
            try:
                cgroup.cleanup(self.spec.policy.cgroup_name)
            except OSError as exc:
                log.warning("%s: cannot remove the cgroups of instance %s: %s", self.spec.name, self.pid, exc)

    def spawn(self) -> None:
        log_path = self.sink.begin_instance()
        if not self.spec.policy.resident and self.spec.policy.report_path:
            # the inner stage writes it as the command starts: present afterwards = it started
            Path(self.spec.policy.report_path).unlink(missing_ok=True)
        r, w = os.pipe()
        try:
            with self.children.lock:
                self.proc = subprocess.Popen(
                    self.spec.argv,
                    stdin=subprocess.DEVNULL, stdout=w, stderr=w,
                    start_new_session=True,  # its own process group: killpg reaches the runner and bwrap
                    close_fds=True,
                    pass_fds=tuple(fd for fd in (self.listener.fileno() if self.listener is not None else None,
                                                 self.netns_fd) if fd is not None),
                    env=runner_env(),
                )
                self.children.pids.add(self.proc.pid)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
            if self.listener is not None:
                self.listener.close()
        self._pump = self.sink.pump(r, log_path, self.tail, self._worker_exit)
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.started_at = time.monotonic()

    def _worker_exit(self, report: str) -> None:
        m = _STATUS.search(report)
        self.worker_exits.append(int(m.group(1)) if m else None)
        if self.notify is not None:
            self.notify()

    def cgroup_news(self) -> dict[str, int]:
        """How many OOM kills and refused forks the kernel counted in this instance's cgroups since the
        last call: the host's own evidence, whatever the plugin reports."""
        name = self.spec.policy.cgroup_name
        if name is None or self.poll() is not None:
            return {"oom_kills": 0, "forks_refused": 0}
        now = cgroup.counters(cgroup.find(name))
        news = {k: max(0, now.get(k, 0) - self._counted.get(k, 0)) for k in self._counted}
        self._counted.update(now)
        return news

    def poll(self) -> int | None:
        if self.proc is None:
            return self.returncode
        if self.returncode is None:
            self.returncode = self.proc.poll()
            if self.returncode is not None:
                self.ended_at = time.monotonic()
                self._close_pidfd()
                with self.children.lock:
                    self.children.pids.discard(self.proc.pid)
        return self.returncode

    def wait_ready(self, timeout: float, cancelled: Callable[[], bool], wake_fd: int | None = None) -> Readiness:
        """Until the health path answers, the instance exits, ``timeout`` passes or ``cancelled()`` (checked
        whenever ``wake_fd`` becomes readable, even in the middle of a probe)."""
        deadline = time.monotonic() + timeout
        sock = self.spec.instance_socket
        while True:
            self._expect_init()  # as soon as it exists: an instance that dies before it is ready leaves it too
            if self.poll() is not None:
                return Readiness.EXITED
            if cancelled():
                return Readiness.CANCELLED
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Readiness.TIMEOUT
            if sock.exists():
                why = probe(sock, self.health_path, min(remaining, 5.0), wake_fd)
                if why == INTERRUPTED:
                    if wake_fd is not None:
                        _drain(wake_fd)  # what woke us stays queued for its owner; only cancellation matters
                    continue
                self.last_probe_error = why
                if why is None:
                    self.was_ready = True
                    self._expect_init()  # the sandbox's init surely exists now
                    return Readiness.READY
            else:
                self.last_probe_error = "socket missing"
            self.wait_exit(min(READY_POLL, max(remaining, 0)))

    def wait_exit(self, timeout: float, extra_fd: int | None = None) -> bool:
        """Block up to ``timeout`` for the instance to exit (or ``extra_fd`` to be readable)."""
        fds = [fd for fd in (self.pidfd, extra_fd) if fd is not None]
        if self.pidfd is None:
            if extra_fd is None:
                time.sleep(timeout)
            else:
                select.select([extra_fd], [], [], timeout)
            return self.poll() is not None
        select.select(fds, [], [], timeout)
        return self.poll() is not None

    def stop(self, grace: float) -> int | None:
        """SIGTERM, wait ``grace``, then SIGKILL the whole group. Idempotent and blocking."""
        if self.proc is None or self.poll() is not None:
            return self.returncode
        self._signal(signal.SIGTERM)
        if not self.wait_exit(grace):
            log.warning("%s: pid %s did not stop within %.1fs; killing", self.spec.name, self.pid, grace)
            self._killpg()
            self.proc.wait()
        return self.poll()

    def kill(self) -> None:
        # Only signal the group while its leader is unreaped: a reaped pid (and pgid) may be reused.
        if self.proc is not None and self.poll() is None:
            self._killpg()
            self.proc.wait()
            self.poll()

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.returncode is None:
            try:
                command = None if self.spec.policy.resident else self._command()
                if command is None:
                    self.proc.send_signal(sig)  # ours and unreaped: its pid cannot have been reused
                else:
                    _signal_if_same(*command, sig)
            except ProcessLookupError:
                pass

    def _expect_init(self) -> None:
        """Non-resident: note the sandbox's init (bwrap's child) in :attr:`Children.expected` once it exists."""
        if self._init_noted or self.spec.policy.resident or self.proc is None or self.returncode is not None:
            return
        for pid in children_of(self.proc.pid):
            st = start_time(pid)
            if st is not None:
                with self.children.lock:
                    self.children.expected[pid] = st
                self._init_noted = True

    def _command(self) -> tuple[int, int] | None:
        """(pid, start time) of the sandboxed command (gunicorn's arbiter) below bwrap and the sandbox's init: a
        signal to bwrap would end the sandbox at once (--die-with-parent), the command's own handler makes a
        graceful stop. None before the sandbox is up (then there is nothing graceful to stop).

        The init's first child by start time, not the lowest pid: every process the plugin orphans is
        reparented to the init too, and once pids wrap (pid_max may be 32768) one of those can have a lower
        pid than the command, which would then get the SIGTERM instead (and could ignore it)."""
        assert self.proc is not None
        for init in sorted(children_of(self.proc.pid)):
            born = {kid: st for kid in children_of(init) if (st := start_time(kid)) is not None}
            if born:
                first = min(born, key=lambda kid: (born[kid], kid))
                return first, born[first]
        return None

    def _killpg(self) -> None:
        if self.proc is None:
            return
        # The sandboxed tree is in other sessions (bwrap --new-session) and its init may not get the
        # parent-death signal (a dying bwrap without CAP_KILL may not signal a process of another uid):
        # kill every descendant by pid, not just our process group.
        snapshot = tree(self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        kill_tree(snapshot)

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def socket_exists(self) -> bool:
        return Path(self.spec.instance_socket).exists()

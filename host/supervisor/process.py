"""One running instance of a plugin: spawn it (via the sandbox runner), wait until it is ready, stop it.

The instance leads its own process group; the runner below it forwards SIGTERM into the sandbox, and the
sandbox's pid namespace (or cgroup) guarantees that when the instance's root dies, its whole tree dies.
"""

from __future__ import annotations

import enum
import logging
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from host.launch import LaunchSpec
from host.supervisor.health import probe
from host.supervisor.logs import LogSink

log = logging.getLogger(__name__)
READY_POLL = 0.02


class Readiness(enum.Enum):
    READY = "ready"
    EXITED = "exited before it was ready"
    TIMEOUT = "timed out waiting for the plugin to answer"
    CANCELLED = "cancelled"


class Instance:
    def __init__(self, spec: LaunchSpec, sink: LogSink, health_path: str) -> None:
        self.spec = spec
        self.sink = sink
        self.health_path = health_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd: int | None = None
        self.started_at = 0.0
        self.returncode: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def spawn(self) -> None:
        log_path = self.sink.begin_instance()
        r, w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                self.spec.argv,
                stdin=subprocess.DEVNULL, stdout=w, stderr=w,
                start_new_session=True,  # its own process group: killpg reaches the runner and bwrap
                close_fds=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
            )
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        self.sink.pump(r, log_path)
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.started_at = time.monotonic()

    def poll(self) -> int | None:
        if self.proc is None:
            return self.returncode
        if self.returncode is None:
            self.returncode = self.proc.poll()
            if self.returncode is not None:
                self._close_pidfd()
        return self.returncode

    def wait_ready(self, timeout: float, cancelled: Callable[[], bool]) -> Readiness:
        deadline = time.monotonic() + timeout
        sock = self.spec.instance_socket
        while True:
            if self.poll() is not None:
                return Readiness.EXITED
            if cancelled():
                return Readiness.CANCELLED
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Readiness.TIMEOUT
            if sock.exists() and probe(sock, self.health_path, min(remaining, 5.0)) is None:
                return Readiness.READY
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
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def _killpg(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def socket_exists(self) -> bool:
        return Path(self.spec.instance_socket).exists()

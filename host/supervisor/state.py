"""The restart policy of one plugin as a pure state machine, driven by an injected monotonic clock.

    STOPPED ──start──► STARTING ──ready──► RUNNING
       ▲                  │  ▲                │
       │               failed └─backoff_elapsed┐ failed
       │                  ▼                 │  ▼
    stopped ◄─ STOPPING ◄─stop── (any)    BACKOFF ── too many failures ──► QUARANTINED
                                                       (start/restart clears it)
"""

from __future__ import annotations

import enum
import random
import re
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


class State(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    QUARANTINED = "quarantined"
    STOPPING = "stopping"


@dataclass(frozen=True)
class RestartPolicy:
    initial: float = 0.1  # first backoff (systemd's RestartSec is 100 ms)
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.2  # ±20 %, so plugins that died together do not restart in lockstep
    max_failures: int = 5  # ... within `window` seconds → QUARANTINED
    window: float = 60.0
    stable_after: float = 10.0  # RUNNING this long forgives earlier failures


@dataclass(frozen=True)
class ExitInfo:
    """How an instance ended, in words an operator can act on."""

    returncode: int | None
    during_start: bool
    reason: str
    setup_failure: bool = False  # the sandbox could not be set up: retrying will not help
    stderr_tail: tuple[str, ...] = ()

    @classmethod
    def from_returncode(cls, rc: int, during_start: bool, setup_codes: frozenset[int],
                        stderr_tail: tuple[str, ...] = ()) -> ExitInfo:
        if rc < 0:
            sig = -rc
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
            reason = f"killed by {name}"
            if sig == signal.SIGKILL:
                reason += " — out of memory?"
            elif sig == signal.SIGXCPU:
                reason += " — CPU time limit"
            elif sig == signal.SIGXFSZ:
                reason += " — file size limit"
        else:
            reason = f"exited with code {rc}"
            if during_start and rc in (3, 4):  # gunicorn's WORKER_BOOT_ERROR / APP_LOAD_ERROR
                reason += " — the app failed to import (see log)"
            elif rc == 0:
                # Nobody asked it to stop (a requested stop never gets here), so a clean exit is a failure.
                reason += " although nobody asked it to stop"
        if rc in setup_codes:
            reason = f"sandbox set-up failed (exit {rc})"
        line = headline(stderr_tail)
        if line:
            reason += f": {line}"
        return cls(rc, during_start, reason, setup_failure=rc in setup_codes, stderr_tail=stderr_tail)


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b")


def headline(lines: tuple[str, ...]) -> str | None:
    """The one output line that best says why an instance died: the last exception line of a traceback
    (gunicorn prints its own "Shutting down"/"Reason" lines after it), else simply the last line."""
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()
    return lines[-1].strip() if lines else None


class TransitionError(Exception):
    pass


@dataclass
class Lifecycle:
    """State, failure history and backoff of one plugin. Every edge is a method; nothing else mutates."""

    policy: RestartPolicy
    clock: Callable[[], float]
    rng: Callable[[], float] = random.random
    state: State = State.STOPPED
    failures: deque[float] = field(default_factory=deque)
    restarts: int = 0
    backoff_until: float = 0.0
    running_since: float | None = None
    last_exit: ExitInfo | None = None
    reason: str | None = None  # why the plugin is QUARANTINED (or last failure)

    def _go(self, allowed: tuple[State, ...], to: State) -> None:
        if self.state not in allowed:
            raise TransitionError(f"cannot go from {self.state} to {to}")
        self.state = to

    def start(self) -> None:
        # STOPPED -> STARTING: desired state became "running".
        # QUARANTINED -> STARTING: an operator asked (restart/enable); forgive the history.
        # BACKOFF -> STARTING: an explicit start/wake does not wait out the backoff.
        if self.state == State.QUARANTINED:
            self.failures.clear()
            self.reason = None
        self._go((State.STOPPED, State.QUARANTINED, State.BACKOFF), State.STARTING)

    def ready(self) -> None:
        # STARTING -> RUNNING: the socket accepts and the health path answered.
        self._go((State.STARTING,), State.RUNNING)
        self.running_since = self.clock()

    def failed(self, info: ExitInfo) -> State:
        """STARTING/RUNNING -> BACKOFF, or -> QUARANTINED when retrying is pointless or too frequent."""
        now = self.clock()
        if self.state == State.RUNNING and self.running_since is not None \
                and now - self.running_since >= self.policy.stable_after:
            # RUNNING (stable) -> BACKOFF: old failures are forgiven, backoff starts small again.
            self.failures.clear()
        self.running_since = None
        self.last_exit = info
        self.failures.append(now)
        while self.failures and now - self.failures[0] > self.policy.window:
            self.failures.popleft()
        if info.setup_failure:
            # -> QUARANTINED: the sandbox cannot be built here; a retry would fail identically.
            self._go((State.STARTING, State.RUNNING), State.QUARANTINED)
            self.reason = info.reason
        elif len(self.failures) >= self.policy.max_failures:
            # -> QUARANTINED: crash loop. Loud: the caller logs, records an event and shows the reason.
            self._go((State.STARTING, State.RUNNING), State.QUARANTINED)
            self.reason = (f"{len(self.failures)} failures in {self.policy.window:.0f}s; "
                           f"last: {info.reason}")
        else:
            # -> BACKOFF: wait initial * factor^(n-1), capped, with jitter.
            self._go((State.STARTING, State.RUNNING), State.BACKOFF)
            self.backoff_until = now + self.next_delay()
            self.reason = info.reason
        return self.state

    def next_delay(self) -> float:
        n = max(1, len(self.failures))
        base = min(self.policy.cap, self.policy.initial * self.policy.factor ** (n - 1))
        return max(0.0, base * (1 + self.policy.jitter * (2 * self.rng() - 1)))

    def backoff_elapsed(self) -> bool:
        # BACKOFF -> STARTING once the delay has passed.
        if self.state == State.BACKOFF and self.clock() >= self.backoff_until:
            self.state = State.STARTING
            self.restarts += 1
            return True
        return False

    def stop(self) -> None:
        # any -> STOPPING: desired state became "stopped" (disable, uninstall, shutdown, idle).
        self.state = State.STOPPING
        self.running_since = None

    def stopped(self) -> None:
        # STOPPING -> STOPPED: the whole process tree is gone.
        self._go((State.STOPPING,), State.STOPPED)

"""The restart policy of one plugin as a pure state machine, driven by an injected monotonic clock.

:meth:`Lifecycle.transition` is the only place a plugin's state, failure window, restart count or reason
changes (supervisord's ``transition()``); the worker thread performs the effects (spawn, kill, log) and
tells the machine what happened.

    STOPPED ──Start──► STARTING ──Ready──► RUNNING ◄──Tick (quiet window)── DEGRADED
       ▲                  │  ▲                │  └──────WorkerDied──────────►  │
       │               Failed  Tick (backoff  Failed                     WorkerDied/Failed
       │                  ▼      elapsed)     ▼                               │
    Stopped ◄─ STOPPING ◄─Stop─ (any)      BACKOFF ── max_failures in window ─┴─► QUARANTINED
                                                        (an operator Start forgives it)
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from host.exits import ExitInfo


class State(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"  # serving, but its workers died within the failure window
    BACKOFF = "backoff"
    QUARANTINED = "quarantined"
    STOPPING = "stopping"


SERVING = (State.RUNNING, State.DEGRADED)


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff ``initial * factor**(n-1)`` (n = failures in the window, ±jitter), at most ``cap``, except
    that a serving plugin's first failure in the window restarts it at once; the
    ``max_failures``-th failure within ``window`` seconds quarantines. The defaults reach the cap before
    they quarantine: 0.1, 0.2, 0.4 ... 25.6, 30, 30 s, and the 12th failure in 10 minutes quarantines
    (a plugin that never comes up is retried for about two minutes, long enough to ride out a restarting
    dependency; one that crashes every 11 s is quarantined after about four)."""

    initial: float = 0.1  # first backoff (systemd's RestartSec is 100 ms)
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.2  # ±20 %, so plugins that died together do not restart in lockstep
    max_failures: int = 12  # ... within `window` seconds → QUARANTINED
    window: float = 600.0  # a failure counts this long (Kubernetes forgets a crash loop after 10 minutes)


class TransitionError(Exception):
    pass


# -- events: what the worker observed or was asked to do -----------------------------------------------

@dataclass(frozen=True)
class Start:
    """Run it. ``operator``: `host start/restart/enable` (also out of backoff or quarantine, forgiving the
    failure history); otherwise the desired state (enable, a wake after scale to zero)."""

    operator: bool = False


@dataclass(frozen=True)
class Ready:
    """The new instance's socket accepts and its health path answered."""


@dataclass(frozen=True)
class Failed:
    """The instance died, never became ready, or failed its liveness probe (and was killed)."""

    info: ExitInfo


@dataclass(frozen=True)
class WorkerDied:
    """One of the instance's workers died; gunicorn replaced it, the instance still serves."""

    info: ExitInfo


@dataclass(frozen=True)
class Tick:
    """Time passed: a backoff may be over, a degraded plugin's failures may have left the window."""


@dataclass(frozen=True)
class Stop:
    """Desired state became "stopped": disable, uninstall, shutdown, scale to zero, a cancelled start."""


@dataclass(frozen=True)
class Stopped:
    """The whole process tree of the instance is gone."""


@dataclass(frozen=True)
class Replaced:
    """An operator's zero-downtime restart (or an upgrade) switched to a new instance."""


@dataclass(frozen=True)
class ReplaceFailed:
    """The new instance of a zero-downtime restart did not come up; the old one keeps serving."""

    reason: str


@dataclass(frozen=True)
class RolledBack:
    """An upgraded instance failed within its probation; the previous instance, kept ready, serves again."""

    reason: str


@dataclass(frozen=True)
class Abandoned:
    """The supervisor itself failed for this plugin (a bug); it stays stopped until an operator acts."""

    reason: str


Event = Start | Ready | Failed | WorkerDied | Tick | Stop | Stopped | Replaced | ReplaceFailed | RolledBack | Abandoned


@dataclass
class Lifecycle:
    """State, failure window, backoff and reason of one plugin. Read its fields; change them only through
    :meth:`transition`."""

    policy: RestartPolicy
    clock: Callable[[], float]
    rng: Callable[[], float] = random.random
    state: State = State.STOPPED
    failures: deque[float] = field(default_factory=deque)  # when each failure in the window happened
    restarts: int = 0
    backoff_until: float = 0.0
    running_since: float | None = None
    last_worker_death: float | None = None
    last_exit: ExitInfo | None = None
    reason: str | None = None  # why it is not simply running: cleared when it recovers

    def transition(self, event: Event) -> State:
        """Apply ``event``; returns the new state. Raises TransitionError for an edge that does not exist."""
        now = self.clock()
        self._forget(now)
        st = self.state
        match event:
            case Start(operator=operator):
                if st == State.STOPPED or (operator and st in (State.BACKOFF, State.QUARANTINED)):
                    # STOPPED -> STARTING: desired state became "running".
                    # BACKOFF -> STARTING: an operator's start does not wait out the backoff.
                    # QUARANTINED -> STARTING: an operator asked; the failure history is forgiven.
                    if operator:
                        self.failures.clear()
                        self.last_worker_death = None
                    self._go(State.STARTING)
                    self.reason = None
                elif st not in (State.STARTING, *SERVING):
                    # A wake never starts a quarantined plugin nor cuts a backoff short.
                    raise TransitionError(f"cannot start from {st}")
            case Ready():
                # STARTING -> RUNNING: the reason of the last failure is history now.
                self._expect(st, State.STARTING)
                self._go(State.RUNNING)
                self.running_since = now
                self.reason = None
            case Failed(info=info):
                self._expect(st, State.STARTING, *SERVING)
                self._fail(now, info)
                self.running_since = None
                if info.setup_failure:
                    # STARTING/RUNNING -> QUARANTINED: the sandbox cannot be built here; a retry would fail
                    # the same way.
                    self._go(State.QUARANTINED)
                    self.reason = info.reason
                elif len(self.failures) >= self.policy.max_failures:
                    # -> QUARANTINED: a crash loop. Loud: the worker logs, records an event, shows the reason.
                    self._go(State.QUARANTINED)
                    self.reason = self._too_many(info)
                else:
                    # -> BACKOFF: wait initial * factor^(n-1), capped, with jitter; no wait at all when a
                    # plugin that was serving fails for the first time in the window (a one-off crash, an
                    # OOM kill: nothing to wait for, and every millisecond is an outage). A failed start is
                    # no such one-off, and a second failure is the start of a loop: those wait.
                    first_crash = st in SERVING and len(self.failures) == 1
                    self._go(State.BACKOFF)
                    self.backoff_until = now + (0.0 if first_crash else self.next_delay())
                    self.reason = info.reason
            case WorkerDied(info=info):
                self._expect(st, *SERVING)
                self._fail(now, info)
                self.last_worker_death = now
                if len(self.failures) >= self.policy.max_failures:
                    # RUNNING/DEGRADED -> QUARANTINED: its workers keep dying (the worker kills the instance).
                    self._go(State.QUARANTINED)
                    self.running_since = None
                    self.reason = self._too_many(info)
                else:
                    # RUNNING -> DEGRADED (or stays): still serving, but visibly failing.
                    self._go(State.DEGRADED)
                    self.reason = (f"{info.reason} ({len(self.failures)} of {self.policy.max_failures} failures "
                                   f"in {self.policy.window:g}s)")
            case Tick():
                if st == State.BACKOFF and now >= self.backoff_until:
                    # BACKOFF -> STARTING once the delay has passed.
                    self._go(State.STARTING)
                    self.restarts += 1
                elif st == State.DEGRADED and self.last_worker_death is None:
                    # DEGRADED -> RUNNING: no worker death within the window any more.
                    self._go(State.RUNNING)
                    self.reason = None
            case Stop():
                # any -> STOPPING (idempotent once stopped).
                if st != State.STOPPED:
                    self._go(State.STOPPING)
                self.running_since = None
            case Stopped():
                # STOPPING -> STOPPED: the whole process tree is gone. A quarantine's reason stays visible.
                self._expect(st, State.STOPPING, State.STOPPED)
                self._go(State.STOPPED)
            case Replaced():
                # RUNNING/DEGRADED -> RUNNING: an operator's restart switched instances; like an operator
                # start, it forgives the worker deaths of the old instance.
                self._expect(st, *SERVING)
                self._go(State.RUNNING)
                self.restarts += 1
                self.running_since = now
                self.failures.clear()
                self.last_worker_death = None
                self.reason = None
            case ReplaceFailed(reason=reason):
                # RUNNING/DEGRADED stays: the old instance keeps serving; say why the new one did not.
                self._expect(st, *SERVING)
                self.reason = f"restart failed, the previous instance keeps serving: {reason}"
            case RolledBack(reason=reason):
                # RUNNING/DEGRADED (its workers quarantined it: QUARANTINED) -> RUNNING: the previous instance
                # serves again; the failed upgrade's failures are not counted against it, and the reason says
                # why it is the old version.
                self._expect(st, *SERVING, State.QUARANTINED)
                self._go(State.RUNNING)
                self.running_since = now
                self.failures.clear()
                self.last_worker_death = None
                self.reason = f"upgrade rolled back, the previous version serves again: {reason}"
            case Abandoned(reason=reason):
                # any -> STOPPED: the worker stopped the instance after an internal error.
                self._go(State.STOPPED)
                self.running_since = None
                self.reason = reason
        return self.state

    # -- reading --------------------------------------------------------------------------------------

    def next_delay(self) -> float:
        n = max(1, len(self.failures))
        base = min(self.policy.cap, self.policy.initial * self.policy.factor ** (n - 1))
        return max(0.0, base * (1 + self.policy.jitter * (2 * self.rng() - 1)))

    def wake_at(self) -> float | None:
        """When a :class:`Tick` could next change something (None: only an event can)."""
        if self.state == State.BACKOFF:
            return self.backoff_until
        if self.state == State.DEGRADED and self.last_worker_death is not None:
            return self.last_worker_death + self.policy.window
        return None

    # -- plumbing -------------------------------------------------------------------------------------

    def _forget(self, now: float) -> None:
        """Failures older than the window no longer count (a sliding window: running does not forgive)."""
        while self.failures and now - self.failures[0] > self.policy.window:
            self.failures.popleft()
        if self.last_worker_death is not None and now - self.last_worker_death > self.policy.window:
            self.last_worker_death = None

    def _fail(self, now: float, info: ExitInfo) -> None:
        self.failures.append(now)
        self.last_exit = info

    def _too_many(self, info: ExitInfo) -> str:
        return f"{len(self.failures)} failures in {self.policy.window:g}s; last: {info.reason}"

    def _expect(self, st: State, *allowed: State) -> None:
        if st not in allowed:
            raise TransitionError(f"unexpected event in state {st}")

    def _go(self, to: State) -> None:
        self.state = to

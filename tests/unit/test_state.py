"""The restart policy as a pure state machine, driven by a fake clock: every change goes through transition()."""

from __future__ import annotations

import pytest

from host.settings import HostSettings
from host.supervisor.state import (
    Abandoned,
    ExitInfo,
    Failed,
    Lifecycle,
    Ready,
    Replaced,
    ReplaceFailed,
    RestartPolicy,
    RolledBack,
    Start,
    State,
    Stop,
    Stopped,
    Tick,
    TransitionError,
    WorkerDied,
)

SETUP = frozenset({120, 121})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def crash(rc: int = 1, start: bool = False) -> ExitInfo:
    setup = rc in SETUP
    reason = f"sandbox set-up failed (exit {rc})" if setup else f"exited with code {rc}: last line"
    return ExitInfo(rc, start, reason, setup_failure=setup, stderr_tail=("last line",))


def make(**kw: float) -> tuple[Lifecycle, Clock]:
    clock = Clock()
    return Lifecycle(RestartPolicy(**kw), clock=clock, rng=lambda: 0.5), clock  # type: ignore[arg-type]


def fail_and_wait(lc: Lifecycle, clock: Clock, start: bool = True) -> float:
    """One failure; returns the backoff it chose and lets it elapse."""
    lc.transition(Failed(crash(start=start)))
    delay = lc.backoff_until - clock.t
    clock.t = lc.backoff_until
    assert lc.transition(Tick()) == State.STARTING
    return round(delay, 3)


def test_happy_path() -> None:
    lc, _ = make()
    assert lc.transition(Start()) == State.STARTING
    assert lc.transition(Ready()) == State.RUNNING
    assert lc.transition(Stop()) == State.STOPPING
    assert lc.transition(Stopped()) == State.STOPPED


def test_default_policy_matches_the_settings_and_the_readme() -> None:
    s = HostSettings()
    assert (s.backoff_initial, s.backoff_max, s.max_failures, s.failure_window) == (0.1, 30.0, 12, 600.0)
    p = RestartPolicy()
    assert (p.initial, p.factor, p.cap, p.jitter, p.max_failures, p.window) == (0.1, 2.0, 30.0, 0.2, 12, 600.0)


def test_with_default_settings_the_backoff_reaches_its_cap_before_quarantine() -> None:
    lc, clock = make()  # the defaults
    lc.transition(Start())
    delays = [fail_and_wait(lc, clock) for _ in range(11)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    assert lc.transition(Failed(crash(start=True))) == State.QUARANTINED
    assert lc.reason == "12 failures in 600s; last: exited with code 1: last line"
    assert lc.restarts == 11
    assert clock.t - 1000.0 == pytest.approx(sum(delays))  # about two minutes of trying


def test_a_plugin_that_crashes_every_11_seconds_is_quarantined() -> None:
    """Running between crashes does not forgive them: each failure counts for the whole window."""
    lc, clock = make()
    lc.transition(Start())
    crashes = 0
    while lc.state != State.QUARANTINED and crashes < 100:
        lc.transition(Ready())
        clock.t += 11
        crashes += 1
        if lc.transition(Failed(crash())) == State.BACKOFF:
            clock.t = lc.backoff_until
            lc.transition(Tick())
    assert lc.state == State.QUARANTINED and crashes == 12
    assert clock.t - 1000.0 < 600  # all twelve inside one window
    assert lc.reason is not None and lc.reason.startswith("12 failures in 600s; last: exited with code 1")


def test_a_serving_plugins_first_crash_restarts_at_once_a_second_one_backs_off() -> None:
    """A one-off crash costs no backoff; a loop (a second failure in the window, or a failed start) does."""
    lc, clock = make(window=60)
    lc.transition(Start())
    lc.transition(Ready())
    clock.t += 5
    assert lc.transition(Failed(crash())) == State.BACKOFF
    assert lc.backoff_until == clock.t and lc.wake_at() == clock.t
    assert lc.transition(Tick()) == State.STARTING  # on the very next turn, no clock advance
    lc.transition(Ready())
    clock.t += 5
    lc.transition(Failed(crash()))  # the second in the window
    assert lc.backoff_until - clock.t == pytest.approx(0.2)
    assert lc.transition(Tick()) == State.BACKOFF
    clock.t += 61  # both forgotten: a first crash again
    lc.transition(Start(operator=True))
    assert lc.transition(Failed(crash(start=True))) == State.BACKOFF  # but a failed start is no one-off
    assert lc.backoff_until - clock.t == pytest.approx(0.1)


def test_failures_outside_the_window_are_forgotten() -> None:
    lc, clock = make(max_failures=3, window=60)
    lc.transition(Start())
    fail_and_wait(lc, clock)
    fail_and_wait(lc, clock)
    clock.t += 61  # both leave the window: the third failure is a first one again
    assert lc.transition(Failed(crash())) == State.BACKOFF
    assert lc.backoff_until - clock.t == pytest.approx(0.1)
    assert list(lc.failures) == [clock.t]


def test_backoff_grows_with_failures_in_the_window_and_is_capped() -> None:
    lc, clock = make(initial=0.1, cap=0.5, max_failures=100)
    lc.transition(Start())
    assert [fail_and_wait(lc, clock) for _ in range(6)] == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert lc.restarts == 6


def test_jitter_spreads_restarts() -> None:
    lo = Lifecycle(RestartPolicy(initial=1.0), clock=Clock(), rng=lambda: 0.0)
    hi = Lifecycle(RestartPolicy(initial=1.0), clock=Clock(), rng=lambda: 1.0)
    for lc in (lo, hi):
        lc.transition(Start())
        lc.transition(Failed(crash()))
    assert lo.backoff_until - 1000.0 == pytest.approx(0.8)
    assert hi.backoff_until - 1000.0 == pytest.approx(1.2)


def test_backoff_does_not_restart_early_and_a_wake_does_not_cut_it_short() -> None:
    lc, clock = make()
    lc.transition(Start())
    lc.transition(Failed(crash()))
    clock.t += 0.01
    assert lc.transition(Tick()) == State.BACKOFF
    with pytest.raises(TransitionError):
        lc.transition(Start())
    assert lc.transition(Start(operator=True)) == State.STARTING  # an operator's start does
    assert len(lc.failures) == 0


def test_the_reason_is_cleared_when_the_plugin_recovers_and_kept_in_last_exit() -> None:
    lc, clock = make()
    lc.transition(Start())
    lc.transition(Failed(crash(rc=3, start=True)))
    assert lc.reason is not None and "exited with code 3" in lc.reason
    clock.t = lc.backoff_until
    lc.transition(Tick())
    lc.transition(Ready())
    assert lc.state == State.RUNNING and lc.reason is None
    assert lc.last_exit is not None and lc.last_exit.returncode == 3


def test_sandbox_setup_failure_is_not_retried() -> None:
    lc, _ = make()
    lc.transition(Start())
    assert lc.transition(Failed(crash(rc=121, start=True))) == State.QUARANTINED
    assert lc.reason is not None and "sandbox set-up failed" in lc.reason


def test_operator_start_clears_quarantine_a_wake_does_not() -> None:
    lc, _ = make(max_failures=1)
    lc.transition(Start())
    lc.transition(Failed(crash()))
    assert lc.state == State.QUARANTINED
    with pytest.raises(TransitionError):
        lc.transition(Start())
    assert lc.transition(Start(operator=True)) == State.STARTING
    assert lc.reason is None and not lc.failures


def test_disabling_a_quarantined_plugin_keeps_its_reason() -> None:
    lc, _ = make(max_failures=1)
    lc.transition(Start())
    lc.transition(Failed(crash()))
    lc.transition(Stop())
    assert lc.transition(Stopped()) == State.STOPPED
    assert lc.reason is not None and "1 failures in 600s" in lc.reason
    assert lc.transition(Start()) == State.STARTING and lc.reason is None


def test_dying_workers_degrade_the_plugin_then_quarantine_it() -> None:
    lc, clock = make(max_failures=3, window=60)
    lc.transition(Start())
    lc.transition(Ready())
    worker = ExitInfo(1, False, "worker exited with code 1")
    assert lc.transition(WorkerDied(worker)) == State.DEGRADED
    assert lc.reason == "worker exited with code 1 (1 of 3 failures in 60s)"
    clock.t += 30
    assert lc.transition(WorkerDied(worker)) == State.DEGRADED
    assert lc.reason == "worker exited with code 1 (2 of 3 failures in 60s)"
    assert lc.transition(WorkerDied(worker)) == State.QUARANTINED
    assert lc.reason == "3 failures in 60s; last: worker exited with code 1"


def test_a_degraded_plugin_recovers_once_its_worker_deaths_leave_the_window() -> None:
    lc, clock = make(window=60)
    lc.transition(Start())
    lc.transition(Ready())
    lc.transition(WorkerDied(ExitInfo(-9, False, "worker killed")))
    assert lc.wake_at() == clock.t + 60
    clock.t += 59
    assert lc.transition(Tick()) == State.DEGRADED
    clock.t += 2
    assert lc.transition(Tick()) == State.RUNNING
    assert lc.reason is None and not lc.failures and lc.wake_at() is None


def test_worker_deaths_and_crashes_share_one_window() -> None:
    lc, _ = make(max_failures=2, window=60)
    lc.transition(Start())
    lc.transition(Ready())
    lc.transition(WorkerDied(ExitInfo(1, False, "worker exited with code 1")))
    assert lc.transition(Failed(crash())) == State.QUARANTINED


def test_an_operator_restart_replaces_and_forgives() -> None:
    lc, _ = make(max_failures=3)
    lc.transition(Start())
    lc.transition(Ready())
    lc.transition(WorkerDied(ExitInfo(1, False, "worker exited with code 1")))
    assert lc.transition(ReplaceFailed("timed out")) == State.DEGRADED
    assert lc.reason == "restart failed, the previous instance keeps serving: timed out"
    assert lc.transition(Replaced()) == State.RUNNING
    assert lc.restarts == 1 and lc.reason is None and not lc.failures


def test_a_rolled_back_upgrade_runs_the_previous_version_and_says_so() -> None:
    lc, _ = make(max_failures=2)
    lc.transition(Start())
    lc.transition(Ready())
    lc.transition(Replaced())  # the upgrade's switch
    lc.transition(WorkerDied(ExitInfo(1, False, "worker exited with code 1")))
    assert lc.transition(WorkerDied(ExitInfo(1, False, "worker exited with code 1"))) == State.QUARANTINED
    assert lc.transition(RolledBack("worker exited with code 1")) == State.RUNNING
    assert lc.reason == "upgrade rolled back, the previous version serves again: worker exited with code 1"
    assert not lc.failures  # the new version's failures are not the previous one's


def test_stop_is_idempotent_and_abandon_says_why() -> None:
    lc, _ = make()
    assert lc.transition(Stop()) == State.STOPPED
    assert lc.transition(Stopped()) == State.STOPPED
    lc.transition(Start())
    assert lc.transition(Abandoned("supervisor error: KeyError: 'x'")) == State.STOPPED
    assert lc.reason == "supervisor error: KeyError: 'x'"


@pytest.mark.parametrize("event", [Ready(), Failed(crash()), WorkerDied(crash()), Replaced(), ReplaceFailed("x"),
                                   RolledBack("x")])
def test_illegal_edges_raise(event: object) -> None:
    lc, _ = make()
    with pytest.raises(TransitionError):
        lc.transition(event)  # type: ignore[arg-type]
    assert lc.state == State.STOPPED

"""The restart policy as a pure state machine, driven by a fake clock."""

from __future__ import annotations

import signal

import pytest

from host.supervisor.state import ExitInfo, Lifecycle, RestartPolicy, State, TransitionError

SETUP = frozenset({120, 121})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def crash(rc: int = 1, start: bool = False) -> ExitInfo:
    return ExitInfo.from_returncode(rc, start, SETUP, ("last line",))


def make(**kw: float) -> tuple[Lifecycle, Clock]:
    clock = Clock()
    return Lifecycle(RestartPolicy(**kw), clock=clock, rng=lambda: 0.5), clock  # type: ignore[arg-type]


def test_happy_path() -> None:
    lc, _ = make()
    lc.start()
    assert lc.state == State.STARTING
    lc.ready()
    assert lc.state == State.RUNNING
    lc.stop()
    lc.stopped()
    assert lc.state == State.STOPPED


def test_backoff_grows_exponentially_and_is_capped() -> None:
    lc, clock = make(initial=0.1, cap=0.5, max_failures=100)
    lc.start()
    delays = []
    for _ in range(6):
        lc.failed(crash(start=True))
        delays.append(round(lc.backoff_until - clock.t, 3))
        clock.t = lc.backoff_until
        assert lc.backoff_elapsed()
    assert delays == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert lc.restarts == 6


def test_jitter_spreads_restarts() -> None:
    lo = Lifecycle(RestartPolicy(initial=1.0), clock=Clock(), rng=lambda: 0.0)
    hi = Lifecycle(RestartPolicy(initial=1.0), clock=Clock(), rng=lambda: 1.0)
    for lc in (lo, hi):
        lc.start()
        lc.failed(crash())
    assert lo.backoff_until - 1000.0 == pytest.approx(0.8)
    assert hi.backoff_until - 1000.0 == pytest.approx(1.2)


def test_backoff_does_not_restart_early() -> None:
    lc, clock = make()
    lc.start()
    lc.failed(crash())
    clock.t += 0.01
    assert not lc.backoff_elapsed()
    assert lc.state == State.BACKOFF


def test_too_many_failures_in_the_window_quarantine_loudly() -> None:
    lc, clock = make(max_failures=3, window=60)
    lc.start()
    for _ in range(2):
        assert lc.failed(crash(rc=-signal.SIGKILL)) == State.BACKOFF
        clock.t = lc.backoff_until
        lc.backoff_elapsed()
    assert lc.failed(crash(rc=-signal.SIGKILL)) == State.QUARANTINED
    assert lc.reason is not None
    assert "3 failures in 60s" in lc.reason
    assert "killed by SIGKILL — out of memory?" in lc.reason
    assert not lc.backoff_elapsed()


def test_failures_outside_the_window_are_forgotten() -> None:
    lc, clock = make(max_failures=2, window=10)
    lc.start()
    lc.failed(crash())
    clock.t += 11
    lc.backoff_elapsed()
    assert lc.failed(crash()) == State.BACKOFF


def test_stable_running_resets_the_backoff() -> None:
    lc, clock = make(max_failures=100, stable_after=10)
    lc.start()
    for _ in range(4):
        lc.failed(crash())
        clock.t = lc.backoff_until
        lc.backoff_elapsed()
    lc.ready()
    clock.t += 11
    lc.failed(crash())
    assert lc.backoff_until - clock.t == pytest.approx(0.1)


def test_sandbox_setup_failure_is_not_retried() -> None:
    lc, _ = make()
    lc.start()
    assert lc.failed(crash(rc=121, start=True)) == State.QUARANTINED
    assert lc.reason is not None and "sandbox set-up failed" in lc.reason


def test_operator_start_clears_quarantine() -> None:
    lc, _ = make(max_failures=1)
    lc.start()
    lc.failed(crash())
    assert lc.state == State.QUARANTINED
    lc.start()
    assert lc.state == State.STARTING
    assert lc.reason is None and not lc.failures


def test_illegal_edges_raise() -> None:
    lc, _ = make()
    with pytest.raises(TransitionError):
        lc.ready()


@pytest.mark.parametrize(("rc", "start", "text"), [
    (-signal.SIGKILL, False, "killed by SIGKILL — out of memory?"),
    (-signal.SIGXCPU, False, "CPU time limit"),
    (-signal.SIGSEGV, False, "killed by SIGSEGV"),
    (4, True, "failed to import"),
    (0, False, "exited with code 0"),
    (120, True, "sandbox set-up failed (exit 120)"),
])
def test_exit_reasons_read_like_advice(rc: int, start: bool, text: str) -> None:
    assert text in ExitInfo.from_returncode(rc, start, SETUP).reason

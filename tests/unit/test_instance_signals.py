"""Which process a non-resident instance's stop signals (host.supervisor.process.Instance), from a faked /proc."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace
from typing import Any

import pytest

from host.supervisor import process
from host.supervisor.process import Instance

# bwrap (10) -> the sandbox's init (11) -> gunicorn's arbiter (30000, born at tick 500). Pids have wrapped since:
# a process the plugin orphaned onto the init got pid 300 (born later, at tick 900), as the plugin can arrange
# by forking until pid_max (32768 here) wraps, and any busy host does by itself.
CHILDREN = {10: {11}, 11: {30000, 300}, 30000: {30001}}
BORN = {11: 400, 30000: 500, 30001: 510, 300: 900}


@pytest.fixture
def proc_fs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int | None, int]]:
    """What was signalled: (pid, the start time it was pinned to or None, signal). Nothing really is."""
    sent: list[tuple[int, int | None, int]] = []
    monkeypatch.setattr(process, "children_of", lambda pid: set(CHILDREN.get(pid, ())))
    monkeypatch.setattr(process, "start_time", BORN.get)
    monkeypatch.setattr(process, "_signal_if_same", lambda pid, born, sig: sent.append((pid, born, sig)),
                        raising=False)
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, None, sig)))
    return sent


def _instance(resident: bool = False) -> Any:
    bwrap = SimpleNamespace(pid=10, send_signal=lambda sig: None)
    inst = SimpleNamespace(proc=bwrap, returncode=None, spec=SimpleNamespace(policy=SimpleNamespace(resident=resident)))
    inst._command = lambda: Instance._command(inst)
    return inst


def test_cant_divert_a_graceful_stop_to_a_process_with_a_lower_pid(proc_fs: list[tuple[int, int | None, int]]) -> None:
    Instance._signal(_instance(), signal.SIGTERM)
    # the command the init started first gets it, pinned by its start time (a reused pid is not signalled)
    assert proc_fs == [(30000, 500, signal.SIGTERM)]


def test_a_sandbox_not_up_yet_is_signalled_through_bwrap(proc_fs: list[tuple[int, int | None, int]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "children_of", lambda pid: set())
    inst = _instance()
    inst.proc.send_signal = lambda sig: proc_fs.append((10, None, sig))
    Instance._signal(inst, signal.SIGTERM)
    assert proc_fs == [(10, None, signal.SIGTERM)]

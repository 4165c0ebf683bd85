"""Builds of different plugins overlap (host.installer): a partial install whose installer is alive is left alone
by sweeps, and the home's lock for a plugin waits for that plugin's running build."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from host.installer import PARTIAL_MARKER, _claim, locked_for, sweep
from host.layout import Layout
from host.registry import Registry


def test_a_sweep_removes_a_dead_partial_install_and_leaves_a_live_one(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    layout.ensure()
    registry = Registry(layout.registry)
    live = layout.install_dir("busy", "1.0-aaaaaa")
    dead = layout.install_dir("gone", "1.0-bbbbbb")
    dead.mkdir(parents=True)
    (dead / PARTIAL_MARKER).touch()  # its installer was killed: nobody holds the marker
    fd = _claim(live)
    try:
        assert sweep(layout, registry) == [dead]
        assert live.is_dir()
    finally:
        os.close(fd)
    assert sweep(layout, registry) == [live]  # once its installer is gone


def test_the_home_lock_for_a_plugin_waits_for_its_build_but_not_for_others(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    layout.ensure()
    fd = _claim(layout.install_dir("busy", "1.0-aaaaaa"))
    with locked_for(layout, "other"):  # another plugin's build does not hold it up
        pass
    entered = threading.Event()

    def uninstall_busy() -> None:
        with locked_for(layout, "busy"):
            entered.set()

    waiter = threading.Thread(target=uninstall_busy)
    waiter.start()
    try:
        assert not entered.wait(0.3)  # still building
    finally:
        os.close(fd)  # the build ends
    waiter.join(10)
    assert entered.is_set()

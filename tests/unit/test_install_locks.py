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


def test_a_sweep_removes_what_a_dead_first_install_made_outside_its_dir_and_nothing_else(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    layout.ensure()
    registry = Registry(layout.registry)
    registry.put("reg", "1.0", "1.0-aaaaaa", {}, True, uid_index=1)

    def killed_install(name: str, fresh: list[str], install_id: str = "2.0-bbbbbb") -> Path:
        install = layout.install_dir(name, install_id)
        os.close(_claim(install, fresh))  # its installer died: nobody holds the marker
        for d in (layout.data(name), layout.run_dir(name)):
            d.mkdir(parents=True, exist_ok=True)
        layout.disk_image(name).write_bytes(b"ext4")
        (layout.run / f".{name}.check.exit.json").write_text("{}")
        return install

    first = killed_install("first", ["data", "run"])  # a first install, killed in its entrypoint check
    kept = killed_install("kept", [])  # a reinstall after `uninstall --keep-data`: its data is the operator's
    upgrade = killed_install("reg", ["data", "run"])  # a registered plugin's: never touched
    dead = killed_install("busy", ["data", "run"], "1.0-cccccc")
    building = _claim(layout.install_dir("busy", "2.0-dddddd"))  # a build of it still running elsewhere
    try:
        assert sorted(sweep(layout, registry)) == sorted([first, kept, upgrade, dead])
    finally:
        os.close(building)
    assert not layout.plugin_root("first").exists()
    assert [p for p in (layout.data("first"), layout.disk_image("first"), layout.run_dir("first"),
                        layout.run / ".first.check.exit.json") if p.exists()] == []
    for name in ("kept", "reg", "busy"):
        assert layout.data(name).is_dir() and layout.disk_image(name).is_file() and layout.run_dir(name).is_dir()
    assert not (layout.run / ".kept.check.exit.json").exists()  # the confined steps' files of an unregistered one
    assert (layout.run / ".reg.check.exit.json").exists() and (layout.run / ".busy.check.exit.json").exists()

"""What a killed host left in run/ goes at the next start; what belongs to installed plugins stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from host.layout import Layout
from host.settings import HostSettings
from host.supervisor import leftovers


def test_exit_reports_and_the_run_files_of_uninstalled_plugins_go(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leftovers.cgroup, "leftovers", lambda prefix: [])
    layout = Layout(tmp_path / "h")
    layout.ensure()
    run = layout.run
    keep = [run / "control.sock", run / "routes.json", run / "supervisor.lock", run / ".steady.policy.json",
            run / ".steady.passwd", run / "steady"]
    gone = [run / ".steady.3.exit.json", run / ".old.policy.json", run / ".old.hosts", run / ".old.2.exit.json",
            run / "old"]
    for p in keep + gone:
        if p.name in ("steady", "old"):
            p.mkdir()
            (p / "7.sock").write_text("")
        else:
            p.write_text("x")
    removed = leftovers.clean(HostSettings(home=layout.home), frozenset({"steady"}))
    assert sorted(removed) == sorted(str(p) for p in gone)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)


def test_the_scratch_dir_of_a_killed_archive_extraction_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leftovers.cgroup, "leftovers", lambda prefix: [])
    layout = Layout(tmp_path / "h")
    layout.ensure()
    killed = layout.cache / "unpack" / "0123456789abcdef"
    (killed / "unpacked" / "plugin").mkdir(parents=True)  # nobody holds its lock: its unpacker died
    assert leftovers.clean(HostSettings(home=layout.home), frozenset()) == [str(killed)]
    assert list((layout.cache / "unpack").iterdir()) == []

"""Bundle copying rules and the registry's transactions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from host.bundle import copy_bundle
from host.errors import PluginNotFound
from host.registry import Registry


def test_copy_skips_debris_and_never_follows_symlinks_out(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = 1")
    (src / "app.py").write_text("app = None")
    for junk in (".git", "__pycache__", ".venv", "node_modules"):
        (src / junk).mkdir()
        (src / junk / "f").write_text("junk")
    (src / "a.pyc").write_bytes(b"\0")
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    os.symlink(secret, src / "leak.txt")
    os.symlink(tmp_path, src / "leakdir")
    os.symlink("app.py", src / "alias.py")
    os.symlink("missing", src / "dangling")

    report = copy_bundle(src, tmp_path / "dst")
    dst = tmp_path / "dst"
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*")) == ["alias.py", "app.py", "pkg", "pkg/mod.py"]
    assert not (dst / "alias.py").is_symlink() and (dst / "alias.py").read_text() == "app = None"
    assert len(report.skipped_symlinks) == 3
    assert any(s.startswith("leak.txt -> ") for s in report.skipped_symlinks)


def test_registry_put_get_enable_remove_and_audit(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.db")
    reg.put("a", "1.0", "1.0-x", {"name": "a"}, enabled=True)
    reg.put("b", "2.0", "2.0-y", {"name": "b"}, enabled=False)
    assert [r.name for r in reg.all()] == ["a", "b"]
    assert reg.require("a").uid_index != reg.require("b").uid_index
    uid_a = reg.require("a").uid_index
    reg.put("a", "1.1", "1.1-z", {"name": "a"}, enabled=True)  # upgrade keeps the uid
    assert reg.require("a").uid_index == uid_a and reg.require("a").version == "1.1"
    assert reg.set_enabled("b", True) is True
    assert reg.set_enabled("b", True) is False
    reg.remove("b")
    with pytest.raises(PluginNotFound):
        reg.require("b")
    kinds = [e.kind for e in reversed(reg.events())]
    assert kinds == ["installed", "installed", "installed", "enabled", "uninstalled"]


def test_registry_generation_changes_when_another_connection_commits(tmp_path: Path) -> None:
    reader = Registry(tmp_path / "r.db")
    writer = Registry(tmp_path / "r.db")
    g = reader.generation()
    assert reader.generation() == g
    writer.put("a", "1", "1-x", {}, enabled=True)
    assert reader.generation() != g


def test_uids_are_never_reused_except_for_kept_data(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.db")
    reg.put("a", "1", "1-x", {}, enabled=True)
    reg.put("b", "1", "1-y", {}, enabled=True)
    a, b = reg.require("a").uid_index, reg.require("b").uid_index
    reg.remove("b")
    reg.put("c", "1", "1-z", {}, enabled=True)
    assert reg.require("c").uid_index not in (a, b)  # b's leftovers never become c's
    reg.remove("a", keep_uid=True)
    reg.put("a", "2", "2-x", {}, enabled=True)
    assert reg.require("a").uid_index == a  # its kept data dir is still writable by it
    reg.put("d", "1", "1-w", {}, enabled=True)
    assert reg.require("d").uid_index not in (a, b, reg.require("c").uid_index)

"""Bundle copying rules and the registry's transactions."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from host.bundle import BundleError, copy_bundle
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


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "app.py").write_text("app = None")
    return src


@pytest.fixture
def root_only_file(tmp_path: Path) -> Path:
    secret = tmp_path / "shadow"
    secret.write_text("root:secret")
    secret.chmod(0o600)
    return secret


def test_cant_smuggle_a_root_only_file_in_as_a_hard_link(
    tmp_path: Path, plugin_dir: Path, root_only_file: Path
) -> None:
    os.link(root_only_file, plugin_dir / "pkg" / "data.txt")
    with pytest.raises(BundleError, match=r"^pkg/data.txt: a hard link \(one file with 2 names"):
        copy_bundle(plugin_dir, tmp_path / "dst")
    assert not (tmp_path / "dst" / "pkg" / "data.txt").exists()


def test_cant_smuggle_a_hard_link_in_behind_a_symlink(tmp_path: Path, plugin_dir: Path, root_only_file: Path) -> None:
    os.link(root_only_file, plugin_dir / "pkg" / "data.txt")
    (plugin_dir / "alias.txt").symlink_to("pkg/data.txt")
    with pytest.raises(BundleError, match=r"^alias.txt: a hard link"):
        copy_bundle(plugin_dir, tmp_path / "dst")


def test_a_fifo_is_refused_without_waiting_on_it(tmp_path: Path, plugin_dir: Path) -> None:
    os.mkfifo(plugin_dir / "pkg" / "pipe")
    with pytest.raises(BundleError, match=r"^pkg/pipe: a FIFO; a bundle holds only regular files and directories"):
        copy_bundle(plugin_dir, tmp_path / "dst")


def test_a_symlink_to_a_fifo_inside_is_skipped_without_waiting_on_it(tmp_path: Path, plugin_dir: Path) -> None:
    os.mkfifo(plugin_dir / "pkg" / "pipe.pyc")  # skipped by its suffix, so only the link could reach it
    (plugin_dir / "pipe").symlink_to("pkg/pipe.pyc")
    report = copy_bundle(plugin_dir, tmp_path / "dst")
    assert report.skipped_symlinks == ["pipe -> pkg/pipe.pyc"]


def test_copies_are_0644_whatever_the_source_mode(tmp_path: Path, plugin_dir: Path) -> None:
    (plugin_dir / "app.py").chmod(0o4777)
    copy_bundle(plugin_dir, tmp_path / "dst")
    assert stat.S_IMODE((tmp_path / "dst" / "app.py").stat().st_mode) == 0o644


def test_cant_make_root_chmod_through_a_file_swapped_for_a_symlink_mid_copy(
    tmp_path: Path, plugin_dir: Path, root_only_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The swap comes right after the copy's own no-follow check of app.py. The old copy then copied the
    # link as a link and chmodded the copy by path: the root-only file became 0644.
    real: Callable[..., Any] = os.stat
    swapped: list[bool] = []

    def swap_after_check(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if not kwargs.get("follow_symlinks", True) and os.path.basename(args[0]) == "app.py" and not swapped:
            swapped.append(True)
            (plugin_dir / "app.py").unlink()
            (plugin_dir / "app.py").symlink_to(root_only_file)
        return result

    monkeypatch.setattr(os, "stat", swap_after_check)
    error = ""
    try:
        copy_bundle(plugin_dir, tmp_path / "dst")
    except BundleError as exc:
        error = str(exc)
    monkeypatch.undo()
    assert swapped and stat.S_IMODE(root_only_file.stat().st_mode) == 0o600
    assert error.startswith("app.py: changed while it was being copied")
    assert not os.path.lexists(tmp_path / "dst" / "app.py")


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

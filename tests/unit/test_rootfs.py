"""Root's file operations on plugin-writable trees: a planted symlink, hard link, FIFO or a directory swapped for
a symlink mid-walk never makes root chown, chmod, read or delete anything outside the tree."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from host import rootfs
from host.errors import UnsafeTree

PLUGIN_UID = 64999
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def owner_mode(p: Path) -> tuple[int, int, int]:
    st = os.lstat(p)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@pytest.fixture
def shadow(tmp_path: Path) -> Path:
    """A root-only file outside the tree, standing in for /etc/shadow (group/other write, so that a
    followed lock-down chmod would show)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    f = outside / "shadow"
    f.write_text("root:secret")
    f.chmod(0o622)
    return f


@pytest.fixture
def tree(tmp_path: Path, shadow: Path) -> Path:
    """A plugin's tree with a symlink to the file, one to its directory, and a sub-directory with a file."""
    t = tmp_path / "tree"
    (t / "sub").mkdir(parents=True)
    (t / "sub" / "mine.txt").write_text("plugin data")
    (t / "shadow").symlink_to(shadow)
    (t / "etc").symlink_to(shadow.parent)
    return t


@root_only
def test_cant_make_root_chown_or_chmod_through_a_planted_symlink(tree: Path, shadow: Path) -> None:
    before = owner_mode(shadow), owner_mode(shadow.parent)
    assert rootfs.chown_tree(tree, PLUGIN_UID) == []
    assert owner_mode(tree / "sub" / "mine.txt")[:2] == (PLUGIN_UID, PLUGIN_UID)
    (tree / "sub" / "mine.txt").chmod(0o4777)
    assert rootfs.chown_tree(tree, 0, rootfs.LOCK_STRIP) == []
    assert owner_mode(tree / "sub" / "mine.txt") == (0, 0, 0o755)
    assert (owner_mode(shadow), owner_mode(shadow.parent)) == before


@root_only
def test_cant_make_root_chown_a_hard_linked_file(tree: Path, shadow: Path) -> None:
    os.link(shadow, tree / "sub" / "link")
    before = owner_mode(shadow)
    assert rootfs.chown_tree(tree, PLUGIN_UID) == ["sub/link"]
    assert rootfs.chown_tree(tree, 0, rootfs.LOCK_STRIP) == ["sub/link"]
    assert owner_mode(shadow) == before


def swap_after(monkeypatch: pytest.MonkeyPatch, func: str, victim: Path, target: Path) -> None:
    """Replace directory ``victim`` by a symlink to ``target`` right after the walk's first call of os.<func>
    that concerns it: after listing its parent ("listdir") or after checking its type ("stat")."""
    real: Callable[..., Any] = getattr(os, func)
    done: list[bool] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        concerns = isinstance(args[0], int) if func == "listdir" else args[0] == victim.name
        if concerns and not done:
            done.append(True)
            victim.rename(victim.with_name("moved-away"))
            victim.symlink_to(target)
        return result

    monkeypatch.setattr(os, func, wrapper)


@root_only
@pytest.mark.parametrize("moment", ["listdir", "stat"])
def test_cant_make_root_follow_a_directory_swapped_for_a_symlink_mid_walk(
    tree: Path, shadow: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    before = owner_mode(shadow), owner_mode(shadow.parent)
    swap_after(monkeypatch, moment, tree / "sub", shadow.parent)
    rootfs.chown_tree(tree, PLUGIN_UID)
    monkeypatch.undo()
    assert (tree / "sub").is_symlink()
    assert (owner_mode(shadow), owner_mode(shadow.parent)) == before


@root_only
@pytest.mark.parametrize("moment", ["listdir", "stat"])
def test_cant_make_root_delete_through_a_directory_swapped_mid_removal(
    tree: Path, shadow: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    swap_after(monkeypatch, moment, tree / "sub", shadow.parent)
    assert rootfs.remove_tree(tree)
    monkeypatch.undo()
    assert not os.path.lexists(tree)
    assert shadow.read_text() == "root:secret"


def test_remove_tree_deletes_links_not_their_targets(tree: Path, shadow: Path) -> None:
    os.link(shadow, tree / "sub" / "hard")
    os.mkfifo(tree / "sub" / "fifo")
    assert rootfs.remove_tree(tree)
    assert not os.path.lexists(tree)
    assert shadow.read_text() == "root:secret" and os.stat(shadow).st_nlink == 1


def test_remove_tree_on_a_symlink_removes_only_the_link(tmp_path: Path, shadow: Path) -> None:
    link = tmp_path / "data"
    link.symlink_to(shadow.parent)
    assert rootfs.remove_tree(link)
    assert not os.path.lexists(link) and shadow.read_text() == "root:secret"
    assert rootfs.remove_tree(tmp_path / "missing")


def test_remove_tree_removes_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    top = tmp_path / "deep"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for _ in range(1100):  # deeper than PATH_MAX allows by path, and than shutil.rmtree's recursion
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)
    assert rootfs.remove_tree(top)
    assert not top.exists()


def test_chown_tree_refuses_a_symlink_as_its_top(tmp_path: Path, shadow: Path) -> None:
    (tmp_path / "venv").symlink_to(shadow.parent)
    with pytest.raises(UnsafeTree, match="not a directory"):
        rootfs.chown_tree(tmp_path / "venv", 0, rootfs.LOCK_STRIP)


def test_read_beneath_never_follows_a_link_nor_waits_on_a_fifo(tree: Path, shadow: Path) -> None:
    assert rootfs.read_beneath(tree, "sub/mine.txt") == b"plugin data"
    assert rootfs.read_beneath(tree, "sub/mine.txt", limit=6) == b"plugin"
    os.mkfifo(tree / "sub" / "fifo")
    for rel in ("shadow", "etc/shadow", "sub/../shadow", "/etc/shadow", "sub/fifo", "sub", "missing"):
        assert rootfs.read_beneath(tree, rel) == b"", rel


def test_own_dir_replaces_a_planted_symlink_and_leaves_its_target(tmp_path: Path, shadow: Path) -> None:
    (tmp_path / ".tmp").symlink_to(shadow.parent)
    before = owner_mode(shadow.parent)
    parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(rootfs.own_dir(parent, ".tmp", None))
    finally:
        os.close(parent)
    assert (tmp_path / ".tmp").is_dir() and not (tmp_path / ".tmp").is_symlink()
    assert owner_mode(tmp_path / ".tmp")[2] == 0o700 and owner_mode(shadow.parent) == before


@root_only
@pytest.mark.parametrize("planted", ["symlink", "hardlink", "directory", "fifo"])
def test_cant_make_root_write_through_what_the_plugin_left_at_the_name(tree: Path, shadow: Path, planted: str) -> None:
    target = tree / "settings.json"
    if planted == "symlink":
        target.symlink_to(shadow)
    elif planted == "hardlink":
        os.link(shadow, target)
    elif planted == "directory":
        (target / "deep").mkdir(parents=True)
    else:
        os.mkfifo(target)
    before = (shadow.read_text(), owner_mode(shadow))
    parent = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        rootfs.write_file_at(parent, "settings.json", b'{"k": 1}\n', 0o400, PLUGIN_UID)
    finally:
        os.close(parent)
    assert (shadow.read_text(), owner_mode(shadow)) == before
    assert not target.is_symlink() and target.read_bytes() == b'{"k": 1}\n'
    assert owner_mode(target) == (PLUGIN_UID, PLUGIN_UID, 0o400) and os.lstat(target).st_nlink == 1
    assert sorted(p.name for p in tree.iterdir() if p.name.startswith(".settings")) == []  # no temp file left

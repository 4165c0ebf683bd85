"""Data snapshots for `host rollback` (host.snapshots): copied by descriptor, links never followed."""

from __future__ import annotations

import os
from pathlib import Path

from host import snapshots
from host.layout import Layout


def layout(tmp_path: Path) -> Layout:
    lay = Layout(tmp_path / "home")
    lay.ensure()
    data = lay.data("demo")
    (data / "sub").mkdir(parents=True)
    (data / "db.sqlite").write_bytes(b"v1" * 100)
    (data / "sub" / "notes.txt").write_text("hello")
    os.chmod(data / "sub" / "notes.txt", 0o4640)  # a set-id bit is never copied
    return lay


def test_restore_puts_back_the_data_as_it_was(tmp_path: Path) -> None:
    lay = layout(tmp_path)
    assert snapshots.take(lay, "demo", "1.0.0-aaa", 1 << 20) is not None
    data = lay.data("demo")
    (data / "db.sqlite").write_bytes(b"v2")
    (data / "new.txt").write_text("written by 1.1.0")
    assert snapshots.restore(lay, "demo", "1.0.0-aaa")
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == ["db.sqlite", "sub", "sub/notes.txt"]
    assert (data / "db.sqlite").read_bytes() == b"v1" * 100
    assert (data / "sub" / "notes.txt").stat().st_mode & 0o7777 == 0o640


def test_cant_make_root_copy_a_host_file_through_a_planted_symlink(tmp_path: Path) -> None:
    lay = layout(tmp_path)
    secret = tmp_path / "shadow"
    secret.write_text("root:secret")
    os.symlink(secret, lay.data("demo") / "leak")
    os.mkfifo(lay.data("demo") / "fifo")  # would block a reader forever: left out
    snap = snapshots.take(lay, "demo", "1.0.0-aaa", 1 << 20)
    assert snap is not None
    assert os.readlink(snap / "leak") == str(secret)  # still a link, its target never read
    assert not (snap / "fifo").exists()
    (lay.data("demo") / "leak").unlink()
    assert snapshots.restore(lay, "demo", "1.0.0-aaa")
    assert (lay.data("demo") / "leak").is_symlink()


def test_a_data_dir_over_the_limit_is_not_snapshotted(tmp_path: Path) -> None:
    lay = layout(tmp_path)
    assert snapshots.take(lay, "demo", "1.0.0-aaa", 100) is None
    assert not snapshots.restore(lay, "demo", "1.0.0-aaa")
    snapshots.forget(lay, "demo")
    assert not snapshots.root(lay, "demo").exists()

"""`host install` of a plugin directory holding what a bundle may not: refused with one line, nothing left behind.

Each install is refused while copying the bundle, before any venv is built, so these take a second each.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import FIXTURES, run_host

SECRET = "root:$6$not-for-plugins"


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a copy of the echo plugin, a root-only 0600 file next to it on the same filesystem)."""
    src = tmp_path / "echo"
    shutil.copytree(FIXTURES / "echo", src)
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    yield src, secret


def left_behind(home: Path) -> list[str]:
    """Everything the refused install of ``echo`` left: its files, registry rows, or the secret anywhere."""
    found = [str(p.relative_to(home)) for p in home.rglob("*")
             if "echo" in p.relative_to(home).parts and "logs" not in p.relative_to(home).parts]
    found += [str(p) for p in home.rglob("*") if p.is_file() and not p.is_symlink()
              and SECRET.encode() in p.read_bytes()]
    db = home / "registry.db"
    if db.exists():
        with sqlite3.connect(db) as c:
            found += [f"registry: {row}" for row in c.execute("SELECT name FROM plugins")]
    return found


def refusal(home: Path, src: Path) -> str:
    r = run_host(home, "install", str(src), "--yes", timeout=60)  # a FIFO read would hang here
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return errors[0]


def test_cant_install_a_hard_link_to_a_root_only_file(home: Path, plugin: tuple[Path, Path]) -> None:
    src, secret = plugin
    os.link(secret, src / "data.txt")
    line = refusal(home, src)
    assert line.startswith("error: echo: install failed while copying the bundle: data.txt: a hard link (one file "
                           "with 2 names, the others possibly outside the plugin); a bundle holds only regular "
                           "files and directories: replace it with a copy and install again"), line
    assert left_behind(home) == []


def test_cant_install_a_fifo(home: Path, plugin: tuple[Path, Path]) -> None:
    src, _secret = plugin
    os.mkfifo(src / "pipe")
    line = refusal(home, src)
    assert line == ("error: echo: install failed while copying the bundle: pipe: a FIFO; a bundle holds only "
                    "regular files and directories (remove it and install again)"), line
    assert left_behind(home) == []

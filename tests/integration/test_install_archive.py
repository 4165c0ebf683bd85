"""`host install ARCHIVE --grant FILE`: a real plugin from a .tgz installs and serves; hostile archives and a
manifest asking beyond the grant are refused with the exact lines, leaving the registry and the disk as before."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import stat
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import FIXTURES, HOST, ServedHost, run_host, short_home, wait_for
from tests.unit.archives import tgz_bomb, zip_bomb

STEADY = FIXTURES / "steady"
MiB = 1 << 20


def tgz_of(plugin: Path, out: Path, manifest: str | None = None) -> Path:
    """Like `tar czf out.tgz steady/`: one top-level directory."""
    with tarfile.open(out, "w:gz") as tf:
        for f in sorted(plugin.iterdir()):
            if f.name == "plugin.toml" and manifest is not None:
                info = tarfile.TarInfo(f"{plugin.name}/plugin.toml")
                info.size = len(manifest.encode())
                tf.addfile(info, io.BytesIO(manifest.encode()))
            elif f.is_file():
                tf.add(f, arcname=f"{plugin.name}/{f.name}")
    return out


def state(home: Path) -> tuple[dict[str, tuple[str, int]], list[tuple[Any, ...]], int]:
    """The home as a refused install must leave it: every path (type, size) but the registry's own files,
    the registry's plugin rows and the number of audit events."""
    files = {}
    for p in sorted(home.rglob("*")):
        if p.name.startswith("registry.db"):
            continue
        st = p.lstat()
        files[str(p.relative_to(home))] = (stat.filemode(st.st_mode), st.st_size if stat.S_ISREG(st.st_mode) else 0)
    with sqlite3.connect(home / "registry.db") as db:
        rows = [tuple(r) for r in db.execute("SELECT * FROM plugins ORDER BY name")]
        events = db.execute("SELECT count(*) FROM events").fetchone()[0]
    return files, rows, events


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """A home with steady installed from a .tgz, consent given by a grant file."""
    with short_home() as h:
        work = h.parent
        grant = work / "g.json"
        grant.write_text(json.dumps({"resources": {"memory_mb": 256}, "network": {"outbound": False}}))
        r = run_host(h, "install", str(tgz_of(STEADY, work / "steady.tgz")), "--grant", str(grant), "--no-enable")
        assert r.returncode == 0, r.stderr
        assert "==> unpacking 2 files (" in r.stderr
        yield h


def test_installed_from_a_tgz_with_a_grant_file_serves(home: Path) -> None:
    assert json.loads(run_host(home, "list", "--json", check=True).stdout)[0]["name"] == "steady"
    assert list((home / "cache" / "unpack").iterdir()) == []  # the scratch copy is gone
    run_host(home, "enable", "steady", check=True)
    host = ServedHost(home).start(wait_plugins=("steady",))
    try:
        r = host.get("/plugins/steady/")
        assert (r.status_code, r.text) == (200, "steady")
    finally:
        host.stop()
        run_host(home, "disable", "steady", check=True)


def refused(home: Path, archive: Path, *args: str) -> list[str]:
    before = state(home)
    r = run_host(home, "install", str(archive), "--grant", str(home.parent / "g.json"), *args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert state(home) == before
    assert list((home / "cache" / "unpack").iterdir()) == []
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]


def test_cant_zip_slip(home: Path) -> None:
    bad = home.parent / "slip.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("steady/plugin.toml", (STEADY / "plugin.toml").read_text())
        zf.writestr("steady/../../../../etc/cron.d/pwned", "* * * * * root sh -c 'id > /tmp/pwned'\n")
    assert refused(home, bad) == [
        "error: slip.zip: steady/../../../../etc/cron.d/pwned: '..' in its path (it would land outside the plugin)"]
    assert not Path("/etc/cron.d/pwned").exists()


def test_cant_plant_a_symlink_to_etc_shadow(home: Path) -> None:
    shadow = os.stat("/etc/shadow")
    bad = home.parent / "shadow.tgz"
    with tarfile.open(bad, "w:gz") as tf:
        tf.add(STEADY / "plugin.toml", arcname="steady/plugin.toml")
        link = tarfile.TarInfo("steady/static")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tf.addfile(link)
    assert refused(home, bad) == [
        "error: shadow.tgz: steady/static: a symbolic link (to /etc/shadow); archives may hold only regular files "
        "and directories"]
    assert (os.stat("/etc/shadow").st_mtime, os.stat("/etc/shadow").st_mode) == (shadow.st_mtime, shadow.st_mode)


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_cant_bomb_1_gib(home: Path, kind: str) -> None:
    bomb = zip_bomb(home.parent / "bomb.zip") if kind == "zip" else tgz_bomb(home.parent / "bomb.tgz")
    assert bomb.stat().st_size < 2 * MiB
    member = "plugin/bomb.bin" if kind == "zip" else "plugin/bomb0.bin"
    assert refused(home, bomb) == [
        f"error: {bomb.name}: {member}: 1073741824 bytes, over the 100 MiB limit for one file"]


def test_asking_beyond_the_grant_is_refused_one_line_each(home: Path) -> None:
    manifest = (STEADY / "plugin.toml").read_text().replace('version = "1.0.0"', 'version = "2.0.0"') + (
        '\n[permissions.network]\noutbound = ["api.example.com:443"]\n'
        "[permissions.resources]\nmemory_mb = 512\n")
    greedy = tgz_of(STEADY, home.parent / "greedy.tgz", manifest)
    assert refused(home, greedy) == ["error: steady: network.outbound: api.example.com:443 not granted",
                                     "error: steady: resources.memory_mb: 512 > granted 256"]
    r = run_host(home, "install", str(greedy), "--grant", str(home.parent / "g.json"), "--yes")
    assert (r.returncode, r.stderr.strip()) == (2, "error: --grant replaces --yes: pass one of them")


def test_a_killed_unpack_leaves_nothing_once_the_next_install_runs(home: Path) -> None:
    """kill -9 mid-extraction (1 GiB spread over 16 files of 64 MiB: the total limit stops it at 192 MiB): its
    scratch dir stays, unlocked, and the next install's sweep removes it."""
    bomb = tgz_bomb(home.parent / "slow.tgz", members=16, size=64 * MiB)
    scratch = home / "cache" / "unpack"
    proc = subprocess.Popen([*HOST, "--home", str(home), "install", str(bomb), "--yes"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: any((d / "unpacked").exists() for d in scratch.iterdir()), 30, interval=0.005,
                 what="the extraction to start")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    left = list(scratch.iterdir())
    assert len(left) == 1 and (left[0] / "unpacked").exists()
    r = run_host(home, "install", str(zip_bomb(home.parent / "b.zip")), "--yes")  # any archive install sweeps
    assert r.returncode == 2, r.stderr
    assert list(scratch.iterdir()) == []

"""Disk and inode quota, end to end: ``disk-hog`` (16 MiB, 500 files) writes until the kernel refuses.

Its data dir (TMPDIR included) is an ext4 image the host loop-mounts, so the writes end in ENOSPC inside its
quota while the host's disk and the other plugin (``echo``, its own image) are untouched. Then the mount's
lifecycle: a SIGKILLed host's mount is adopted (never mounted twice), a strict host without the disk layer
refuses to start the plugin, a pre-quota data dir moves into an image, uninstall leaves nothing mounted.

The tests run in order on one home (installs are slow); each states what it needs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import FIXTURES, ServedHost, mounts_under, run_host, short_home, wait_for
from tests.integration.lifecycle_support import plugin_status, wait_gone

MiB = 1024 * 1024
HOG, ECHO = "disk-hog", "echo"
QUOTA_BYTES, QUOTA_FILES = 16 * MiB, 500

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
                                reason="the disk layer needs a root host with loop devices")


class Home:
    """The module's home and whichever host currently serves it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.host: ServedHost | None = None

    def serve(self, env: dict[str, str] | None = None, wait: tuple[str, ...] = (HOG, ECHO)) -> ServedHost:
        self.stop()
        self.host = ServedHost(self.path, env={"HOST_PROBE_INTERVAL": "0.5", **(env or {})}).start(wait_plugins=wait)
        return self.host

    def stop(self) -> None:
        if self.host is not None:
            self.host.stop()
            self.host = None

    @property
    def served(self) -> ServedHost:
        assert self.host is not None
        return self.host


@pytest.fixture(scope="module")
def home() -> Iterator[Home]:
    with short_home() as path:
        for src in ("disk_hog", "echo"):
            run_host(path, "install", str(FIXTURES / src), "--yes", check=True)
        h = Home(path)
        h.serve()
        try:
            yield h
        finally:
            h.stop()


def hog(host: ServedHost, op: str, **params: str) -> dict[str, Any]:
    r = httpx.post(f"{host.url}/plugins/{HOG}/{op}", params=params, timeout=60)
    assert r.status_code == 200, r.text
    return dict(r.json())


def image(home: Home, name: str) -> Path:
    return home.path / "data" / f"{name}.img"


def loop_devices(img: Path) -> list[str]:
    """Loop devices whose backing file is ``img`` (also once it was deleted)."""
    found = []
    for dev in Path("/sys/block").glob("loop*"):
        try:
            backing = (dev / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing in (str(img), f"{img} (deleted)"):
            found.append(dev.name)
    return found


def holders(root: Path) -> list[str]:
    """Processes whose mount namespace still holds a mount below ``root`` (for failure messages)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/mountinfo") as fh:
                if f" {root}/" in fh.read():
                    found.append(f"{pid} {Path(f'/proc/{pid}/cmdline').read_bytes()[:100]!r}")
        except OSError:
            continue
    return found


def allocated(root: Path) -> int:
    """Bytes of the host's disk under ``root``, not counting what is mounted below it."""
    dev, total = root.stat().st_dev, 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == dev]
        for f in filenames:
            total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def listed(host: ServedHost) -> dict[str, dict[str, Any]]:
    r = host.cli("list", "--json")
    assert r.returncode == 0, r.stderr
    return {p["name"]: p for p in json.loads(r.stdout)}


def test_cant_write_more_bytes_than_its_quota(home: Home) -> None:
    host = home.serve() if home.host is None else home.served
    before = allocated(home.path)
    out = hog(host, "fill/bytes")
    # The kernel stopped it at its quota: no more than 16 MiB written of the 1 GiB it tried.
    assert out["errno"] == "ENOSPC", out
    assert 12 * MiB <= out["written"] <= QUOTA_BYTES, out
    # ... and the host's disk grew by at most the image (the writes went into it, nowhere else).
    assert image(home, HOG).stat().st_blocks * 512 <= QUOTA_BYTES
    assert allocated(home.path) - before < QUOTA_BYTES + 4 * MiB
    # The plugin itself, its neighbour and the host keep serving.
    assert host.get(f"/plugins/{HOG}/").text == "alive"
    assert host.get(f"/plugins/{ECHO}/status/200").status_code == 200
    assert host.get("/healthz").status_code == 200
    # Visible outside: `host list` shows it full (its neighbour is not), and the supervisor says so once.
    disks = {name: row["disk"] for name, row in listed(host).items()}
    assert disks[HOG]["full"] is True and disks[HOG]["size_mb"] <= 16, disks
    assert disks[ECHO]["full"] is False and disks[ECHO]["size_mb"] > 400, disks
    wait_for(lambda: f"{HOG}: data dir is full" in host.read_log(), 10, what="the 'data dir is full' log line")
    assert hog(host, "clean")["errno"] is None


def test_cant_escape_the_quota_through_tmpdir(home: Home) -> None:
    out = hog(home.served, "fill/bytes", where="tmp")
    assert out["errno"] == "ENOSPC" and out["written"] <= QUOTA_BYTES, out
    assert "/.tmp/" in out["dir"], out
    hog(home.served, "clean")


def test_cant_create_more_files_than_its_quota(home: Home) -> None:
    out = hog(home.served, "fill/files")
    # Out of inodes (not of space): about 500 files, of the 40,000 it tried.
    assert out["errno"] == "ENOSPC", out
    assert out["free_files"] == 0 and out["free_blocks"] > 0, out
    assert QUOTA_FILES - 40 <= out["created"] <= QUOTA_FILES, out
    assert hog(home.served, "clean")["free_files"] > QUOTA_FILES - 40


def test_a_killed_host_leaves_a_mount_the_next_host_adopts(home: Home) -> None:
    host = home.served
    marker = home.path / "data" / HOG / "kept.txt"
    marker.write_text("survives")
    everything = host.all_pids()
    assert host.proc is not None
    host.proc.kill()  # SIGKILL: no shutdown, so the mounts stay behind
    host.proc.wait(10)
    wait_gone(everything - {host.proc.pid})
    home.host = None
    assert str(home.path / "data" / HOG) in mounts_under(home.path)
    assert len(loop_devices(image(home, HOG))) == 1

    host = home.serve()
    # Adopted as it was: one mount, one loop device (a second device on the same image would corrupt it).
    points = [p for p in mounts_under(home.path) if p == str(home.path / "data" / HOG)]
    with open("/proc/self/mountinfo") as fh:
        stacked = sum(1 for line in fh if line.split()[4] == str(home.path / "data" / HOG))
    assert points and stacked == 1
    assert len(loop_devices(image(home, HOG))) == 1
    assert marker.read_text() == "survives"
    assert host.get(f"/plugins/{HOG}/").text == "alive"


def test_a_stopped_host_unmounts_every_image(home: Home) -> None:
    if home.host is None:
        home.serve()
    home.stop()
    assert mounts_under(home.path) == []
    try:
        wait_for(lambda: not loop_devices(image(home, HOG)) and not loop_devices(image(home, ECHO)), 10,
                 what="the loop devices to go")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; mounts still held by {holders(home.path)}") from None


def test_strict_host_refuses_to_start_a_plugin_without_the_disk_layer(home: Home) -> None:
    home.stop()
    no_tools = {"HOST_DISK_TOOLS_PATH": "/nonexistent"}
    host = home.serve(env=no_tools, wait=())
    host.wait_state(HOG, "quarantined", 30)
    reason = plugin_status(host, HOG)["reason"]
    assert reason.startswith("disk layer unavailable: mkfs.ext4"), reason
    assert "HOST_SANDBOX=weak" in reason and "\n" not in reason
    assert host.get(f"/plugins/{HOG}/").status_code == 503
    assert mounts_under(home.path) == []  # nothing mounted, and it never ran without its quota
    doctor = run_host(home.path, "doctor", "--json", env=no_tools)
    assert json.loads(doctor.stdout)["disk"]["available"] is False
    home.stop()
    # Weak mode runs it anyway, and says so.
    host = home.serve(env={**no_tools, "HOST_SANDBOX": "weak"})
    assert f"{HOG}: running WITHOUT a disk quota (HOST_SANDBOX=weak)" in host.read_log()
    assert f"{HOG}: running with a weaker sandbox (HOST_SANDBOX=weak): missing disk" in host.read_log()
    sandbox = host.plugin(HOG)["sandbox"]  # /healthz: the level, or (for the CLI's eyes) the detail
    assert sandbox == "weak" or (sandbox["level"] == "weak" and "disk" in sandbox["missing"]), sandbox
    home.stop()


def test_a_data_dir_from_before_quotas_moves_into_an_image(home: Home) -> None:
    home.stop()
    data = home.path / "data" / ECHO
    uid = data.stat().st_uid
    image(home, ECHO).unlink()  # as a host before quotas left it: a plain directory with the plugin's files
    (data / "notes.txt").write_text("old data")
    os.chown(data / "notes.txt", uid, uid)
    os.chown(data, uid, uid)
    host = home.serve()
    assert str(data) in mounts_under(home.path)
    assert (data / "notes.txt").read_text() == "old data"
    assert (data / "notes.txt").stat().st_uid == uid
    assert not any(p.name.startswith(f".{ECHO}.") for p in (home.path / "data").iterdir())
    assert host.get(f"/plugins/{ECHO}/status/200").status_code == 200


def test_uninstall_removes_the_image_and_leaves_no_mount_or_loop_device(home: Home) -> None:
    host = home.serve() if home.host is None else home.served
    # Another home's host, started while our images are mounted: its web tier's private mount view copies
    # every mount on the machine, ours included, and must not keep them alive.
    with short_home() as elsewhere:
        neighbour = ServedHost(elsewhere).start()
        try:
            r = host.cli("uninstall", ECHO, "--keep-data")
            assert r.returncode == 0, r.stderr
            assert f"uninstalled {ECHO}: kept {home.path / 'data' / ECHO}, {image(home, ECHO)}" in r.stderr
            assert image(home, ECHO).exists() and str(home.path / "data" / ECHO) not in mounts_under(home.path)
            r = host.cli("uninstall", HOG)
            assert r.returncode == 0, r.stderr
            assert not image(home, HOG).exists() and not (home.path / "data" / HOG).exists()
            assert mounts_under(home.path) == []
            deadline = time.monotonic() + 10
            while loop_devices(image(home, HOG)) or loop_devices(image(home, ECHO)):
                assert time.monotonic() < deadline, f"a loop device outlived the uninstall: {holders(home.path)}"
                time.sleep(0.05)
        finally:
            neighbour.stop()
    assert host.get(f"/plugins/{HOG}/").status_code == 404

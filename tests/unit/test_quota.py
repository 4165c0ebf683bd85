"""Disk quota, the parts that run no process: the manifest fields, what counts as full, how it is shown,
and that a host which cannot mount refuses (strict) or warns (weak) before touching anything."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from host import loopfs, quota
from host.errors import QuotaError, QuotaUnavailable
from host.layout import Layout
from host.risk import assess, grants
from host.settings import HostSettings
from manifests import ManifestValidationError, parse_manifest

MiB = 1024 * 1024
MINIMAL = {"name": "hog", "version": "1.0.0", "entrypoint": "app:app"}


def resources(**res: int) -> dict[str, object]:
    return {**MINIMAL, "permissions": {"resources": res}}


def test_every_plugin_gets_a_quota_by_default() -> None:
    res = parse_manifest(MINIMAL).permissions.resources
    assert (res.disk_mb, res.files) == (512, 20000)
    assert quota.Quota.of(res) == quota.Quota(512 * MiB, 20000)


@pytest.mark.parametrize("field, value", [("disk_mb", 8), ("disk_mb", 2 * 1048576), ("files", 10), ("files", -1)])
def test_quota_out_of_range_is_refused(field: str, value: int) -> None:
    with pytest.raises(ManifestValidationError, match=field):
        parse_manifest(resources(**{field: value}))


def test_host_check_shows_the_quota_and_its_layer() -> None:
    (disk,) = [g for g in grants(parse_manifest(resources(disk_mb=16, files=500))) if g.permission == "disk"]
    assert disk.value.startswith("16 MiB, 500 files")
    assert "ext4 image" in disk.enforced_by and "ENOSPC" in disk.enforced_by
    assert "large resource allowance" in " ".join(assess(parse_manifest(resources(disk_mb=65536))).reasons)


@pytest.mark.parametrize("used, files, full", [
    (0, 11, False),
    (15 * MiB, 11, False),  # 1 MiB left of 16
    (16 * MiB - 300 * 1024, 11, True),  # less than 1 MiB left: the next write of a megabyte fails
    (MiB, 496, True),  # out of inodes, with space to spare
    (MiB, 492, True),  # fewer than 1 % of its files left
    (MiB, 491, False),
])
def test_full_means_out_of_space_or_out_of_files(used: int, files: int, full: bool) -> None:
    use = quota.Usage(used, 16 * MiB, files, 496)
    assert use.full is full
    assert quota.usage_cell(use).startswith("FULL ") is full


def test_full_is_said_once_and_so_is_room_again() -> None:
    alarm = quota.FullAlarm()
    roomy, full = quota.Usage(0, 16 * MiB, 11, 496), quota.Usage(16 * MiB, 16 * MiB, 11, 496)
    assert alarm.update(roomy) is None
    said = alarm.update(full)
    assert said is not None and "full" in said and "ENOSPC" in said
    assert alarm.update(full) is None
    assert alarm.update(roomy) == "data dir has room again"
    assert alarm.update(None) is None  # no image (stopped host): nothing to say


def test_list_shows_no_quota_as_a_dash() -> None:
    assert quota.usage_cell(None) == "-"
    assert quota.usage_cell(quota.Usage(3 * MiB, 16 * MiB, 20, 496)) == "3.0/16.0M 20/496 files"


def test_a_non_root_host_runs_without_the_layer(tmp_path: Path) -> None:
    settings = HostSettings(home=tmp_path)
    assert quota.ensure_mounted(settings, "hog", quota.Quota(16 * MiB, 500), uid=None) is None
    assert not Layout(tmp_path).disk_image("hog").exists()


def test_strict_host_without_tools_refuses_in_one_line(tmp_path: Path) -> None:
    Layout(tmp_path).ensure()
    settings = HostSettings(home=tmp_path, disk_tools_path=str(tmp_path / "nowhere"), sandbox="strict")
    with pytest.raises(QuotaUnavailable) as caught:
        quota.ensure_mounted(settings, "hog", quota.Quota(16 * MiB, 500), uid=700001)
    reason = quota.refusal(caught.value)
    assert reason.startswith("disk layer unavailable: ") and "\n" not in reason
    assert "HOST_SANDBOX=weak" in reason
    assert caught.value.plugin == "hog"
    assert not Layout(tmp_path).disk_image("hog").exists()


def test_weak_host_without_tools_runs_without_a_quota_and_says_so(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    Layout(tmp_path).ensure()
    settings = HostSettings(home=tmp_path, disk_tools_path=str(tmp_path / "nowhere"), sandbox="weak")
    with caplog.at_level(logging.WARNING, logger="host.quota"):
        assert quota.ensure_mounted(settings, "hog", quota.Quota(16 * MiB, 500), uid=700001) is None
    assert "hog: running WITHOUT a disk quota (HOST_SANDBOX=weak)" in caplog.text


def test_quota_errors_carry_the_plugin() -> None:
    err = QuotaError("hog", "mounting its image: boom")
    assert str(err) == "hog: disk quota: mounting its image: boom"
    assert quota.refusal(err) == "disk quota: mounting its image: boom"


def test_mountinfo_escapes_are_read_back() -> None:
    assert loopfs.unescape(r"/tmp/a\040b\011c") == "/tmp/a b\tc"


def _superblock(path: Path, blocks: int, log_block: int, incompat: int = 0, hi: int = 0) -> Path:
    sb = bytearray(1024)
    struct.pack_into("<I", sb, 0x4, blocks)
    struct.pack_into("<I", sb, 0x18, log_block)
    struct.pack_into("<H", sb, 0x38, 0xEF53)
    struct.pack_into("<I", sb, 0x60, incompat)
    struct.pack_into("<I", sb, 0x150, hi)
    path.write_bytes(bytes(1024) + bytes(sb))
    return path


def test_filesystem_size_comes_from_the_superblock(tmp_path: Path) -> None:
    assert loopfs.fs_bytes("hog", _superblock(tmp_path / "a.img", 16384, 0)) == 16 * MiB  # 1 KiB blocks
    assert loopfs.fs_bytes("hog", _superblock(tmp_path / "b.img", 131072, 2)) == 512 * MiB  # 4 KiB blocks
    big = _superblock(tmp_path / "c.img", 0, 2, incompat=0x80, hi=1)  # 64bit: 2^32 blocks of 4 KiB
    assert loopfs.fs_bytes("hog", big) == (1 << 32) * 4096
    (tmp_path / "d.img").write_bytes(bytes(4096))
    with pytest.raises(QuotaError, match="no ext4 filesystem"):
        loopfs.fs_bytes("hog", tmp_path / "d.img")


def test_a_plugin_without_its_image_counts_as_a_weak_sandbox() -> None:
    runner = {"backend": "bwrap", "level": "full", "missing": []}
    assert quota.with_disk_layer(runner, False) == {"backend": "bwrap", "level": "weak", "missing": ["disk"]}
    assert quota.with_disk_layer(runner, True) == runner
    assert quota.with_disk_layer(runner, None) == runner  # not known (not spawned here)
    assert quota.with_disk_layer(None, False) is None

"""host.archive: every hostile archive is refused with one line naming the member, and leaves nothing behind."""

from __future__ import annotations

import fcntl
import os
import re
import stat
import tarfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from host import archive, archive_formats, rootfs
from host.archive import Limits, extract, extract_counted
from host.errors import ArchiveError, UsageError
from host.layout import Layout
from tests.unit.archives import MiB, make_tar, make_zip, tgz_bomb, tinfo, zip_bomb

MANIFEST = b'name = "demo"\nversion = "1.0"\nentrypoint = "app:app"\n'


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "scratch" / "unpacked"


@pytest.fixture(autouse=True)
def _scratch_parent(tmp_path: Path) -> None:
    (tmp_path / "scratch").mkdir()


def refused(archive_path: Path, dest: Path, limits: Limits = archive.LIMITS) -> str:
    """The one-line refusal; and nothing of the extraction is left."""
    with pytest.raises(ArchiveError) as info:
        extract(archive_path, dest, limits)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Bytes actually written to disk by the extraction, per write."""
    log: list[int] = []
    real = archive_formats._write_all

    def counting(fd: int, data: bytes) -> None:
        log.append(len(data))
        real(fd, data)

    monkeypatch.setattr(archive_formats, "_write_all", counting)
    yield log


def decompressed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    log: list[int] = []
    real: Callable[..., bytes] = archive_formats._Capped.read

    def counting(self: archive_formats._Capped, n: int = -1) -> bytes:
        data = real(self, n)
        log.append(len(data))
        return data

    monkeypatch.setattr(archive_formats._Capped, "read", counting)
    return log


# ----------------------------------------------------------------------------------------------- good input


def test_single_top_level_directory_is_the_bundle_root(tmp_path: Path, dest: Path) -> None:
    tgz = make_tar(tmp_path / "p.tgz", [(tinfo("plugin", tarfile.DIRTYPE, 0o755), None),
                                        (tinfo("plugin/plugin.toml"), MANIFEST),
                                        (tinfo("plugin/bin/run.sh", mode=0o755), b"#!/bin/sh\n")])
    done = extract_counted(tgz, dest)
    assert done.root == dest / "plugin"
    assert (done.files, done.bytes) == (2, len(MANIFEST) + 10)
    assert (dest / "plugin" / "plugin.toml").read_bytes() == MANIFEST
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "plugin/bin/run.sh").stat().st_mode) == 0o755


def test_files_at_the_archive_root_make_it_the_bundle_root(tmp_path: Path, dest: Path) -> None:
    z = make_zip(tmp_path / "p.zip", [("plugin.toml", MANIFEST, 0), ("static/a.css", b"a{}", 0),
                                      ("__MACOSX/._plugin.toml", b"junk", 0)])
    assert extract(z, dest) == dest
    assert sorted(p.name for p in dest.iterdir()) == ["plugin.toml", "static"]


def test_dot_slash_names_as_tar_dash_c_dot_writes_them(tmp_path: Path, dest: Path) -> None:
    tgz = make_tar(tmp_path / "p.tgz", [(tinfo(".", tarfile.DIRTYPE, 0o755), None),
                                        (tinfo("./plugin.toml"), MANIFEST)])
    assert extract(tgz, dest) == dest
    assert (dest / "plugin.toml").read_bytes() == MANIFEST


def test_format_is_judged_by_content_not_name(tmp_path: Path, dest: Path) -> None:
    tgz = make_tar(tmp_path / "really-a-tgz.zip", [(tinfo("plugin/plugin.toml"), MANIFEST)])
    plain = make_tar(tmp_path / "plain.tar", [(tinfo("plugin/plugin.toml"), MANIFEST)], gz=False)
    assert archive.kind(tgz) == "tar.gz"
    assert archive.kind(plain) == "tar"
    assert extract(tgz, dest) == dest / "plugin"
    rootfs.remove_tree(dest)
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"#!/bin/sh\nrm -rf /\n")
    assert archive.kind(fake) is None
    assert refused(fake, dest) == ("fake.zip: not a .zip, .tar.gz/.tgz or .tar archive (judged by its content, "
                                   "not its name)")


def test_setuid_setgid_sticky_and_world_write_bits_are_stripped(tmp_path: Path, dest: Path) -> None:
    tgz = make_tar(tmp_path / "p.tgz", [(tinfo("p/suid", mode=0o4755), b"x"), (tinfo("p/sgid", mode=0o2777), b"x"),
                                        (tinfo("p/plain", mode=0o666), b"x")])
    extract(tgz, dest)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (dest / "p").iterdir()}
    assert modes == {"suid": 0o755, "sgid": 0o755, "plain": 0o644}
    z = make_zip(tmp_path / "p.zip", [("suid", b"x", stat.S_IFREG | 0o6755)])
    extract(z, tmp_path / "scratch" / "z")
    assert stat.S_IMODE((tmp_path / "scratch" / "z" / "suid").stat().st_mode) == 0o755


# ------------------------------------------------------------------------------------------------ zip-slip


@pytest.mark.parametrize(("name", "reason"), [
    ("../evil.py", "'..' in its path (it would land outside the plugin)"),
    ("plugin/../../evil.py", "'..' in its path (it would land outside the plugin)"),
    ("/tmp/evil.py", "an absolute path"),
    ("C:/evil.py", "a drive letter (a Windows absolute path)"),
    ("..\\evil.py", "a backslash in its name (a Windows path, or an escape attempt)"),
    ("plugin/\x1b[2Jx.py", "a control character in its name"),
])
@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_cant_escape_the_scratch_dir(tmp_path: Path, dest: Path, name: str, reason: str, fmt: str) -> None:
    if fmt == "zip":
        bad = make_zip(tmp_path / "bad.zip", [("plugin/plugin.toml", MANIFEST, 0), (name, b"pwned", 0)])
    else:
        bad = make_tar(tmp_path / "bad.tgz", [(tinfo("plugin/plugin.toml"), MANIFEST), (tinfo(name), b"pwned")])
    shown = name.replace("\x1b", "?")
    assert refused(bad, dest) == f"{bad.name}: {shown}: {reason}"
    assert not (tmp_path / "evil.py").exists() and not Path("/tmp/evil.py").exists()


# ------------------------------------------------------------------------------------------- member types


def test_cant_plant_a_symlink_to_etc_shadow(tmp_path: Path, dest: Path) -> None:
    tgz = make_tar(tmp_path / "evil.tgz", [(tinfo("plugin/plugin.toml"), MANIFEST),
                                           (tinfo("plugin/data", tarfile.SYMTYPE, linkname="/etc/shadow"), None)])
    assert refused(tgz, dest) == ("evil.tgz: plugin/data: a symbolic link (to /etc/shadow); archives may hold "
                                  "only regular files and directories")
    z = make_zip(tmp_path / "evil.zip", [("plugin/data", b"/etc/shadow", stat.S_IFLNK | 0o777)])
    assert refused(z, dest) == ("evil.zip: plugin/data: a symbolic link; archives may hold only regular files "
                                "and directories")


def test_cant_plant_a_symlink_then_write_through_it(tmp_path: Path, dest: Path) -> None:
    tgz = make_tar(tmp_path / "evil.tgz", [(tinfo("plugin/etc", tarfile.SYMTYPE, linkname="/etc"), None),
                                           (tinfo("plugin/etc/cron.d/x"), b"* * * * * root sh\n")])
    assert "plugin/etc: a symbolic link (to /etc)" in refused(tgz, dest)


def test_cant_hard_link(tmp_path: Path, dest: Path) -> None:
    tgz = make_tar(tmp_path / "evil.tgz", [(tinfo("plugin/shadow", tarfile.LNKTYPE, linkname="/etc/shadow"), None)])
    assert refused(tgz, dest) == ("evil.tgz: plugin/shadow: a hard link (to /etc/shadow); archives may hold only "
                                  "regular files and directories")


@pytest.mark.parametrize(("type_", "what"), [(tarfile.CHRTYPE, "a character device"),
                                             (tarfile.BLKTYPE, "a block device"), (tarfile.FIFOTYPE, "a FIFO")])
def test_cant_create_devices_or_fifos(tmp_path: Path, dest: Path, type_: bytes, what: str) -> None:
    tgz = make_tar(tmp_path / "evil.tgz", [(tinfo("plugin/dev", type_), None)])
    assert refused(tgz, dest) == f"evil.tgz: plugin/dev: {what}; archives may hold only regular files and directories"


def test_cant_create_a_socket_from_a_zip(tmp_path: Path, dest: Path) -> None:
    z = make_zip(tmp_path / "evil.zip", [("plugin/sock", b"", stat.S_IFSOCK | 0o777)])
    assert refused(z, dest) == ("evil.zip: plugin/sock: a socket; archives may hold only regular files and "
                                "directories")


def test_encrypted_zip_member_is_refused(tmp_path: Path, dest: Path) -> None:
    z = make_zip(tmp_path / "enc.zip", [("plugin.toml", MANIFEST, 0)])
    raw = bytearray(z.read_bytes())
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set bit 0 (encrypted) in both headers
        at = raw.find(sig)
        raw[at + flag_at] |= 1
    z.write_bytes(bytes(raw))
    assert refused(z, dest) == "enc.zip: plugin.toml: encrypted"


# ---------------------------------------------------------------------------------------- names and counts


def test_duplicate_members_are_refused(tmp_path: Path, dest: Path) -> None:
    tgz = make_tar(tmp_path / "dup.tgz", [(tinfo("p/app.py"), b"good"), (tinfo("p/app.py"), b"evil")])
    assert refused(tgz, dest) == "dup.tgz: p/app.py: a duplicate member (p/app.py is already a file in the archive)"
    clash = make_tar(tmp_path / "clash.tgz", [(tinfo("p/a"), b"file"), (tinfo("p/a/b"), b"under a file")])
    assert refused(clash, dest) == "clash.tgz: p/a/b: its parent p/a is a file in the archive"
    with pytest.warns(UserWarning, match="Duplicate name"):
        z = make_zip(tmp_path / "dup.zip", [("app.py", b"good", 0), ("app.py", b"evil", 0)])
    assert refused(z, dest) == "dup.zip: app.py: a duplicate member (app.py is already a file in the archive)"


def test_too_many_members(tmp_path: Path, dest: Path) -> None:
    members = [(tinfo(f"p/f{i}"), b"x") for i in range(6)]
    assert refused(make_tar(tmp_path / "many.tgz", members), dest, Limits(max_members=5)) == \
        "many.tgz: p/f5: more than 5 members"
    z = make_zip(tmp_path / "many.zip", [(f"f{i}", b"x", 0) for i in range(6)])
    assert refused(z, dest, Limits(max_members=5)) == "many.zip: 6 members, more than 5"


def test_zip_central_directory_too_large_for_its_members_is_refused_before_it_is_read(
        tmp_path: Path, dest: Path) -> None:
    z = make_zip(tmp_path / "cd.zip", [(f"{'d' * 200}/{'e' * 200}/{'f' * 200}/{i}", b"", 0) for i in range(10)])
    assert "a central directory of" in refused(z, dest, Limits(max_members=10))


def test_path_depth_and_length(tmp_path: Path, dest: Path) -> None:
    deep = "/".join(["d"] * 40) + "/f"
    assert refused(make_tar(tmp_path / "deep.tgz", [(tinfo(deep), b"x")]), dest).endswith(
        ": deeper than 32 directories")
    assert refused(make_tar(tmp_path / "long.tgz", [(tinfo("p/" + "n" * 300), b"x")]), dest).endswith(
        ": a path component longer than 255 bytes")
    long_path = "/".join(["n" * 200] * 6)
    assert refused(make_tar(tmp_path / "lp.tgz", [(tinfo(long_path), b"x")]), dest).endswith(
        ": a name longer than 1024 bytes")


def test_damaged_archives_are_refused_not_crashed_on(tmp_path: Path, dest: Path) -> None:
    tgz = make_tar(tmp_path / "cut.tgz", [(tinfo("p/plugin.toml"), MANIFEST * 100)])
    tgz.write_bytes(tgz.read_bytes()[:60])
    assert refused(tgz, dest).startswith("cut.tgz: not a readable tar.gz archive: ")
    z = make_zip(tmp_path / "cut.zip", [("plugin.toml", MANIFEST, 0)])
    z.write_bytes(z.read_bytes()[:-30])
    assert refused(z, dest).startswith("cut.zip: not a readable zip archive: ")
    empty = make_tar(tmp_path / "empty.tgz", [(tinfo("p", tarfile.DIRTYPE), None)])
    assert refused(empty, dest) == "empty.tgz: no files in it"


# --------------------------------------------------------------------------------------------------- bombs


def test_cant_zip_bomb_1_gib_refused_from_its_headers_before_a_byte_is_written(
        tmp_path: Path, dest: Path, written: list[int]) -> None:
    bomb = zip_bomb(tmp_path / "bomb.zip")
    assert bomb.stat().st_size < 2 * MiB  # a real bomb: 1 GiB of content, ~1 MiB on disk
    t0 = time.monotonic()
    assert refused(bomb, dest) == ("bomb.zip: plugin/bomb.bin: 1073741824 bytes, over the 100 MiB limit for "
                                   "one file")
    assert written == [] and time.monotonic() - t0 < 2


def test_cant_zip_bomb_behind_an_understated_header(tmp_path: Path, dest: Path, written: list[int]) -> None:
    """The header says 1 KiB, the data inflates to 1 GiB: exactly the declared KiB is written, no more."""
    bomb = zip_bomb(tmp_path / "liar.zip", declared=1024, name="bomb.bin")
    tracemalloc.start()
    try:
        extract(bomb, dest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (dest / "bomb.bin").stat().st_size == 1024 and sum(written) == 1024
    assert peak < 8 * MiB


def test_cant_gzip_bomb_1_gib_in_one_member(tmp_path: Path, dest: Path, written: list[int],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = tgz_bomb(tmp_path / "bomb.tgz")
    assert bomb.stat().st_size < 2 * MiB
    inflated = decompressed(monkeypatch)
    assert refused(bomb, dest) == ("bomb.tgz: plugin/bomb0.bin: 1073741824 bytes, over the 100 MiB limit for "
                                   "one file")
    assert written == [] and sum(inflated) < MiB  # only its first header was inflated


def test_cant_gzip_bomb_spread_over_members_each_under_the_limit(
        tmp_path: Path, dest: Path, written: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """1 GiB in 128 files of 8 MiB, each allowed alone: stopped by the total, in real bytes, disk and memory
    bounded by the limits (not the 1 GiB), with the rest of the archive never inflated."""
    bomb = tgz_bomb(tmp_path / "spread.tgz", members=128, size=8 * MiB)
    assert bomb.stat().st_size < 2 * MiB
    inflated = decompressed(monkeypatch)
    limits = Limits(max_member_bytes=8 * MiB, max_total_bytes=20 * MiB)
    tracemalloc.start()
    try:
        assert refused(bomb, dest, limits) == "spread.tgz: plugin/bomb2.bin: the files add up to more than 20 MiB"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(written) == 16 * MiB  # two whole files, then the third is refused before it is written
    assert sum(inflated) < 17 * MiB
    assert peak < 8 * MiB


def test_cant_bomb_through_extended_headers(tmp_path: Path, dest: Path) -> None:
    """tarfile reads a pax header whole into memory: one over 1 MiB is refused unread, and many just under it
    stop at the cap on the decompressed stream."""
    big = tinfo("p/f", pax={"comment": "x" * (2 * MiB)})
    assert re.fullmatch(r"pax.tgz: ././@PaxHeader: an extended header of 20971\d\d bytes \(over 1 MiB\)",
                        refused(make_tar(tmp_path / "pax.tgz", [(big, b"x")]), dest))
    many = [(tinfo(f"p/f{i}", pax={"comment": "x" * (MiB - 100)}), b"x") for i in range(19)]
    limits = Limits(max_members=100, max_total_bytes=MiB)
    assert refused(make_tar(tmp_path / "paxes.tgz", many), dest, limits).endswith(": expands to more than 17.0977 MiB")


def test_archive_file_itself_over_the_limit(tmp_path: Path, dest: Path) -> None:
    z = make_zip(tmp_path / "big.zip", [("plugin.toml", os.urandom(4096), 0)])
    assert refused(z, dest, Limits(max_archive_bytes=1024)).startswith("big.zip: ")


# ------------------------------------------------------------------------------------------ scratch, sweep


def test_scratch_is_removed_after_use_and_after_a_failure(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    tgz = make_tar(tmp_path / "p.tgz", [(tinfo("plugin/plugin.toml"), MANIFEST)])
    with archive.unpacked(tgz, layout) as root:
        assert (root / "plugin.toml").read_bytes() == MANIFEST
        assert root.is_relative_to(layout.cache)
    bad = make_tar(tmp_path / "bad.tgz", [(tinfo("../x"), b"x")])
    with pytest.raises(ArchiveError), archive.unpacked(bad, layout):
        pass
    with pytest.raises(RuntimeError), archive.unpacked(tgz, layout):
        raise RuntimeError("the install failed")
    assert list(archive.scratch_root(layout).iterdir()) == []


def test_an_archive_without_a_manifest_is_refused_naming_the_archive(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    two = make_tar(tmp_path / "two.tgz", [(tinfo("a/plugin.toml"), MANIFEST), (tinfo("b/x"), b"x")])
    with pytest.raises(ArchiveError) as info, archive.unpacked(two, layout):
        pass
    assert str(info.value) == "two.tgz: no plugin.toml at its root or in its single top-level directory"
    assert list(archive.scratch_root(layout).iterdir()) == []


def test_a_directory_is_used_as_it_is_and_other_files_are_refused(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    with archive.unpacked(tmp_path, layout) as root:
        assert root == tmp_path
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UsageError, match=r"notes.txt: not a plugin directory or a .zip, .tar.gz/.tgz or .tar"), \
            archive.unpacked(text, layout):
        pass


def test_sweep_removes_what_a_killed_unpacker_left_and_nothing_in_use(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    layout.ensure()
    top = archive.scratch_root(layout)
    top.mkdir()
    (top / "dead" / "unpacked" / "plugin").mkdir(parents=True)  # its owner was killed: nobody holds its lock
    (top / ".claiming").mkdir()  # being claimed right now (fresh dot name)
    stale = top / ".stale"
    stale.mkdir()
    os.utime(stale, (time.time() - 600, time.time() - 600))
    (top / "live").mkdir()
    fd = os.open(top / "live", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert sorted(archive.sweep(layout)) == [str(top / ".stale"), str(top / "dead")]
        assert sorted(p.name for p in top.iterdir()) == [".claiming", "live"]
    finally:
        os.close(fd)


def test_cant_unpack_a_sparse_file(tmp_path: Path, dest: Path) -> None:
    """A sparse member could claim a huge file from a few bytes of data; none belongs in a plugin."""
    tgz = make_tar(tmp_path / "sparse.tgz", [(tinfo("p/holes", tarfile.GNUTYPE_SPARSE), b"x" * 10)])
    assert refused(tgz, dest) == ("sparse.tgz: p/holes: a sparse file; archives may hold only regular files and "
                                  "directories")


def test_the_default_limits_are_the_documented_ones() -> None:
    """README and CHANGELOG quote them: 20000 members, 100 MiB a file, 200 MiB in all, depth 32, 1024 bytes."""
    assert Limits(max_members=20000, max_member_bytes=100 * MiB, max_total_bytes=200 * MiB,
                                    max_archive_bytes=200 * MiB, max_depth=32, max_path_bytes=1024,
                                    max_name_bytes=255) == archive.LIMITS

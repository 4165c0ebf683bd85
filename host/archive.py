"""Unpack a plugin archive (.zip, .tar.gz/.tgz, .tar) into a fresh private directory, refusing anything unsafe.

Root unpacks what a stranger uploaded, so nothing in the archive is trusted: not a name (zip-slip: ``..``, absolute
paths, drive letters, backslashes), not a member type (symlinks, hard links, devices, FIFOs, sockets and sparse
files are refused, never created), not a mode (only the executable bit is kept: set-id, sticky and group/other
write bits are stripped, because every file is created 0644/0755 by us), not a size. Sizes are checked against
the headers before a member is written AND counted in real bytes while it is written (a header can lie), and the
decompressed stream as a whole is capped, so a bomb costs at most the limits in disk and about one chunk of memory.

Every file is created with ``O_EXCL | O_NOFOLLOW`` relative to its parent's descriptor, so nothing is written
through a link. Scratch directories live under ``<home>/cache/unpack`` (same filesystem as the home, root-only)
and are flock'ed while in use; :func:`sweep` removes the ones whose owner died (a kill -9 mid-extraction), and the
supervisor runs it at start (host.supervisor.leftovers). A failure removes the whole scratch directory at once.
The readers themselves are in host.archive_formats. Imports nothing from the host but its layout, errors,
rootfs and archive_formats.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from host import rootfs
from host.archive_limits import LIMITS, Limits, mib
from host.errors import ArchiveError, UsageError
from host.layout import Layout

__all__ = ["LIMITS", "Limits", "Unpacked", "extract", "extract_counted", "kind", "scratch", "scratch_root", "sweep",
           "unpacked"]

STALE_SCRATCH = 60.0  # seconds after which an unlocked, never-claimed scratch dir is a leftover
FORMATS = "a .zip, .tar.gz/.tgz or .tar archive"


@dataclass(frozen=True)
class Unpacked:
    """What :func:`extract` wrote."""

    root: Path  # the bundle root: the archive's single top-level directory, else the scratch dir itself
    files: int
    bytes: int


def kind(path: Path) -> str | None:
    """``"zip"``, ``"tar.gz"`` or ``"tar"`` by the file's content (its magic bytes), None when it is none of
    them (or not a regular file). The name's extension is not trusted either way."""
    try:
        with open(path, "rb", opener=_no_follow) as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            head = fh.read(512)
    except OSError:
        return None
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # a local header, or the end record of an empty zip
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if head[257:262] == b"ustar":
        return "tar"
    return None


def extract(archive_path: Path, dest: Path, limits: Limits = LIMITS) -> Path:
    """Unpack ``archive_path`` into the new directory ``dest`` (created 0700; it must not exist, and its
    parent must be root's) and return the bundle root: the archive's single top-level directory when it has
    exactly one, else ``dest``. Raises :class:`ArchiveError` (one line naming the archive, the member and the
    reason) and then ``dest`` is gone. See :func:`extract_counted` for the file count and size."""
    return extract_counted(archive_path, dest, limits).root


def extract_counted(archive_path: Path, dest: Path, limits: Limits = LIMITS) -> Unpacked:
    """:func:`extract`, also returning how many files and bytes it wrote."""
    fmt = kind(archive_path)
    if fmt is None:
        raise ArchiveError(archive_path.name, None, f"not {FORMATS} (judged by its content, not its name)")
    os.mkdir(dest, 0o700)
    try:
        out = rootfs.open_dir(dest)
        try:
            os.fchmod(out, 0o700)  # whatever the umask
            with open(archive_path, "rb", opener=_no_follow) as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise ArchiveError(archive_path.name, None, "not a regular file")
                size = st.st_size
                if size > limits.max_archive_bytes:
                    raise ArchiveError(archive_path.name, None, f"{size} bytes, over the "
                                       f"{mib(limits.max_archive_bytes)} limit for an archive")
                from host.archive_formats import Writer, untar, unzip  # tarfile, zipfile: installs only

                writer = Writer(archive_path.name, out, limits)
                if fmt == "zip":
                    unzip(fh, writer)
                else:
                    untar(fh, fmt, writer)
            if writer.files == 0:
                raise ArchiveError(archive_path.name, None, "no files in it")
            root = _bundle_root(dest, out)
        finally:
            os.close(out)
    except BaseException:
        rootfs.remove_tree(dest)
        raise
    return Unpacked(root, writer.files, writer.total)


# ---------------------------------------------------------------------------------------------------- scratch


def scratch_root(layout: Layout) -> Path:
    return layout.cache / "unpack"


@contextlib.contextmanager
def scratch(layout: Layout) -> Iterator[Path]:
    """A fresh path (not yet existing) for :func:`extract`'s ``dest``, on the home's filesystem; removed with
    everything under it on exit. It is flock'ed while in use so :func:`sweep` (of this or any process) leaves
    it alone, and removes it if this process dies before it could."""
    layout.ensure()
    rootfs.ensure_dir(scratch_root(layout), None, 0o700)
    parent = rootfs.open_dir(scratch_root(layout))
    try:
        sweep(layout)
        name = secrets.token_hex(8)
        # claimed under a dot name, flock'ed, then renamed: sweep never takes a live directory between its
        # mkdir and its lock (an unlocked dot name is a leftover only once it is STALE_SCRATCH old)
        os.mkdir(f".{name}", 0o700, dir_fd=parent)
        fd = os.open(f".{name}", rootfs.DIR_FLAGS, dir_fd=parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(f".{name}", name, src_dir_fd=parent, dst_dir_fd=parent)
            try:
                yield scratch_root(layout) / name / "unpacked"
            finally:
                rootfs.remove_at(parent, name)
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def sweep(layout: Layout) -> list[str]:
    """Remove the scratch directories of unpackers that died (nobody holds their lock); returns their paths."""
    top = scratch_root(layout)
    try:
        parent = rootfs.open_dir(top)
    except OSError:
        return []
    removed: list[str] = []
    try:
        for entry in os.listdir(parent):
            try:
                fd = os.open(entry, rootfs.DIR_FLAGS, dir_fd=parent)
            except OSError:  # not a directory (nothing of ours): remove it
                if rootfs.remove_at(parent, entry):
                    removed.append(str(top / entry))
                continue
            try:
                if entry.startswith(".") and time.time() - os.fstat(fd).st_mtime < STALE_SCRATCH:
                    continue  # perhaps being claimed right now
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # in use
                if rootfs.remove_at(parent, entry):
                    removed.append(str(top / entry))
            finally:
                os.close(fd)
    finally:
        os.close(parent)
    return removed


@contextlib.contextmanager
def unpacked(source: Path, layout: Layout, limits: Limits = LIMITS,
             progress: Callable[[str], None] | None = None) -> Iterator[Path]:
    """The plugin directory ``source`` as it is, or the archive ``source`` unpacked into a scratch directory
    that is removed on exit (whatever happens). For `host install` and every other install path."""
    if source.is_dir() or not source.exists():
        yield source  # the installer says what is wrong with a missing path
        return
    if kind(source) is None:
        raise UsageError(f"{source}: not a plugin directory or {FORMATS}")
    with scratch(layout) as dest:
        done = extract_counted(source, dest, limits)
        if not (done.root / "plugin.toml").is_file():  # said here, not later about a scratch path
            raise ArchiveError(source.name, None, "no plugin.toml at its root or in its single top-level directory")
        if progress is not None:
            progress(f"unpacking {done.files} files ({done.bytes // 1024} KiB)")
        yield done.root


def _bundle_root(dest: Path, fd: int) -> Path:
    entries = os.listdir(fd)
    if len(entries) == 1 and stat.S_ISDIR(os.stat(entries[0], dir_fd=fd, follow_symlinks=False).st_mode):
        return dest / entries[0]
    return dest


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)

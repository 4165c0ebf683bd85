"""Copy a plugin directory into the host: regular files and directories only, by descriptor, without build debris.

Root copies what a plugin's author shipped, so every entry is opened from its parent's descriptor with
O_NOFOLLOW (host.rootfs) and judged by fstat of what was opened; the copy is created with O_EXCL and fchmodded,
never chmodded by path. A symlink is copied as its target only when it resolves to a regular file inside the
directory; otherwise it is skipped and reported. Hard links, FIFOs, sockets and device files are refused with the
file's name. A hard link is refused, not skipped: its other name can be any file on the same filesystem (a
root-only one keeps its owner and mode, and the copy would be world-readable), a link has no "inside" to check,
and leaving a file out silently would break the plugin far from the cause.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from host import rootfs

# Never part of a bundle: VCS metadata, caches, virtualenvs and build output.
SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", "__pycache__", ".venv", "venv", "env", ".tox", ".nox", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", "node_modules", "build", "dist", ".eggs",
})
SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")
MAX_BUNDLE_BYTES = 200 * 1024 * 1024
MAX_BUNDLE_FILES = 20000
ONLY = "a bundle holds only regular files and directories"
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device"}


class BundleError(Exception):
    pass


@dataclass
class CopyReport:
    files: int = 0
    bytes: int = 0
    skipped_symlinks: list[str] = field(default_factory=list)


def copy_bundle(src: Path, dst: Path) -> CopyReport:
    """Copy ``src`` to ``dst`` (which must not exist); raises BundleError naming the offending file."""
    root = src.resolve()
    dst.mkdir(parents=True)
    root_fd = rootfs.open_dir(root)
    try:
        out = rootfs.open_dir(dst)
        try:
            copier = _Copier(root, root_fd)
            copier.directory(root_fd, out, PurePosixPath())
        finally:
            os.close(out)
    finally:
        os.close(root_fd)
    return copier.report


@dataclass
class _Copier:
    root: Path
    root_fd: int
    report: CopyReport = field(default_factory=CopyReport)

    def directory(self, src: int, dst: int, rel: PurePosixPath) -> None:
        if len(rel.parts) >= rootfs.MAX_DEPTH:
            raise BundleError(f"{rel}: deeper than {rootfs.MAX_DEPTH} levels")
        for name in sorted(os.listdir(src)):
            where = rel / name
            mode = os.stat(name, dir_fd=src, follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                if name not in SKIP_DIRS and not name.endswith(SKIP_SUFFIXES):
                    self._subdirectory(src, dst, name, where)
            elif name.endswith(SKIP_SUFFIXES):
                continue
            elif stat.S_ISLNK(mode):
                self._symlink(src, dst, name, where)
            elif stat.S_ISREG(mode):
                fd = _open(src, name, where, rootfs.FILE_FLAGS)
                try:
                    self._file(fd, dst, name, where)
                finally:
                    os.close(fd)
            else:
                raise BundleError(f"{where}: {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}; {ONLY} "
                                  "(remove it and install again)")

    def _subdirectory(self, src: int, dst: int, name: str, where: PurePosixPath) -> None:
        fd = _open(src, name, where, rootfs.DIR_FLAGS)
        try:
            os.mkdir(name, 0o755, dir_fd=dst)
            out = os.open(name, rootfs.DIR_FLAGS, dir_fd=dst)
            try:
                self.directory(fd, out, where)
            finally:
                os.close(out)
        finally:
            os.close(fd)

    def _symlink(self, src: int, dst: int, name: str, where: PurePosixPath) -> None:
        """Copied as its target when that is a regular file inside the bundle; else skipped and reported."""
        shown = f"{where} -> {os.readlink(name, dir_fd=src)}"
        target = Path(os.path.realpath(self.root / where))  # lstat and readlink only: nothing is opened
        if not target.is_relative_to(self.root) or target == self.root:
            self.report.skipped_symlinks.append(shown)
            return
        rel = str(target.relative_to(self.root))
        try:
            # Every component of the resolved path is a real directory: check the type before opening (a
            # device is never opened), then open with no link allowed on the way and check again.
            if not stat.S_ISREG(os.stat(rel, dir_fd=self.root_fd, follow_symlinks=False).st_mode):
                raise FileNotFoundError(rel)
            fd = rootfs.open_beneath(self.root_fd, rel)
        except OSError:
            self.report.skipped_symlinks.append(shown)
            return
        try:
            self._file(fd, dst, name, where)
        finally:
            os.close(fd)

    def _file(self, fd: int, dst: int, name: str, where: PurePosixPath) -> None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{where}: changed while it was being copied; install again")
        if st.st_nlink > 1:
            raise BundleError(f"{where}: a hard link (one file with {st.st_nlink} names, the others possibly "
                              f"outside the plugin); {ONLY}: replace it with a copy and install again")
        self.report.files += 1
        if self.report.files > MAX_BUNDLE_FILES:
            raise BundleError(f"bundle has more than {MAX_BUNDLE_FILES} files")
        try:
            self.report.bytes += rootfs.copy_into(fd, dst, name, 0o644, MAX_BUNDLE_BYTES - self.report.bytes)
        except OSError as exc:
            if exc.errno == errno.EFBIG:
                raise BundleError(f"bundle is larger than {MAX_BUNDLE_BYTES // (1024 * 1024)} MiB") from exc
            raise


def _open(parent: int, name: str, where: PurePosixPath, flags: int) -> int:
    try:
        return os.open(name, flags, dir_fd=parent)
    except OSError as exc:  # ELOOP: it became a symlink since it was listed
        raise BundleError(f"{where}: changed while it was being copied ({exc.strerror}); install again") from exc

"""Data snapshots for rollback: before an upgrade the plugin's data dir is copied (when it is small enough) to
``<home>/snapshots/<name>/<install_id>``, the install it belonged to; `host rollback` to that install puts it back.

The data dir is the plugin's: any entry may be a symlink, a FIFO or a device node planted to make root read or
write something else. So root copies by descriptor (host.rootfs: O_NOFOLLOW, fstat of what was opened): regular
files and directories are copied with their owner and permission bits (set-id bits dropped), symlinks are
recreated as symlinks (never followed), anything else is left out. Restoring empties the data dir the same way
(rootfs.remove_at) and copies back. Imports nothing from the host but its layout and rootfs.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from host import rootfs
from host.layout import Layout

_KEEP_BITS = 0o1777 & ~stat.S_ISVTX  # permission bits only: no set-id, no sticky


def root(layout: Layout, name: str) -> Path:
    return layout.home / "snapshots" / name


def path(layout: Layout, name: str, install_id: str) -> Path:
    return root(layout, name) / install_id


def size(top: Path, limit: int) -> int | None:
    """Bytes under ``top`` (not following links); None once over ``limit`` (it stops counting there)."""
    total = 0
    stack = [str(top)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                total += st.st_size
                if total > limit:
                    return None
    return total


def take(layout: Layout, name: str, install_id: str, max_bytes: int) -> Path | None:
    """Copy the data dir to the install's snapshot (replacing an older one); None when there is no data dir or
    it is larger than ``max_bytes`` (then no snapshot is kept for this install)."""
    data = layout.data(name)
    dest = path(layout, name, install_id)
    rootfs.remove_tree(dest)
    if not data.is_dir() or max_bytes <= 0 or size(data, max_bytes) is None:
        return None
    rootfs.ensure_dir(layout.home / "snapshots", None)
    rootfs.ensure_dir(root(layout, name), None)
    os.mkdir(dest, 0o700)
    try:
        _copy_dir(data, dest)
    except BaseException:
        rootfs.remove_tree(dest)
        raise
    return dest


def restore(layout: Layout, name: str, install_id: str) -> bool:
    """Replace the data dir's contents with the install's snapshot; False when there is none."""
    snap = path(layout, name, install_id)
    data = layout.data(name)
    if not snap.is_dir() or not data.is_dir():
        return False
    fd = rootfs.open_dir(data)
    try:
        for entry in os.listdir(fd):
            rootfs.remove_at(fd, entry)
    finally:
        os.close(fd)
    _copy_dir(snap, data)
    return True


def forget(layout: Layout, name: str, keep: set[str] | None = None) -> None:
    """Drop the snapshots of ``name`` (all, or all but those of the installs in ``keep``)."""
    top = root(layout, name)
    if not top.is_dir():
        return
    for d in top.iterdir():
        if keep is None or d.name not in keep:
            rootfs.remove_tree(d)
    if keep is None or not any(top.iterdir()):
        rootfs.remove_tree(top)


def _copy_dir(src: Path, dst: Path) -> None:
    s, d = rootfs.open_dir(src), rootfs.open_dir(dst)
    try:
        _copy(s, d, 0)
        st = os.fstat(s)
        os.fchown(d, st.st_uid, st.st_gid)
        os.fchmod(d, st.st_mode & _KEEP_BITS)
    finally:
        os.close(s)
        os.close(d)


def _copy(src: int, dst: int, depth: int) -> None:
    if depth >= rootfs.MAX_DEPTH:
        return
    for name in os.listdir(src):
        st = os.stat(name, dir_fd=src, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
            continue
        opened = rootfs.open_entry(src, name)
        if opened is None:  # FIFO, socket, device, or it changed meanwhile: left out
            continue
        fd, now = opened
        try:
            if stat.S_ISDIR(now.st_mode):
                os.mkdir(name, 0o700, dir_fd=dst)
                out = os.open(name, rootfs.DIR_FLAGS, dir_fd=dst)
                try:
                    _copy(fd, out, depth + 1)
                    os.fchown(out, now.st_uid, now.st_gid)
                    os.fchmod(out, now.st_mode & _KEEP_BITS)
                finally:
                    os.close(out)
            else:
                rootfs.copy_into(fd, dst, name, 0o600, 1 << 62)
                out = os.open(name, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=dst)
                try:
                    os.fchown(out, now.st_uid, now.st_gid)
                    os.fchmod(out, now.st_mode & _KEEP_BITS)
                finally:
                    os.close(out)
        finally:
            os.close(fd)

"""Root file operations on plugin-writable paths, by descriptor only: walk, chown, chmod, read, remove, copy.

A plugin can plant a symlink, a FIFO or a hard link anywhere it may write (its data dir, pip's cache and scratch
dir, its venv while pip runs), and swap a directory for a symlink while root walks the tree. So nothing here acts
on a path inside such a tree: each name is opened from its parent's descriptor with ``O_NOFOLLOW`` (a symlink
fails with ELOOP and is never followed) and the operation applies to the descriptor (fchown, fchmod, fstat, read,
unlink/rmdir relative to the parent fd). The path handed in is the top of the tree; its parent directories must be
root's (the home layout guarantees it: a plugin owns nothing above its own directories). A file root writes there
is a new one renamed into place (``write_file_at``).

What is never done: following a symlink; opening a FIFO, socket or device for its content (``O_NONBLOCK`` covers
a FIFO swapped in between the check and the open); chowning or chmodding a regular file with more than one link
(its other name may be a host file: without ``fs.protected_hardlinks`` a plugin can link ``/etc/shadow``).
Imports nothing from the host but its layout and errors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from host.errors import UnsafeTree
from host.layout import Layout

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
# A venv is ~15 levels deep; the walk holds one descriptor per level.
MAX_DEPTH = 256
# What locking a tree for root clears: set-id and sticky bits, write for group and others.
LOCK_STRIP = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH
# Bounds remove_tree when a still-running process keeps creating directories under it.
MAX_REMOVED_DIRS = 1_000_000
# ... and lets it try again when entries appeared during a pass (a process still writing).
REMOVE_PASSES = 3
# The entry vanished, is a symlink (ELOOP), was swapped for a non-directory, or is a socket (ENXIO).
_GONE_OR_SWAPPED = (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO)


def open_dir(path: Path) -> int:
    """An fd for directory ``path``; a symlink as its last component is refused (ELOOP)."""
    return os.open(path, DIR_FLAGS)


def own_dir(parent: int, name: str, uid: int | None, mode: int = 0o700) -> int:
    """Open (creating if needed) directory ``name`` under the fd ``parent`` without following a symlink;
    anything else in its place is removed. Returns an fd, chmodded ``mode`` and chowned to ``uid`` (if given)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=parent)
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError:  # ELOOP (a symlink) or ENOTDIR (a file): not ours to follow
        os.unlink(name, dir_fd=parent)
        os.mkdir(name, mode, dir_fd=parent)
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    os.fchmod(fd, mode)
    if uid is not None:
        os.fchown(fd, uid, uid)
    return fd


def ensure_dir(path: Path, uid: int | None, mode: int = 0o700) -> None:
    """``own_dir`` for a path whose parent is root's."""
    parent = open_dir(path.parent)
    try:
        os.close(own_dir(parent, path.name, uid, mode))
    finally:
        os.close(parent)


def prepare_plugin_dirs(layout: Layout, name: str, install: Path, uid: int | None) -> None:
    """The plugin's data dir (and its .tmp) owned by the plugin, its root-only socket dir, and its install
    root readable by its group only. The data dir may hold whatever the plugin planted: fds all the way."""
    data_root = open_dir(layout.home / "data")
    try:
        data = own_dir(data_root, name, uid)
        try:
            os.close(own_dir(data, ".tmp", uid))
        finally:
            os.close(data)
    finally:
        os.close(data_root)
    ensure_dir(layout.run_dir(name), 0 if os.geteuid() == 0 else None)
    if uid is not None:
        fd = open_dir(install.parent)
        try:
            os.fchown(fd, 0, uid)
            os.fchmod(fd, 0o750)  # group = the plugin only
        finally:
            os.close(fd)


def open_entry(parent: int, name: str) -> tuple[int, os.stat_result] | None:
    """Open directory entry ``name`` if it is a directory or a regular file: (fd, fstat). None for symlinks,
    FIFOs, sockets and devices (never opened), and for an entry that vanished or changed type meanwhile."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return None
    try:
        fd = os.open(name, DIR_FLAGS if stat.S_ISDIR(st.st_mode) else FILE_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in _GONE_OR_SWAPPED:
            return None
        raise
    now = os.fstat(fd)
    if stat.S_IFMT(now.st_mode) != stat.S_IFMT(st.st_mode):
        os.close(fd)
        return None
    return fd, now


def chown_tree(path: Path, uid: int, strip: int = 0) -> list[str]:
    """chown ``path`` and every directory and regular file under it to ``uid``:``uid`` and clear the mode bits
    in ``strip``. Symlinks, FIFOs, sockets and devices are left as they are (nothing is written through them).
    Returns the regular files left alone because they have more than one link (paths relative to ``path``).
    Raises UnsafeTree when ``path`` is not a directory or the tree is deeper than MAX_DEPTH."""
    try:
        top = open_dir(path)
    except OSError as exc:
        raise UnsafeTree(path, f"not a directory ({exc.strerror})") from exc
    skipped: list[str] = []
    stack: list[tuple[int, str, list[str]]] = [(top, "", [])]
    try:
        _set_owner(top, uid, strip)
        stack[-1][2].extend(sorted(os.listdir(top), reverse=True))
        while stack:
            fd, rel, names = stack[-1]
            if not names:
                os.close(stack.pop()[0])
                continue
            name = names.pop()
            entry = open_entry(fd, name)
            if entry is None:
                continue
            sub, st = entry
            if stat.S_ISDIR(st.st_mode):
                if len(stack) >= MAX_DEPTH:
                    os.close(sub)
                    raise UnsafeTree(path, f"{rel}{name}: deeper than {MAX_DEPTH} levels")
                stack.append((sub, f"{rel}{name}/", []))
                _set_owner(sub, uid, strip)
                stack[-1][2].extend(sorted(os.listdir(sub), reverse=True))
                continue
            try:
                if st.st_nlink > 1:
                    skipped.append(f"{rel}{name}")
                else:
                    _set_owner(sub, uid, strip)
            finally:
                os.close(sub)
    finally:
        for fd, _rel, _names in stack:
            os.close(fd)
    return skipped


def _set_owner(fd: int, uid: int, strip: int) -> None:
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (uid, uid):
        os.fchown(fd, uid, uid)
        st = os.fstat(fd)  # chown clears set-id bits: do not put them back below
    mode = stat.S_IMODE(st.st_mode)
    if mode & strip:
        os.fchmod(fd, mode & ~strip)


def open_beneath(root: int, rel: str, flags: int = FILE_FLAGS) -> int:
    """Open ``rel`` (relative, no ``..``) under the directory fd ``root``, one component at a time, none of
    them a symlink. Raises OSError (ELOOP for a symlink anywhere on the way, EINVAL for a bad path)."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise OSError(errno.EINVAL, f"not a relative path beneath the root: {rel!r}")
    fd = os.dup(root)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags, dir_fd=fd)
    finally:
        os.close(fd)


def read_beneath(root: Path, rel: str, limit: int = 1 << 20) -> bytes:
    """Up to ``limit`` bytes of regular file ``rel`` under ``root``; empty when it is missing, is (or lies
    behind) a symlink, or is not a regular file (a FIFO is never waited on)."""
    try:
        top = open_dir(root)
    except OSError:
        return b""
    try:
        fd = open_beneath(top, rel)
    except OSError:
        return b""
    finally:
        os.close(top)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        chunks: list[bytes] = []
        left = limit
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def copy_into(src: int, parent: int, name: str, mode: int, limit: int) -> int:
    """Copy the open file ``src`` to a new file ``name`` under the directory fd ``parent`` (never through an
    existing entry: O_EXCL), fchmod it to ``mode``; returns the bytes copied. OSError(EFBIG) past ``limit``."""
    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=parent)
    try:
        copied = 0
        while chunk := os.read(src, 1 << 20):
            copied += len(chunk)
            if copied > limit:
                raise OSError(errno.EFBIG, f"{name}: larger than {limit} bytes")
            os.write(out, chunk)  # regular files: a short write only on a full disk, which raises
        os.fchmod(out, mode)
        return copied
    finally:
        os.close(out)


def write_file_at(parent: int, name: str, data: bytes, mode: int, uid: int | None) -> None:
    """Make entry ``name`` of the directory fd ``parent`` a new regular file holding ``data``, chmodded ``mode``
    and chowned to ``uid`` (if given). The file is written under a fresh random name (O_EXCL: never through an
    entry that exists) and renamed over ``name``, so whatever stood there (a symlink, a hard link to a host file)
    is replaced, never written through; a directory in its place is removed first."""
    tmp = f".{name}.{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            if uid is not None:
                os.fchown(fd, uid, uid)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            remove_at(parent, name)
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        _quietly(os.unlink, tmp, dir_fd=parent)
        raise


def remove_tree(path: Path) -> bool:
    """Remove ``path`` and everything under it, never following a symlink (a symlink at ``path`` itself is
    removed, not its target). Missing is fine. Returns whether it is gone; errors are not raised (cleanup).

    Directories are emptied by moving each subdirectory up to the top before emptying it, so any depth is
    removed with two descriptors and no recursion (shutil.rmtree recurses, and opens without O_NOFOLLOW)."""
    try:
        parent = open_dir(path.parent)
    except OSError:
        return not os.path.lexists(path)
    try:
        return remove_at(parent, path.name)
    finally:
        os.close(parent)


def remove_at(parent: int, name: str) -> bool:
    """``remove_tree`` for entry ``name`` of the directory fd ``parent`` (for callers that hold the parent)."""
    try:
        top = os.open(name, DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            return False
        return _quietly(os.unlink, name, dir_fd=parent)  # a symlink or a file: the entry goes, nothing else
    try:
        for _ in range(REMOVE_PASSES):
            _empty(top)
            if _quietly(os.rmdir, name, dir_fd=parent):
                return True
    finally:
        os.close(top)
    return False


def _empty(top: int) -> None:
    prefix = f".rm-{secrets.token_hex(4)}-"
    pending: list[str | None] = [None]  # None: the top itself; else a directory directly under it
    hoisted = 0
    while pending and hoisted <= MAX_REMOVED_DIRS:
        current = pending.pop()
        if current is None:
            fd = top
        else:
            try:
                fd = os.open(current, DIR_FLAGS, dir_fd=top)
            except OSError:
                _quietly(os.unlink, current, dir_fd=top)  # swapped for a symlink or file meanwhile
                continue
        try:
            for entry in os.listdir(fd):
                try:
                    is_dir = stat.S_ISDIR(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode)
                except OSError:
                    continue
                if not is_dir:
                    _quietly(os.unlink, entry, dir_fd=fd)
                elif fd == top:
                    pending.append(entry)
                else:
                    hoisted += 1
                    up = f"{prefix}{hoisted}"
                    if _quietly(os.rename, entry, up, src_dir_fd=fd, dst_dir_fd=top):
                        pending.append(up)
        except OSError:
            pass
        finally:
            if fd != top:
                os.close(fd)
        if current is not None:
            _quietly(os.rmdir, current, dir_fd=top)


def _quietly(op: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
    try:
        op(*args, **kwargs)
    except OSError:
        return False
    return True

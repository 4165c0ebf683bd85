"""The web tier's own mount view, so the Python it runs from stays reachable once it is no longer root.

The web tier starts as root, then drops to an unprivileged uid before it serves. Python keeps importing
lazily after that (httpx loads httpcore on first use, Jinja the ``unicode-escape`` codec, importlib its
resource readers ...), so the interpreter's prefix, the venv and ``sys.path`` must stay readable to the new
uid. When a directory above them is closed to others (a pyenv or venv under ``/root``, 0700), this module
gives the web tier — only it: a private mount namespace — a view in which that directory is a root-owned
tmpfs holding nothing but bind mounts of the paths Python needs. Nothing else of it becomes visible, and no
mode changes on disk. Where mount namespaces are unavailable (default Docker, where the image's Python is
world-readable anyway) it reports what stays unreachable instead.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_SLAVE = 0x2, 0x4, 0x1000, 0x4000, 0x80000


def python_paths(skip: Iterable[str] = ()) -> list[str]:
    """Directories this interpreter imports from (real paths, nested ones dropped), but for ``skip``: skipped
    before nesting is looked at, so a skipped directory never hides the ones below it (``python -m`` run in a
    checkout puts the checkout first, whose .venv is what must be reachable)."""
    candidates = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix,
                  os.path.dirname(os.path.realpath(sys.executable)), *sys.path}
    skipped = {os.path.realpath(p) for p in skip}
    real = {os.path.realpath(p) for p in candidates if p and os.path.isdir(p)} - skipped
    return sorted(p for p in real if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in real))


def closed_ancestor(path: str) -> str | None:
    """The topmost directory above ``path`` that others may not search (o-x), if any."""
    parts = Path(path).parts
    for i in range(1, len(parts)):
        parent = str(Path(*parts[:i]))
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent
    return None


def unreachable(paths: Iterable[str]) -> list[str]:
    return [p for p in paths if closed_ancestor(p) is not None]


def open_up(paths: Iterable[str]) -> list[str]:
    """In a new private mount namespace, cover each closed ancestor of ``paths`` with a tmpfs that holds only
    bind mounts of those paths. Returns the directories covered; raises OSError if this is not possible
    (no CAP_SYS_ADMIN). Call as root, before dropping privileges."""
    covered: dict[str, list[str]] = {}
    for p in paths:
        top = closed_ancestor(p)
        if top is not None:
            covered.setdefault(top, []).append(p)
    if not covered:
        return []
    _call(_libc().unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Before anything is mounted: nothing mounted here may propagate back into the host's namespace. Slave,
    # not private: the host's unmounts still reach this copy of its mount table, so the web tier never
    # keeps a filesystem (a plugin's disk image, a USB stick) busy after the host let go of it.
    _mount(None, "/", None, MS_REC | MS_SLAVE, None)
    for top, inside in sorted(covered.items()):
        # fds first: once the tmpfs covers `top`, the originals are reachable only through them.
        fds = [os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for p in inside]
        try:
            _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
            for p, fd in zip(inside, fds, strict=True):
                _makedirs(p, top)
                _mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC, None)
        finally:
            for fd in fds:
                os.close(fd)
    return sorted(covered)


def _makedirs(path: str, top: str) -> None:
    """Create ``path``'s directories below ``top`` inside the fresh tmpfs, 0755 root."""
    rel = Path(path).relative_to(top)
    current = Path(top)
    for part in rel.parts:
        current = current / part
        if not current.is_dir():
            current.mkdir()
            os.chmod(current, 0o755)  # noqa: S103 - a root-owned mount point the web user must pass through


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _call(res: int, what: str) -> None:
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    fn = _libc().mount
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    _call(fn(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")

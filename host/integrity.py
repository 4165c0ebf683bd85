"""What an install looked like when it was committed, and the check before every start that it still does.

At install the host records every file of the bundle and the venv (site-packages included): its size, mtime,
ctime, inode and sha256, and every symlink's target, in ``<install>/integrity.json``; the registry keeps that
file's sha256 (host.registry provenance), so the record cannot be rewritten to match a change either.

Before each start (host.supervisor.worker) :func:`check` walks both trees again. The fast path compares
``lstat`` only and hashes a file just when its stat differs: any write changes ctime (which no syscall can set
back; only root resetting the clock could), a replacement changes the inode, and a new file (a planted ``.pth``)
or a missing one shows in the walk itself. HOST_INTEGRITY=full hashes every file on every start instead (for a
host whose root is not trusted to keep clocks honest); =off skips the check. Why not hash only what can be
imported: Python can import nearly anything in site-packages (.pth files, namespace packages, data files read by
code), so the safe subset is the whole tree anyway.
Imports nothing from the host but errors (the supervisor imports it: no pydantic, no cryptography).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from host.errors import IntegrityError

RECORD = "integrity.json"
TREES = ("bundle", "venv")
_LINK = "->"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """sha256 of a regular file, opened without following a link (host.signing's file hashes too)."""
    h = hashlib.sha256()
    with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _walk(root: Path) -> dict[str, os.stat_result]:
    """Every non-directory entry under ``root`` (not following links), by relative path."""
    out: dict[str, os.stat_result] = {}
    cut = len(str(root)) + 1
    stack = [str(root)]
    while stack:  # strings, not Paths: pathlib costs more than the stat calls here
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                else:
                    out[e.path[cut:]] = st
    return out


def _entry(path: Path, st: os.stat_result) -> list[Any]:
    if stat.S_ISLNK(st.st_mode):
        return [_LINK, os.readlink(path)]
    if not stat.S_ISREG(st.st_mode):
        return ["?", stat.S_IFMT(st.st_mode)]
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, sha256_file(path)]


def record(install: Path) -> str:
    """Write ``install/integrity.json`` for the install's bundle and venv; returns its sha256 (for the registry)."""
    trees = {}
    for tree in TREES:
        root = install / tree
        trees[tree] = {rel: _entry(root / rel, st) for rel, st in sorted(_walk(root).items())}
    data = json.dumps({"format": 1, "trees": trees}, separators=(",", ":")).encode()
    (install / RECORD).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def check(plugin: str, install: Path, digest: str, *, full: bool = False) -> int:
    """Raise IntegrityError naming the first file (relative to the install) that was changed, added, removed or
    replaced since :func:`record`; returns how many files it hashed."""
    try:
        data = (install / RECORD).read_bytes()
    except OSError as exc:
        raise IntegrityError(plugin, f"{install / RECORD}", f"cannot read the install record ({exc.strerror})") from exc
    if hashlib.sha256(data).hexdigest() != digest:
        raise IntegrityError(plugin, str(install / RECORD), "differs from the hash the registry keeps")
    trees: dict[str, dict[str, list[Any]]] = json.loads(data)["trees"]
    hashed = 0
    for tree in TREES:
        root = install / tree
        want = trees.get(tree, {})
        try:
            have = _walk(root)
        except OSError as exc:
            raise IntegrityError(plugin, tree, f"cannot be read ({exc.strerror})") from exc
        missing, added = want.keys() - have.keys(), have.keys() - want.keys()
        if missing:
            raise IntegrityError(plugin, f"{tree}/{min(missing)}", "missing (deleted since install)")
        if added:
            raise IntegrityError(plugin, f"{tree}/{min(added)}", "added since install")
        for rel, old in want.items():
            st = have[rel]
            if old[0] == _LINK or stat.S_ISLNK(st.st_mode):
                if old[0] != _LINK or not stat.S_ISLNK(st.st_mode) or os.readlink(root / rel) != old[1]:
                    raise IntegrityError(plugin, f"{tree}/{rel}", "a symlink changed since install")
                continue
            if not stat.S_ISREG(st.st_mode):
                raise IntegrityError(plugin, f"{tree}/{rel}", "no longer a regular file")
            if (not full and st.st_size == old[0] and st.st_mtime_ns == old[1] and st.st_ctime_ns == old[2]
                    and st.st_ino == old[3]):
                continue
            hashed += 1
            if st.st_size != old[0] or sha256_file(root / rel) != old[4]:
                raise IntegrityError(plugin, f"{tree}/{rel}", "modified since install (sha256 differs)")
    return hashed

"""Venvs kept for reuse: an install whose venv would be the same as one built before copies that one instead of
running the installer (most of a warm install's time: the confined installer's start, unpacking, bytecode).

Only the venvs of plugins that add nothing to the plugin runtime (no ``requirements``, no requirements.lock)
are kept or reused: such a venv is RUNTIME_REQUIREMENTS resolved by the confined installer against the shared
wheel cache (host.wheel_cache), so nothing the plugin chose went into it, and no build code of the plugin's ran
while it was written. It is copied right after the installer ran and root locked the venv (root-owned, no
hard links), before any of the plugin's code runs, into the partial install; it becomes a template only when
that install commits (publish), so a failed install leaves no template behind.

A template is keyed by everything else that decides the venv: the requirements, the installer and its options,
the interpreter, the runtime files copied into it, the shared cache's index. It is used while it is younger
than the shared cache's freshness (wheel_cache.FRESH_FOR) and every release it holds is still the newest the
shared cache has of that package: a template never stands in for a release the installer would not pick today.
Templates live in ``<home>/venvs/`` (root's, 0700: no plugin reads them) and are safe to delete at any time.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from host import rootfs
from host.wheel_cache import FRESH_FOR, WheelCache, installed

KEEP = 4  # templates at most (~8 MiB each for Flask and gunicorn); the oldest go first
VENV = "venv"
# what the template was made from: {"venv": its original path, "made": time, "dists": [...], "entries": count}
MADE = "made.json"
_GOING = ".partial-"  # a template being published, or removed: renamed away first, so no install finds it
COPY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Template:
    path: Path  # the template's venv
    origin: str  # the path of the venv it was copied from (its scripts name it)
    dists: tuple[tuple[str, str], ...]
    entries: int  # files, directories and links in it: a copy with fewer was cut short


def key(requirements: str, installer: Sequence[str], python: str, runtime: Path, runtime_files: Sequence[str],
        cache: WheelCache) -> str:
    """What decides a venv of ``requirements`` other than the plugin: the installer's argv prefix (binary and
    index options), the interpreter, the runtime files' contents, the shared cache (one per index)."""
    h = hashlib.sha256()
    for part in (requirements, *installer, python, str(cache.root)):
        h.update(part.encode() + b"\0")
    for name in runtime_files:
        h.update(name.encode() + b"\0" + hashlib.sha256((runtime / name).read_bytes()).digest())
    return h.hexdigest()[:32]


class Templates:
    """``<home>/venvs/<key>/{venv,made.json}``."""

    def __init__(self, root: Path, cache: WheelCache) -> None:
        self.root = root
        self.cache = cache

    def find(self, k: str) -> Template | None:
        """The template of key ``k`` while it is fresh and the shared cache still picks each of its releases."""
        made = self._made(self.root / k)
        if made is None or not 0 <= time.time() - float(str(made["made"])) < FRESH_FOR:
            return None
        listed = made["dists"]
        dists = tuple((str(n), str(v)) for n, v in listed) if isinstance(listed, list) else ()
        if not dists or not all(self.cache.is_newest(n, v) for n, v in dists):
            return None
        return Template(self.root / k / VENV, str(made["venv"]), dists, int(str(made["entries"])))

    @staticmethod
    def _made(d: Path) -> dict[str, object] | None:
        try:
            made = json.loads((d / MADE).read_text())
        except (OSError, ValueError):
            return None
        return made if isinstance(made, dict) and {"venv", "made", "dists", "entries"} <= made.keys() else None

    def clone(self, template: Template, venv: Path) -> None:
        """Copy the template to ``venv`` (which must not exist): modes, mtimes (the bytecode stays valid) and
        symlinks as they are; then the scripts in bin/ name the new venv. Raises OSError, also when the copy
        has fewer entries than the template (a prune removing it meanwhile: cp misses what went before it
        listed the directory, silently)."""
        _copy(template.path, venv)
        copied = _count(venv)
        if copied != template.entries:
            raise OSError(f"copied {copied} of the {template.entries} entries of {template.path}")
        _rename_in_scripts(venv / "bin", template.origin, str(venv))

    @staticmethod
    def keep(venv: Path, partial: Path) -> None:
        """Copy a freshly installed (and locked) venv to ``partial`` (inside the partial install): published
        only when the install commits. Raises OSError."""
        partial.mkdir(mode=0o700)
        _copy(venv, partial / VENV)
        site = next((partial / VENV / "lib").glob("python*/site-packages"))
        dists = installed(site)
        (partial / MADE).write_text(json.dumps({"venv": str(venv), "made": time.time(), "dists": dists,
                                                "entries": _count(partial / VENV)}))

    def publish(self, k: str, partial: Path) -> bool:
        """Make ``partial`` (Templates.keep) the template of ``k``, unless one that is still good is there (False:
        ``partial`` is removed). The oldest templates beyond KEEP, and stale ones, go."""
        self.root.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        if self.find(k) is not None:  # another install was first; never replace one an install may be copying
            rootfs.remove_tree(partial)
            return False
        self._drop(self.root / k)  # stale
        staging = self.root / f"{_GOING}{secrets.token_hex(4)}"
        partial.rename(staging)
        try:
            staging.rename(self.root / k)
        except OSError:  # another install published it meanwhile
            rootfs.remove_tree(staging)
            return False
        self.prune()
        return True

    def _drop(self, d: Path) -> None:
        """Rename first (atomic: no install finds it any more), then remove."""
        going = self.root / f"{_GOING}{secrets.token_hex(4)}"
        try:
            d.rename(going)
        except FileNotFoundError:
            return
        rootfs.remove_tree(going)

    def prune(self) -> None:
        entries: list[tuple[float, Path]] = []
        for d in self.root.iterdir():
            if d.name.startswith(_GOING):  # being published or removed; one a kill left behind goes after an hour
                if d.stat().st_mtime < time.time() - 3600:
                    rootfs.remove_tree(d)
                continue
            made = self._made(d)
            entries.append((float(str(made["made"])) if made is not None else 0.0, d))
        for i, (t, d) in enumerate(sorted(entries, reverse=True)):
            if i >= KEEP or not 0 <= time.time() - t < FRESH_FOR:
                self._drop(d)


def _copy(src: Path, dst: Path) -> None:
    """``cp -a``: about 3x faster than shutil.copytree for a venv's ~600 entries. Hard links: none (a locked venv
    has none)."""
    proc = subprocess.run(["cp", "-a", "--no-target-directory", "--", str(src), str(dst)], capture_output=True,
                          text=True, timeout=COPY_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise OSError(f"copying {src}: {proc.stderr.strip()[:200] or f'cp exited {proc.returncode}'}")


def _count(top: Path) -> int:
    n = 0
    stack = [str(top)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                n += 1
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return n


def _rename_in_scripts(bin_dir: Path, old: str, new: str) -> None:
    """Shebangs and activate scripts name the venv's own path: the copy's, not the template's origin's."""
    for entry in os.scandir(bin_dir):
        if not entry.is_file(follow_symlinks=False):
            continue  # bin/python* are symlinks to the interpreter
        path = Path(entry.path)
        data = path.read_bytes()
        if old.encode() in data:
            mode = entry.stat(follow_symlinks=False).st_mode
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.replace(old.encode(), new.encode()))
            os.chmod(path, mode & 0o7777)

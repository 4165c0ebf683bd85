"""Copy a plugin directory into the host without following symlinks out of it or taking build debris."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

# Never part of a bundle: VCS metadata, caches, virtualenvs and build output.
SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", "__pycache__", ".venv", "venv", "env", ".tox", ".nox", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", "node_modules", "build", "dist", ".eggs",
})
SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")
MAX_BUNDLE_BYTES = 200 * 1024 * 1024
MAX_BUNDLE_FILES = 20000


class BundleError(Exception):
    pass


@dataclass
class CopyReport:
    files: int = 0
    bytes: int = 0
    skipped_symlinks: list[str] = field(default_factory=list)


def copy_bundle(src: Path, dst: Path) -> CopyReport:
    """Copy ``src`` to ``dst`` (which must not exist). Symlinks that resolve inside ``src`` are copied as the
    file they point to; symlinks that point outside (or dangle) are skipped and reported."""
    root = src.resolve()
    report = CopyReport()
    dst.mkdir(parents=True)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel = here.relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.endswith(SKIP_SUFFIXES))
        for d in list(dirnames):
            if (here / d).is_symlink():
                dirnames.remove(d)  # os.walk does not descend into them, but be explicit: never follow
                report.skipped_symlinks.append(str(rel / d))
                continue
            (dst / rel / d).mkdir()
        for f in sorted(filenames):
            if f.endswith(SKIP_SUFFIXES):
                continue
            path = here / f
            if path.is_symlink():
                target = path.resolve()
                if not target.is_file() or not target.is_relative_to(root):
                    report.skipped_symlinks.append(f"{rel / f} -> {os.readlink(path)}")
                    continue
                path = target
            elif not path.is_file():
                continue  # sockets, fifos, devices
            size = path.stat().st_size
            report.files += 1
            report.bytes += size
            if report.bytes > MAX_BUNDLE_BYTES or report.files > MAX_BUNDLE_FILES:
                raise BundleError(
                    f"bundle is larger than {MAX_BUNDLE_BYTES // (1024 * 1024)} MiB or {MAX_BUNDLE_FILES} files"
                )
            shutil.copyfile(path, dst / rel / f, follow_symlinks=False)
            os.chmod(dst / rel / f, 0o644)
    return report

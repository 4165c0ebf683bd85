"""The wheel cache shared by every plugin install of a home: verified binary wheels, filled by the host only.

Why it cannot be poisoned: the confined installer (uv or pip, and the build code of every sdist it builds)
only ever READS this directory (``--find-links``, mounted read-only; root owns it, 0755/0644). The host fills
it itself, outside any sandbox, after an install: for each distribution the new venv holds it asks the index
for that exact release, picks the binary wheel this interpreter would install, downloads it and keeps it only
when its sha256 is the one the index published. What the venv holds is plugin-influenced, so it only names
what to fetch: everything stored came from the index, verified. No sdist is ever stored (and nothing is built
or run here), so a file in this directory is exactly a file the index serves.

Safe to delete at any time (whole or file by file): an install that misses a wheel, or finds it gone halfway,
resolves against the index as before. Only the newest final release of each package goes in, and only for a
day (FRESH_FOR): installs resolve from the cache first, so an older release in it would be chosen where the index
offers a newer one; after a day the next install asks the index again. Bounded in size: oldest first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.tags import Tag, sys_tags
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    canonicalize_version,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from host.pip_options import index_options

if TYPE_CHECKING:  # imported when a fill runs: every `host` command imports the installer, few fill the cache
    import httpx

log = logging.getLogger(__name__)

PYPI_SIMPLE = "https://pypi.org/simple"

MAX_DISTS = 200  # an install names at most this many releases to fetch (a venv is plugin-influenced)
MAX_WHEEL_BYTES = 256 * 1024 * 1024
TIMEOUT = 30.0
FETCHES = 4  # downloads at once
FRESH_FOR = 24 * 3600.0  # a wheel's mtime is when the host fetched it as the index's newest release
_DIST_INFO = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._]*)-([A-Za-z0-9.!+_]+)\.dist-info$")
_PARTIAL = ".partial-"
_JSON = "application/vnd.pypi.simple.v1+json"
_ANCHOR = re.compile(r"""<a\s[^>]*href=["']([^"']+)["'][^>]*>""", re.I)


@dataclass(frozen=True)
class Wheel:
    """One file the index publishes: where, its name, and the sha256 the index says it has."""

    url: str
    filename: str
    sha256: str


def installed(site_packages: Path) -> list[tuple[str, str]]:
    """(name, version) of each distribution in a venv's site-packages, from the ``*.dist-info`` names only
    (never read: the venv was written by the confined installer). Names that do not look like one are skipped."""
    found: list[tuple[str, str]] = []
    try:
        entries = sorted(os.listdir(site_packages))
    except OSError:
        return found
    for entry in entries:
        m = _DIST_INFO.match(entry)
        if m:
            found.append((m.group(1), m.group(2)))
    return found[:MAX_DISTS]


class WheelCache:
    """``<home>/wheels/<index key>``: what the confined installer may read (``--find-links``), and what the host
    adds."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    @classmethod
    def of(cls, top: Path, index: Index, max_bytes: int) -> WheelCache:
        """The cache of wheels from ``index``, one directory per index URL: after the operator changes the index,
        a wheel from the old one never stands in for the new one's release of the same name and version."""
        key = hashlib.sha256(index.url.rstrip("/").encode()).hexdigest()[:16]
        return cls(top / key, max_bytes)

    def ensure(self) -> None:
        for d in (self.root.parent, self.root):
            d.mkdir(exist_ok=True)
            if os.geteuid() == 0:
                os.chown(d, 0, 0)
            os.chmod(d, 0o755)  # noqa: S103 - public packages; plugins' installers list and read them

    def wheels(self) -> list[Path]:
        try:
            return [p for p in self.root.iterdir() if p.name.endswith(".whl") and p.is_file()]
        except OSError:
            return []

    def usable(self) -> bool:
        """Worth an offline attempt: the directory exists and holds a wheel."""
        return bool(self.wheels())

    def has(self, name: str, version: str) -> bool:
        return any(_same_release(p.name, name, version) for p in self.wheels())

    def is_newest(self, name: str, version: str) -> bool:
        """The cache holds this release, and no newer one of the package (which an install would pick)."""
        mine = (canonicalize_name(name), canonicalize_version(version))
        versions = [Version(r[1]) for r in map(_release, (p.name for p in self.wheels())) if r and r[0] == mine[0]]
        return mine[1] in {canonicalize_version(v) for v in versions} and max(versions) == Version(mine[1])

    def fill(self, dists: Iterable[tuple[str, str]], index_url: str, client: httpx.Client) -> list[str]:
        """Download and verify the wheel of each (name, version) not cached yet; returns the filenames added.
        A release without a wheel for this interpreter, or an index that cannot say, is skipped, never fatal."""
        import httpx

        def one(dist: tuple[str, str]) -> str | None:
            name, version = dist
            try:
                wheel = published_wheel(client, index_url, name, version)
                if wheel is not None:
                    self._download(client, wheel)
                    return wheel.filename
            except (httpx.HTTPError, OSError, ValueError) as exc:
                log.warning("wheel cache: %s %s not cached: %s", name, version, exc)
            return None

        missing = [d for d in dists if not self.has(*d)]
        with ThreadPoolExecutor(FETCHES) as pool:  # mostly waiting on the index: a few at once
            added = [f for f in pool.map(one, missing) if f is not None]
        self.prune()
        return added

    def _download(self, client: httpx.Client, wheel: Wheel) -> None:
        """Into a partial file first; renamed into place only when its sha256 matches the index's."""
        partial = self.root / f"{_PARTIAL}{secrets.token_hex(6)}"
        digest = hashlib.sha256()
        size = 0
        try:
            with client.stream("GET", wheel.url) as r, open(partial, "xb") as fh:
                r.raise_for_status()
                for chunk in r.iter_bytes(1 << 16):
                    size += len(chunk)
                    if size > MAX_WHEEL_BYTES:
                        raise ValueError(f"{wheel.filename}: over {MAX_WHEEL_BYTES >> 20} MiB")
                    digest.update(chunk)
                    fh.write(chunk)
            if digest.hexdigest() != wheel.sha256:
                raise ValueError(f"{wheel.filename}: sha256 {digest.hexdigest()}, but the index says {wheel.sha256}")
            os.chmod(partial, 0o644)
            partial.replace(self.root / wheel.filename)
        finally:
            partial.unlink(missing_ok=True)

    def prune(self) -> list[str]:
        """Remove the wheels fetched more than FRESH_FOR ago (a newer release may be out: the next install asks
        the index and fetches again), partial files of killed downloads, then the oldest wheels until the cache
        is within its size."""
        removed: list[str] = []
        for stale in self.root.glob(f"{_PARTIAL}*"):
            try:
                if stale.stat().st_mtime < time.time() - 3600:
                    stale.unlink()
            except OSError:
                pass
        entries = []
        for p in self.wheels():
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        for mtime, _, p in entries:
            if mtime < time.time() - FRESH_FOR:
                p.unlink(missing_ok=True)
                removed.append(p.name)
        entries = [e for e in entries if e[2].name not in removed]
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size
            removed.append(p.name)
        return removed


def published_wheel(client: httpx.Client, index_url: str, name: str, version: str) -> Wheel | None:
    """The wheel of ``name`` ``version`` this interpreter would install (best tag first), with the sha256 the
    index publishes for it (PEP 691 JSON, else the PEP 503 page's ``#sha256=`` fragments). None if it has none,
    or if ``version`` is not the newest final release the index has: the cache holds only releases an
    unpinned requirement would get from the index today, so a plugin pinning an old release cannot steer
    later installs (which resolve from the cache first) to it."""
    page = index_url.rstrip("/") + "/" + canonicalize_name(name) + "/"
    r = client.get(page, headers={"Accept": f"{_JSON}, text/html;q=0.1"})
    r.raise_for_status()
    files = list(_json_files(r.json(), page)) if r.headers.get("content-type", "").startswith(_JSON) \
        else list(_html_files(r.text, page))
    finals = [v for v in map(_version, (f.filename for f in files)) if v is not None and not v.is_prerelease]
    if not finals or max(finals) != Version(version):
        return None
    rank = {tag: i for i, tag in enumerate(sys_tags())}
    best: tuple[int, Wheel] | None = None
    for wheel in files:
        if not _is_wheel(wheel.filename) or not _same_release(wheel.filename, name, version):
            continue
        tags: frozenset[Tag] = parse_wheel_filename(wheel.filename)[3]
        score = min((rank[t] for t in tags if t in rank), default=None)
        if score is not None and (best is None or score < best[0]):
            best = (score, wheel)
    return best[1] if best else None


def _json_files(data: object, page: str) -> Iterator[Wheel]:
    files = data.get("files", []) if isinstance(data, dict) else []
    for f in files if isinstance(files, list) else []:
        if not isinstance(f, dict) or f.get("yanked"):
            continue
        filename, url, hashes = f.get("filename"), f.get("url"), f.get("hashes")
        sha = hashes.get("sha256") if isinstance(hashes, dict) else None
        if isinstance(filename, str) and isinstance(url, str) and isinstance(sha, str):
            yield Wheel(urllib.parse.urljoin(page, url), filename, sha.lower())


def _html_files(text: str, page: str) -> Iterator[Wheel]:
    for m in _ANCHOR.finditer(text):
        if "data-yanked" in m.group(0):
            continue
        url = urllib.parse.urljoin(page, m.group(1).replace("&amp;", "&"))
        parts = urllib.parse.urlsplit(url)
        filename = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
        sha = parts.fragment.removeprefix("sha256=") if parts.fragment.startswith("sha256=") else None
        if sha:
            yield Wheel(urllib.parse.urlunsplit(parts._replace(fragment="")), filename, sha.lower())


def _version(filename: str) -> Version | None:
    """The release a wheel or sdist file is of (None: neither, or a name that does not parse)."""
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        if filename.endswith((".tar.gz", ".zip")):
            return parse_sdist_filename(filename)[1]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None
    return None


def _is_wheel(filename: str) -> bool:
    return filename.endswith(".whl") and "/" not in filename and not filename.startswith(".")


def _release(filename: str) -> tuple[str, str] | None:
    try:
        name, version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return None
    return str(name), canonicalize_version(version)


def _same_release(filename: str, name: str, version: str) -> bool:
    return _release(filename) == (canonicalize_name(name), canonicalize_version(version))


@dataclass(frozen=True)
class Index:
    """The one index the cache is filled from, and the CA bundle pip is told to trust (None: the default)."""

    url: str
    cert: str | None


def fill_from(cache: WheelCache, dists: Iterable[tuple[str, str]], index: Index) -> list[str]:
    """:meth:`WheelCache.fill` from ``index`` over a client of its own."""
    import httpx

    with httpx.Client(timeout=TIMEOUT, verify=index.cert or True, follow_redirects=True) as client:
        return cache.fill(dists, index.url, client)


def shared_index(pip_args: str) -> Index | None:
    """The index installs resolve against, when the shared cache can stand in for it: exactly one HTTP(S)
    index (PyPI unless configured). None with ``--no-index`` or an extra index (a release could come from either,
    so one fetched from the main index must not stand in for the other's)."""
    args = index_options(pip_args)
    url, cert = PYPI_SIMPLE, None
    options = dict(_pairs(args))
    if "--no-index" in args or "--extra-index-url" in options:
        return None
    url = options.get("--index-url", url)
    cert = options.get("--cert")
    return Index(url, cert) if url.startswith(("https://", "http://")) else None


def _pairs(args: list[str]) -> Iterator[tuple[str, str]]:
    short = {"-i": "--index-url"}
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if arg[:2] in short and not arg.startswith("--"):
            name, value, eq = short[arg[:2]], arg[2:], "=" if arg[2:] else ""
        if name.startswith("-") and not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        yield name, value

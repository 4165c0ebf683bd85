"""Per-plugin access log: one JSON line per proxied request in <home>/run/access_log/<name>.log, size-rotated.

Written by every public web worker (several processes, many threads) and read by `host logs NAME --access`
and the admin API. Each line is one ``write()`` on an ``O_APPEND`` descriptor, so lines from different
workers never interleave.
Rotation (``<name>.log`` → ``<name>.log.1``, one previous file kept, as for plugin output) happens under an
flock on the file being rotated, and only if it is still the current one: two workers that both see it full
rotate it once. The line is JSON so that nothing a client sends (a path with a newline or a quote) can
forge or break a line.

The query string is never logged: it often carries secrets (password reset codes, API keys, OAuth codes)
that the operator has no business keeping. The path is logged as the client sent it, cut at MAX_PATH.

Imports nothing of Flask or the supervisor: the web tier and the CLI both use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from host.layout import Layout

MAX_PATH = 2048  # characters of path kept per line
READ_LIMIT = 10_000  # lines `read_access` returns at most
FIELDS = ("time", "client", "method", "path", "status", "bytes_in", "bytes_out", "duration_ms", "plugin",
          "aborted")


@dataclass(frozen=True)
class Entry:
    """One finished exchange. ``status``: what the client was told (101 for a WebSocket); ``aborted``: the
    response did not reach its end (the client went away, or the plugin failed mid-body)."""

    time: float  # wall clock when the request arrived
    client: str
    method: str
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    duration: float  # seconds, until the last byte was handed to the client (or the WebSocket closed)
    plugin: str
    aborted: bool = False
    websocket: bool = False

    def line(self) -> bytes:
        """The entry as one JSON line (what ``json.dumps(..., separators=(",", ":"), ensure_ascii=True)`` of
        the record writes, key for key), built by hand: the generic encoder was a third of this module's cost
        per request."""
        whole = int(self.time)
        tail = ',"websocket":true}\n' if self.websocket else "}\n"
        return (f'{{"time":"{_stamp(whole)}.{int((self.time - whole) * 1000):03d}Z","client":{_str(self.client)},'
                f'"method":{_str(self.method)},"path":{_str(self.path[:MAX_PATH])},"status":{int(self.status)},'
                f'"bytes_in":{int(self.bytes_in)},"bytes_out":{int(self.bytes_out)},'
                f'"duration_ms":{float(round(self.duration * 1000, 2))!r},"plugin":{_str(self.plugin)},'
                f'"aborted":{"true" if self.aborted else "false"}{tail}').encode("ascii")


_str = json.encoder.encode_basestring_ascii  # a JSON string literal, quotes included, every non-ASCII escaped
_stamps: tuple[int, str] = (0, "")


def _stamp(second: int) -> str:
    """``2026-12-01T00:44:22`` for ``second`` (UTC), worked out once per second."""
    global _stamps
    cached = _stamps
    if cached[0] != second:
        cached = _stamps = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return cached[1]


class AccessLog:
    """Appends entries to ``directory/<plugin>.log``, rotating at ``max_bytes``.

    Each plugin's file stays open (O_APPEND) between requests: opening it per line cost more than the rest
    of the bookkeeping together, through the /proc/self/fd path the web tier reaches its home by. Whether
    another worker rotated it is checked at most every REOPEN seconds; lines written meanwhile land in the
    previous file, which keeps them."""

    REOPEN = 1.0

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self._files: dict[str, tuple[int, float]] = {}  # plugin -> (fd, when we last checked it is current)
        self._lock = threading.Lock()

    def path(self, plugin: str) -> Path:
        return self.dir / f"{plugin}.log"

    def write(self, entry: Entry) -> None:
        """Append one line; an OSError (disk full, directory gone) is the caller's to log and ignore."""
        line = entry.line()
        with self._lock:
            fd = self._current(entry.plugin)
            os.write(fd, line)
            if os.fstat(fd).st_size > self.max_bytes:
                self._rotate(fd, self.path(entry.plugin))
                self._close(entry.plugin)

    def _current(self, plugin: str) -> int:
        now = time.monotonic()
        fd, checked = self._files.get(plugin, (-1, 0.0))
        if fd >= 0 and now - checked < self.REOPEN:
            return fd
        path = self.path(plugin)
        if fd >= 0:
            try:
                st, mine = os.stat(path), os.fstat(fd)
                if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                    self._files[plugin] = (fd, now)
                    return fd
            except FileNotFoundError:
                pass
            self._close(plugin)  # rotated (or removed: uninstalled) by someone else
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._files[plugin] = (fd, now)
        return fd

    def _close(self, plugin: str) -> None:
        fd, _ = self._files.pop(plugin, (-1, 0.0))
        if fd >= 0:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            for plugin in list(self._files):
                self._close(plugin)

    @staticmethod
    def _rotate(fd: int, path: Path) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            mine = os.fstat(fd)
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):  # nobody rotated it meanwhile
                    os.replace(path, path.with_name(path.name + ".1"))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def log_path(layout: Layout, name: str) -> Path:
    return layout.access_logs / f"{name}.log"


def read_access(layout: Layout, name: str, n: int = 100) -> list[dict[str, Any]]:
    """The last ``n`` (at most READ_LIMIT) entries of plugin ``name``'s access log, oldest first, as dicts
    with the keys of FIELDS (and ``websocket: true`` for WebSockets); reaches into the rotated file when the
    current one holds fewer. An unreadable line (a write cut by a full disk) is skipped."""
    n = max(0, min(n, READ_LIMIT))
    if n == 0:
        return []
    current = log_path(layout, name)
    lines: deque[bytes] = deque(maxlen=n)
    for path in (current.with_name(current.name + ".1"), current):
        fh = _open_regular(path)
        if fh is not None:
            with fh:
                lines.extend(fh)
    out: list[dict[str, Any]] = []
    for raw in lines:
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def open_current(layout: Layout, name: str) -> BinaryIO | None:
    """Plugin ``name``'s current access log for reading (`host logs --access --follow`), as safely as
    :func:`read_access` reads it; None when there is none."""
    return _open_regular(log_path(layout, name))


def _open_regular(path: Path) -> BinaryIO | None:
    """``path`` opened for reading if it is a regular file, else None (missing too). The web user owns the
    directory and the supervisor, root, reads it for the admin API: no link is followed (else a compromised
    web tier could have root read any file to it) and no FIFO or device is opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # missing, or a symbolic link (ELOOP)
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def format_entry(record: dict[str, Any]) -> str:
    """One entry as `host logs --access` prints it (the fields in FIELDS order, space-separated)."""
    flags = " websocket" if record.get("websocket") else ""
    flags += " aborted" if record.get("aborted") else ""
    return (f"{record.get('time', '-')} {record.get('client', '-')} {record.get('method', '-')} "
            f"{json.dumps(record.get('path', ''))} {record.get('status', '-')} in={record.get('bytes_in', 0)} "
            f"out={record.get('bytes_out', 0)} {record.get('duration_ms', 0)}ms{flags}")

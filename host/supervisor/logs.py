"""Per-plugin log files: each instance's stdout/stderr to <home>/logs/<name>/current.log, size-rotated;
the previous instance's log survives a restart as previous.log."""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from host.runtime.plugin_host_gunicorn import REPORT

CURRENT = "current.log"
PREVIOUS = "previous.log"
TAIL_LINES = 20


class Tail:
    """The last lines one instance printed, kept for error reports (each instance has its own, so the
    shutdown chatter of an instance being drained never ends up in its successor's crash report)."""

    def __init__(self) -> None:
        self._lines: deque[str] = deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()

    def add(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def last(self, n: int = 5) -> tuple[str, ...]:
        with self._lock:
            lines = [ln for ln in self._lines if ln.strip()]
        return tuple(lines[-n:])


class LogSink:
    """Pumps each instance's output pipe into the plugin's log file (and the ``plugins.<name>`` logger)."""

    def __init__(self, directory: Path, name: str, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.logger = logging.getLogger(f"plugins.{name}")

    def note(self, line: str) -> None:
        """A line of the host's own in the plugin's current log (why an instance or worker ended), marked
        so it cannot be mistaken for the plugin's output."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / CURRENT, "a") as fh:
                fh.write(f"[plugin-host] {line}\n")
        except OSError as exc:
            self.logger.warning("cannot write to %s: %s", self.dir / CURRENT, exc)

    def begin_instance(self) -> Path:
        """Rotate current → previous; the new instance writes a fresh current.log."""
        self.dir.mkdir(parents=True, exist_ok=True)
        cur = self.dir / CURRENT
        if cur.exists():
            cur.replace(self.dir / PREVIOUS)
        return cur

    def pump(self, fd: int, path: Path, tail: Tail, report: Callable[[str], None] | None = None) -> threading.Thread:
        """``report``: called with the rest of every line that carries the gunicorn master's worker-death
        REPORT (anywhere in the line: a worker's unterminated output cannot hide it)."""
        t = threading.Thread(target=self._pump, args=(fd, path, tail, report), name=f"log-{self.dir.name}",
                             daemon=True)
        t.start()
        return t

    def _pump(self, fd: int, path: Path, tail: Tail, report: Callable[[str], None] | None) -> None:
        out = open(path, "ab")  # noqa: SIM115 - replaced on rotation
        try:
            with os.fdopen(fd, "rb", buffering=0) as pipe:
                pending = b""
                while chunk := pipe.read(65536):
                    out.write(chunk)
                    out.flush()
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    pending = pending[-4096:]
                    for raw in lines:
                        line = raw.decode(errors="replace").rstrip()
                        if REPORT in line and report is not None:
                            report(line.rpartition(REPORT)[2])
                            continue  # the host's own note in the log says it better
                        tail.add(line)
                        self.logger.debug("%s", line)
                    if out.tell() > self.max_bytes:
                        if not _same_file(out.fileno(), path):
                            # A successor owns current.log now and this file became previous.log: never
                            # rotate the successor's log; drop our excess output instead (the tail keeps it).
                            out.close()
                            out = open(os.devnull, "ab")  # noqa: SIM115
                            continue
                        out.close()
                        os.replace(path, path.with_suffix(".log.1"))
                        out = open(path, "ab")  # noqa: SIM115
                if pending.strip():
                    tail.add(pending.decode(errors="replace").rstrip())
        finally:
            out.close()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

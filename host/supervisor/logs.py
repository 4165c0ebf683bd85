"""Per-plugin log files: each instance's stdout/stderr to <home>/logs/<name>/current.log, size-rotated;
the previous instance's log survives a restart as previous.log."""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from pathlib import Path

CURRENT = "current.log"
PREVIOUS = "previous.log"
TAIL_LINES = 20


class LogSink:
    """Pumps one instance's output pipe into its log file and keeps the last lines for error reports."""

    def __init__(self, directory: Path, name: str, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.logger = logging.getLogger(f"plugins.{name}")
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()

    def begin_instance(self) -> Path:
        """Rotate current → previous; the new instance writes a fresh current.log."""
        self.dir.mkdir(parents=True, exist_ok=True)
        cur = self.dir / CURRENT
        if cur.exists():
            cur.replace(self.dir / PREVIOUS)
        self.tail.clear()
        return cur

    def pump(self, fd: int, path: Path) -> threading.Thread:
        t = threading.Thread(target=self._pump, args=(fd, path), name=f"log-{self.dir.name}", daemon=True)
        t.start()
        return t

    def _pump(self, fd: int, path: Path) -> None:
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
                        with self._lock:
                            self.tail.append(line)
                        self.logger.debug("%s", line)
                    if out.tell() > self.max_bytes:
                        out.close()
                        os.replace(path, path.with_suffix(".log.1"))
                        out = open(path, "ab")  # noqa: SIM115
        finally:
            out.close()

    def last_lines(self, n: int = 5) -> tuple[str, ...]:
        with self._lock:
            lines = [ln for ln in self.tail if ln.strip()]
        return tuple(lines[-n:])

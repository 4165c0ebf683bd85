"""Readiness and liveness probes: an HTTP request over the plugin's Unix socket, with ONE deadline for the whole
probe (connect, send, the status line). A per-read timeout would let a plugin that answers a byte at a time
hold the probe, and with it the supervisor thread that must also act on stop and restart, for ever."""

from __future__ import annotations

import errno
import re
import select
import socket
import time
from pathlib import Path

INTERRUPTED = "interrupted"  # ``wake_fd`` became readable: the caller has something more urgent to do
MAX_STATUS_LINE = 1024
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] [1-5]\d\d\b")


def not_ready(timeout: float, path: str, why: str | None) -> str:
    """Why a start timed out, naming what the operator can change: the page probed and the wait."""
    return (f"not ready within {timeout:g}s (last probe: {why or 'none'}; it probes GET {path}, its manifest's "
            "health_path, for up to HOST_START_TIMEOUT)")


def unhealthy(path: str, why: str) -> str:
    """Why a running instance was killed by its liveness probe. A probe that got no answer in time most often
    met an app whose every thread was held (long polls, WebSockets, slow requests), else a slow page."""
    if why.startswith("no answer"):
        return (f"unhealthy: {why} to GET {path} (its manifest's health_path): every one of its threads busy "
                "(resources.threads), or a slow page")
    return f"unhealthy: {why}"


def probe(sock_path: Path, path: str, timeout: float, wake_fd: int | None = None) -> str | None:
    """None when the plugin answered with any HTTP status line within ``timeout`` seconds in all;
    otherwise why not, in a few words (or INTERRUPTED)."""
    if not sock_path.exists():
        return "socket missing"
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        while True:
            try:
                sock.connect(str(sock_path))
                break
            except BlockingIOError:  # its backlog is full (a Unix socket never connects "in progress")
                if time.monotonic() + 0.01 > deadline:
                    return f"no answer within {timeout:.1f}s (its listen backlog stayed full)"
                time.sleep(0.01)
        request = (f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: plugin-host-probe\r\n"
                   "Connection: close\r\n\r\n").encode()
        while request:
            if (why := _wait(sock, deadline, timeout, wake_fd, write=True)) is not None:
                return why
            request = request[sock.send(request):]
        answer = b""
        while b"\n" not in answer:
            if (why := _wait(sock, deadline, timeout, wake_fd)) is not None:
                return why
            chunk = sock.recv(MAX_STATUS_LINE - len(answer))
            if not chunk:
                return "connection closed without an answer" if not answer else "answered garbage"
            answer += chunk
            if len(answer) >= MAX_STATUS_LINE:
                break
        return None if _STATUS_LINE.match(answer) else "answered garbage"
    except (ConnectionRefusedError, FileNotFoundError):
        return "socket not accepting"
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return "socket not accepting"
        return f"probe failed: {exc.__class__.__name__}: {exc}"
    finally:
        sock.close()


def _wait(sock: socket.socket, deadline: float, timeout: float, wake_fd: int | None,
          write: bool = False) -> str | None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return f"no answer within {timeout:.1f}s"
    fd = sock.fileno()
    extra = [wake_fd] if wake_fd is not None else []
    readable, writable, _ = select.select(extra if write else [fd, *extra], [fd] if write else [], [], remaining)
    if wake_fd is not None and wake_fd in readable:
        return INTERRUPTED
    if not readable and not writable:
        return f"no answer within {timeout:.1f}s"
    return None

"""gunicorn settings the host gives every plugin (``gunicorn -c <install>/plugin_host_gunicorn.py``).

Runs in the plugin's gunicorn master, inside its sandbox; imports nothing of the host (the host's web tier
imports its writer, :func:`coalescing`). ``on_starting`` makes gunicorn send a response's head together with
its first body piece (one send, one segment for the proxy to wake up for, instead of two) and format the
Date header once a second (:func:`coalesce`). ``child_exit``
tells the host each time a worker dies (gunicorn replaces it at once, so the host would never see it):
one line on stderr, written with a single write() and led by a newline, so output a worker leaves
unterminated cannot swallow it. The host's log pump recognises REPORT anywhere in a line.

The plugin can print such a line itself: that reports a death that did not happen, which only counts
against it. Nothing on this channel can make a plugin look healthier than it is.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

REPORT = "[plugin-host:worker-exit]"


def _status(pid: int) -> int | None:
    """The dead worker's wait status, from gunicorn's reap loop that called us (it does not pass it on)."""
    frame: FrameType | None = sys._getframe(2)
    for _ in range(3):
        if frame is None:
            return None
        status = frame.f_locals.get("status")
        if isinstance(status, int) and frame.f_locals.get("wpid") == pid:
            return os.waitstatus_to_exitcode(status)
        frame = frame.f_back
    return None


def child_exit(server: Any, worker: Any) -> None:
    if not getattr(server, "LISTENERS", True):
        return  # the master is shutting down and stops its workers: the host sees the instance end instead
    try:
        status = _status(worker.pid)
    except Exception:  # another gunicorn: report the death without its status
        status = None
    os.write(2, f"\n{REPORT} pid={worker.pid} status={status}\n".encode())


def on_starting(server: Any) -> None:
    coalesce()


def coalesce() -> bool:
    """Put :func:`coalescing`'s writer and a once-a-second Date in place in this process, before gunicorn
    serves. False (and gunicorn's writer left alone) on a gunicorn without the hook it relies on."""
    from gunicorn import util
    from gunicorn.http import wsgi

    if not hasattr(wsgi.Response, "_emit_body"):  # gunicorn < 24 writes bodies without it
        return False
    if not getattr(util.http_date, "cached", False):
        util.http_date = cached_http_date(util.http_date)
    if not getattr(wsgi.Response, "coalesces", False):
        wsgi.Response = coalescing(wsgi.Response)
    return True


def cached_http_date(http_date: Callable[..., str]) -> Callable[..., str]:
    """gunicorn's ``util.http_date``, made once per second when asked for the current time."""
    last: list[tuple[int, str]] = [(0, "")]  # (second, text), replaced whole: threads race with valid pairs

    def cached(timestamp: float | None = None) -> str:
        if timestamp is not None:
            return http_date(timestamp)
        now, pair = int(time.time()), last[0]
        if pair[0] != now:
            pair = last[0] = (now, http_date(now))
        return pair[1]

    cached.cached = True  # type: ignore[attr-defined]
    return cached


class _Capture:
    """Stands in for the socket while gunicorn writes a head: keeps the bytes instead of sending them."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += bytes(data)


def coalescing(base: type) -> type:
    """gunicorn's Response class ``base``, sending a head with the body piece ``write()`` was called with.

    gunicorn writes a head with one ``sendall`` and each body piece with another. This writer holds the head
    that ``write()`` builds and sends it with that piece. Nothing waits: the head leaves before ``write()``
    returns, whatever path it took (an empty piece, a HEAD request, a body already complete); every other way
    a head is sent (``close()``, ``sendfile()``, errors) is gunicorn's own."""

    class CoalescingResponse(base):  # type: ignore[misc]
        coalesces = True
        sock: Any
        _in_write = False
        _head = b""

        def send_headers(self) -> None:
            if self.headers_sent or not self._in_write:
                super().send_headers()
                return
            sock, capture = self.sock, _Capture()
            self.sock = capture
            try:
                super().send_headers()
            finally:
                self.sock = sock
            self._head = capture.data

        def write(self, arg: Any) -> None:
            self._in_write = True
            try:
                super().write(arg)
            finally:
                self._in_write = False
            if self._head:  # write() ended without a body piece to carry it (empty, bodiless, complete)
                head, self._head = self._head, b""
                self.sock.sendall(head)

        def _emit_body(self, data: bytes) -> None:
            head = self._head
            if not head:
                super()._emit_body(data)
                return
            self._head = b""
            if self.chunked:
                self.sock.sendall(b"".join((head, b"%X\r\n" % len(data), data, b"\r\n")))
            else:
                self.sock.sendall(head + data)

    return CoalescingResponse

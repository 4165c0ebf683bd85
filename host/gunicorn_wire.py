"""Two per-response costs of gunicorn's HTTP/1 writer, taken out in the web tier's processes.

- **Head and first body piece in one send.** gunicorn writes a response's head with one ``sendall`` and then
  each body piece with another, so a small response costs two syscalls (and, under gevent, two trips through
  its socket layer) and leaves as two TCP segments the client wakes up for. :class:`CoalescingResponse` holds
  the head that ``write()`` builds and sends it with the body piece that ``write()`` was called for. Nothing
  waits: the head leaves before ``write()`` returns, whatever path ``write()`` took (an empty piece, a HEAD
  request, a body already complete), and every other way a head is sent (``close()``, ``sendfile()``, errors)
  is gunicorn's own.
- **Large bodies spliced** (gevent workers only): the proxy hands the writer the rest of a Content-Length
  answer as a :class:`host.upstream.SpliceBody`, which the writer moves from the plugin's socket to the
  client's with ``splice(2)`` through a pipe, never copying it into Python (a 1 MiB GET's recv and send were
  half of the web tier's CPU). Where the framing is not exactly those bytes (chunked to the client, TLS, a
  bodiless answer) it writes the same bytes piece by piece instead.
- **The Date header formatted once a second**, not per response (``email.utils.formatdate`` was ~3 % of a
  tiny proxied GET's CPU in the web tier).

Measured on a tiny GET through the host (gevent worker, one connection, the same run): see the commit.
``install()`` is idempotent and does nothing on a gunicorn whose writer lacks the hook it relies on
(``Response._emit_body``, gunicorn 24+): there responses go out exactly as gunicorn sends them.
"""

from __future__ import annotations

import os
import time
from typing import Any

from gunicorn import util
from gunicorn.http import wsgi

from host import upstream
from host.upstream import SpliceBody

_http_date = util.http_date
_date: tuple[int, str] = (0, "")


def http_date(timestamp: float | None = None) -> str:
    """gunicorn's ``util.http_date``; without an argument, the text for the current second, made once."""
    global _date
    if timestamp is not None:
        return str(_http_date(timestamp))
    now = int(time.time())
    cached = _date  # one read: another thread may replace it meanwhile, with an equally valid pair
    if cached[0] != now:
        cached = _date = (now, str(_http_date(now)))
    return cached[1]


class _Capture:
    """Stands in for the socket while gunicorn writes a head: keeps the bytes instead of sending them."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += bytes(data)


class CoalescingResponse(wsgi.Response):  # type: ignore[misc]
    """gunicorn's Response, sending the head together with the body piece ``write()`` was called with."""

    sock: Any  # the client's socket (gunicorn's attribute)
    _in_write = False
    _head = b""

    def send_headers(self) -> None:
        if self.headers_sent or not self._in_write:
            super().send_headers()
            return
        sock: Any = self.sock
        capture = _Capture()
        self.sock = capture
        try:
            super().send_headers()
        finally:
            self.sock = sock
        self._head = capture.data

    def write(self, arg: Any) -> None:
        if type(arg) is SpliceBody:
            self._splice(arg)
            return
        self._in_write = True
        try:
            super().write(arg)
        finally:
            self._in_write = False
        if self._head:  # write() ended without a body piece to carry it (empty, bodiless, complete)
            head, self._head = self._head, b""
            self.sock.sendall(head)

    def _splice(self, body: SpliceBody) -> None:
        """Move ``body`` from the plugin's socket to the client's in the kernel, when this response's framing
        is exactly those bytes (a Content-Length the body completes, no chunks, no TLS); else write it
        piece by piece."""
        if (self.chunked or getattr(self, "_omits_body", True) or self.cfg.is_ssl
                or self.response_length is None or self.response_length - self.sent != body.length - body.moved):
            for piece in body.pieces():
                self.write(piece)
            return
        self.send_headers()  # outside write(): at once, on its own
        before = body.moved
        try:
            body.move_to(self.sock)
        finally:
            self.sent += body.moved - before

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


def install(splice: bool = False) -> bool:
    """Put these in place in this process (before gunicorn serves). False: this gunicorn lacks the hook.
    ``splice``: the workers are gevent's, whose waits :meth:`SpliceBody.move_to` uses; the proxy may then
    hand the writer bodies to splice (host.upstream.WRITER_SPLICES)."""
    util.http_date = http_date
    if not hasattr(wsgi.Response, "_emit_body") or not hasattr(os, "splice"):
        return False
    wsgi.Response = CoalescingResponse
    upstream.WRITER_SPLICES = splice
    return True

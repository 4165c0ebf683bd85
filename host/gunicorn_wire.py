"""The public web tier's HTTP/1 writer: the plugins' own (host.runtime.plugin_host_gunicorn), plus splicing.

- **Head and first body piece in one send, Date once a second**: :func:`host.runtime.plugin_host_gunicorn.
  coalescing` and ``cached_http_date``, the same as every plugin's gunicorn gets.
- **Large bodies spliced** (gevent workers only): the proxy hands the writer the rest of a Content-Length
  answer as a :class:`host.upstream.SpliceBody`, which the writer moves from the plugin's socket to the
  client's with ``splice(2)`` through a pipe, never copying it into Python (a 1 MiB GET's recv and send were
  half of the web tier's CPU). Where the framing is not exactly those bytes (chunked to the client, TLS, a
  bodiless answer) it writes the same bytes piece by piece instead.

``install()`` does nothing on a gunicorn whose writer lacks the hook it relies on (``Response._emit_body``,
gunicorn 24+): there responses go out exactly as gunicorn sends them.
"""

from __future__ import annotations

import os

from gunicorn import util
from gunicorn.http import wsgi

from host import upstream
from host.runtime.plugin_host_gunicorn import cached_http_date, coalescing
from host.upstream import SpliceBody

http_date = cached_http_date(util.http_date)


class SplicingResponse(coalescing(wsgi.Response)):  # type: ignore[misc]
    """The coalescing writer, which also takes a SpliceBody."""

    def write(self, arg: object) -> None:
        if type(arg) is SpliceBody:
            self._splice(arg)
            return
        super().write(arg)

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


def install(splice: bool = False) -> bool:
    """Put the writer and the Date in place in this process (before gunicorn serves). False: this gunicorn
    lacks the hook. ``splice``: the workers are gevent's, whose waits :meth:`SpliceBody.move_to` uses; the
    proxy may then hand the writer bodies to splice (host.upstream.WRITER_SPLICES)."""
    if not hasattr(wsgi.Response, "_emit_body") or not hasattr(os, "splice"):
        return False
    util.http_date = http_date
    wsgi.Response = SplicingResponse
    upstream.WRITER_SPLICES = splice
    return True

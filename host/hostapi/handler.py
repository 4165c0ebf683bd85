"""The HTTP side of a plugin's host-API socket: one request read (bounded), answered by HostApi.handle.

Imported when the first plugin with host-API permissions starts (host.hostapi.server), not with the supervisor.
"""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from host.hostapi.routes import MAX_BODY

if TYPE_CHECKING:
    from host.hostapi.server import _Server

log = logging.getLogger(__name__)
IDLE_TIMEOUT = 10.0  # seconds a kept-alive connection may sit idle, or a request take to arrive


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    server: _Server

    def address_string(self) -> str:
        return self.server.plugin

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.server.plugin, *args)

    def _serve(self) -> None:
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY or "Transfer-Encoding" in self.headers:
            self._answer(413, {"type": "about:blank", "title": "Body too large", "status": 413,
                               "detail": f"a call's body has a Content-Length of at most {MAX_BODY} bytes"}, {})
            self.close_connection = True
            return
        body = self.rfile.read(int(length))
        status, reply, headers = self.server.api.handle(self.server.plugin, self.command, self.path,
                                                        self.headers.get("Authorization", ""), body)
        self._answer(status, reply, headers)

    def _answer(self, status: int, reply: dict[str, Any] | None, headers: dict[str, str]) -> None:
        data = json.dumps(reply).encode() if reply is not None else b""
        self.send_response(status)
        if reply is not None:
            self.send_header("Content-Type", "application/problem+json" if status >= 400 else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = _serve

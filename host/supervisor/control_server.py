"""Serve the control socket for the supervisor: parse a request line, dispatch, answer one JSON line."""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class _Server(socketserver.ThreadingUnixStreamServer):
    # Every web-tier thread may ask at once (e.g. a burst of first requests to a scaled-to-zero plugin);
    # the default backlog of 5 makes the sixth connect fail with EAGAIN.
    request_queue_size = 256
    daemon_threads = True


class ControlServer:
    """``mode``/``group``: who may connect (the socket is born 0600 and only then opened up to ``group``)."""

    def __init__(self, path: Path, handler: Handler, mode: int = 0o600, group: int | None = None) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        dispatch = handler

        class _Req(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(1024 * 1024)
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                        raise ValueError("request must be a JSON object with 'op'")
                    reply = dispatch(req)
                except Exception as exc:
                    log.debug("control request failed", exc_info=True)
                    reply = {"error": str(exc)}
                self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")

        old = os.umask(0o177)  # the socket is born 0600: root (the host) only
        try:
            self.server = _Server(str(path), _Req)
        finally:
            os.umask(old)
        if group is not None:
            os.chown(path, -1, group)
        os.chmod(path, mode)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="control", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.path.unlink(missing_ok=True)

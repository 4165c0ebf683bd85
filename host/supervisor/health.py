"""Readiness and liveness probes: an HTTP request over the plugin's Unix socket, with a deadline."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def probe(sock_path: Path, path: str, timeout: float) -> str | None:
    """None when the plugin answered with any HTTP status; otherwise why not, in a few words."""
    if not sock_path.exists():
        return "socket missing"
    conn = _UnixHTTPConnection(sock_path, timeout)
    try:
        conn.request("GET", path, headers={"Host": "localhost", "User-Agent": "plugin-host-probe"})
        resp = conn.getresponse()
        resp.read(65536)
        return None
    except TimeoutError:
        return f"no answer within {timeout:.1f}s"
    except (ConnectionRefusedError, FileNotFoundError):
        return "socket not accepting"
    except (OSError, http.client.HTTPException) as exc:
        return f"probe failed: {exc.__class__.__name__}: {exc}"
    finally:
        conn.close()

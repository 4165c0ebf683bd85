"""The supervisor's private control socket (<home>/run/control.sock, 0600): JSON lines, one request per
connection. The client side is used by the CLI and the web tier; the server side lives in the supervisor."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from host.errors import HostError, SupervisorUnavailable

MAX_MESSAGE = 1024 * 1024


def call(path: Path, op: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """Send one request; raise SupervisorUnavailable when no supervisor listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        _connect(sock, path, timeout)
        sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_MESSAGE:
                raise HostError("control socket answer too large")
    except TimeoutError as exc:
        raise HostError(f"supervisor did not answer {op!r} within {timeout:.0f}s") from exc
    except OSError as exc:
        raise HostError(f"control socket {path}: {exc}") from exc
    finally:
        sock.close()
    reply: dict[str, Any] = json.loads(buf or b"{}")
    if "error" in reply:
        raise HostError(reply["error"], plugin=args.get("name"))
    return reply



def _connect(sock: socket.socket, path: Path, timeout: float) -> None:
    """Connect, riding out a momentarily full backlog (EAGAIN) until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(str(path))
            return
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise SupervisorUnavailable(f"no supervisor is running for this home ({path})") from exc
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)

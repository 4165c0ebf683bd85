"""A signed HTTP/1.1 POST to a plugin's Unix socket with a HARD deadline: every socket operation waits only
for what is left of it, so a plugin that trickles its answer byte by byte still costs at most the deadline
(httpx's timeouts apply per operation). Small answers only (:data:`MAX_ANSWER`). Used by filters and by the
event dispatcher; must not import Flask or the supervisor."""

from __future__ import annotations

import socket
import time

from host.hooks import signing

MAX_ANSWER = 64 * 1024


class CallFailed(Exception):
    """No complete answer within the deadline (the message says why, in words)."""


def post(path: str, target: str, payload: bytes, secret: str, msg_id: str, deadline: float,
         now: float | None = None, content_type: str = "application/json") -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of POST ``target`` on the socket at ``path``."""
    end = time.monotonic() + deadline
    head = "".join(f"{k}: {v}\r\n" for k, v in signing.headers(secret, msg_id, payload, now).items())
    request = (f"POST {target} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\n"
               f"Content-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n{head}\r\n").encode() + payload

    def left() -> float:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise CallFailed(f"no answer within {deadline:g}s")
        return remaining

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(left())
        sock.connect(path)
        sock.settimeout(left())
        sock.sendall(request)
        data = b""
        while True:
            sock.settimeout(left())
            chunk = sock.recv(16384)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_ANSWER:
                raise CallFailed("answer too large")
            done = complete(data)
            if done is not None:
                return done
        done = complete(data, eof=True)
        if done is None:
            raise CallFailed("connection closed before a complete answer")
        return done
    except TimeoutError as exc:
        raise CallFailed(f"no answer within {deadline:g}s") from exc
    except OSError as exc:
        raise CallFailed(f"cannot reach the plugin: {exc.strerror or exc}") from exc
    finally:
        sock.close()


def complete(data: bytes, eof: bool = False) -> tuple[int, dict[str, str], bytes] | None:
    """The response in ``data`` once whole (Content-Length, or everything up to EOF); None while not."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError) as exc:
        raise CallFailed("not an HTTP answer") from exc
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        n = int(length)
        return (status, headers, body[:n]) if len(body) >= n else None
    return (status, headers, body) if eof else None

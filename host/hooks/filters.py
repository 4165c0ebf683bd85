"""Filter chains: the filters of one point called in order ``(priority, plugin, name)``, each with a hard
deadline; the first rejection ends the chain. A filter that fails (error status, garbage, refused connection,
deadline passed) gets its declared ``on_error``: ``allow`` goes on to the next, ``reject`` ends the chain with
503. A filter that failed :attr:`Breaker.threshold` times in a row is skipped for :attr:`Breaker.cooldown`
seconds (its on_error applied without calling it), loudly: a warning, an audit callback and a counter.

The call is a small HTTP/1.1 POST over the plugin's Unix socket written here, not httpx: every socket
operation waits only for what is left of the deadline, so a filter that trickles its answer byte by byte
still costs at most its deadline. Must not import Flask or the supervisor.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from host.hooks import HOOK_PREFIX, signing
from host.hooks.table import FilterRef

log = logging.getLogger(__name__)
MAX_ANSWER = 64 * 1024


class FilterFailed(Exception):
    """The filter did not give a verdict in time (``reason`` says why)."""


@dataclass(frozen=True)
class Verdict:
    """The chain's outcome: allowed (with headers to add), or rejected by ``by`` with status and reason."""

    allowed: bool
    status: int = 200
    reason: str = ""
    by: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


ALLOW = Verdict(True)


def call(ref: FilterRef, payload: bytes, now: float | None = None) -> dict[str, Any]:
    """POST ``payload`` to the filter, signed; its JSON verdict, or FilterFailed within ``ref.deadline``."""
    deadline = time.monotonic() + ref.deadline
    msg_id = f"flt_{uuid.uuid4().hex}"
    head = "".join(f"{k}: {v}\r\n" for k, v in signing.headers(ref.secret, msg_id, payload, now).items())
    request = (f"POST {HOOK_PREFIX}filters/{ref.name} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n{head}\r\n").encode() + payload
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FilterFailed(f"no answer within {ref.deadline:g}s")
            return remaining
        sock.settimeout(left())
        sock.connect(ref.socket)
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
                raise FilterFailed("answer too large")
            done = _complete(data)
            if done is not None:
                return _verdict(*done)
        done = _complete(data, eof=True)
        if done is None:
            raise FilterFailed("connection closed before a complete answer")
        return _verdict(*done)
    except TimeoutError as exc:
        raise FilterFailed(f"no answer within {ref.deadline:g}s") from exc
    except OSError as exc:
        raise FilterFailed(f"cannot reach the plugin: {exc.strerror or exc}") from exc
    finally:
        sock.close()


def _complete(data: bytes, eof: bool = False) -> tuple[int, bytes] | None:
    """(status, body) once ``data`` holds a whole response (Content-Length, or everything up to EOF)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError) as exc:
        raise FilterFailed("not an HTTP answer") from exc
    length = next((int(v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])
                   if k.strip().lower() == "content-length" and v.strip().isdigit()), None)
    if length is not None:
        return (status, body[:length]) if len(body) >= length else None
    return (status, body) if eof else None


def _verdict(status: int, body: bytes) -> dict[str, Any]:
    if status != 200:
        raise FilterFailed(f"HTTP {status}")
    try:
        verdict = json.loads(body)
    except ValueError as exc:
        raise FilterFailed("answer is not JSON") from exc
    if not isinstance(verdict, dict) or verdict.get("action") not in ("allow", "reject"):
        raise FilterFailed("answer is no verdict ({'action': 'allow'|'reject', ...})")
    return verdict


class Breaker:
    """Consecutive failures per filter; open (skip the filter) for ``cooldown`` s after ``threshold``."""

    def __init__(self, threshold: int = 5, cooldown: float = 30.0,
                 opened: Callable[[FilterRef, str], None] | None = None) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.opened = opened  # told once each time a circuit opens (the caller audits it)
        self.skipped: dict[str, int] = {}  # calls skipped per filter: a counter for /metrics
        self._fails: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def is_open(self, ref: FilterRef) -> bool:
        with self._lock:
            until = self._open_until.get(ref.key)
            if until is None:
                return False
            if time.monotonic() >= until:  # half-open: one call decides
                del self._open_until[ref.key]
                return False
            self.skipped[ref.key] = self.skipped.get(ref.key, 0) + 1
            return True

    def success(self, ref: FilterRef) -> None:
        with self._lock:
            self._fails.pop(ref.key, None)

    def failure(self, ref: FilterRef, why: str) -> None:
        with self._lock:
            n = self._fails.get(ref.key, 0) + 1
            self._fails[ref.key] = n
            opened = n >= self.threshold
            if opened:
                self._fails[ref.key] = 0
                self._open_until[ref.key] = time.monotonic() + self.cooldown
        if opened:
            log.error("filter %s failed %d times in a row (last: %s): skipped for %gs, on_error=%s applied",
                      ref.key, n, why, self.cooldown, ref.on_error)
            if self.opened is not None:
                self.opened(ref, why)


Caller = Callable[[FilterRef, bytes], dict[str, Any]]


def run_chain(refs: Iterable[FilterRef], point: str, data: dict[str, Any], breaker: Breaker,
              caller: Caller = call) -> Verdict:
    """Run the filters of ``point`` in order over ``data``; the first rejection (or failure of an
    ``on_error = reject`` filter) ends it. Headers allowed by the filters accumulate (later ones win)."""
    payload = json.dumps({"point": point, "data": data}).encode()
    headers: dict[str, str] = {}
    for ref in refs:
        if breaker.is_open(ref):
            failed = "circuit open after repeated failures"
        else:
            try:
                verdict = caller(ref, payload)
            except FilterFailed as exc:
                failed = str(exc)
                breaker.failure(ref, failed)
                log.warning("filter %s at %s failed: %s (on_error=%s)", ref.key, point, failed, ref.on_error)
            else:
                breaker.success(ref)
                if verdict["action"] == "reject":
                    status = verdict.get("status")
                    status = status if isinstance(status, int) and 400 <= status <= 599 else 403
                    return Verdict(False, status, str(verdict.get("reason") or "rejected")[:500], ref.key)
                extra = verdict.get("headers") or {}
                if isinstance(extra, dict):
                    headers.update({str(k): str(v) for k, v in extra.items()})
                continue
        if ref.on_error == "reject":
            return Verdict(False, 503, f"filter {ref.key} failed: {failed}", ref.key)
    return Verdict(True, headers=headers)

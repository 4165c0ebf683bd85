"""Filter chains: the filters of one point called in order ``(priority, plugin, name)``, each with a hard
deadline; the first rejection ends the chain. A filter that fails (error status, garbage, refused connection,
deadline passed) gets its declared ``on_error``: ``allow`` goes on to the next, ``reject`` ends the chain with
503. A filter that failed :attr:`Breaker.threshold` times in a row is skipped for :attr:`Breaker.cooldown`
seconds (its on_error applied without calling it), loudly: a warning, an audit callback and a counter.

Each call is :func:`host.hooks.client.post`, whose deadline is hard. Must not import Flask or the supervisor.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from host.hooks import HOOK_PREFIX
from host.hooks.client import CallFailed, post
from host.hooks.table import FilterRef

log = logging.getLogger(__name__)
FilterFailed = CallFailed  # the filter gave no verdict in time: why, in words


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
    status, _, body = post(ref.socket, f"{HOOK_PREFIX}filters/{ref.name}", payload, ref.secret,
                           f"flt_{uuid.uuid4().hex}", ref.deadline, now)
    return _verdict(status, body)


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

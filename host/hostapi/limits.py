"""Per-plugin rate limit and the host API's audit trail (aggregated, so a busy plugin cannot flood it)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from host.registry import Registry

AUDIT_INTERVAL = 60.0  # seconds between a plugin's "host_api_calls" summaries


class RateLimit:
    """A token bucket per plugin: ``rate`` calls a second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # plugin -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, plugin: str) -> float:
        """0 when the call may go ahead, else the seconds until it could."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(plugin, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens >= 1:
                self._buckets[plugin] = (tokens - 1, now)
                return 0.0
            self._buckets[plugin] = (tokens, now)
            return (1 - tokens) / self.rate


class Audit:
    """Every call is counted by (operation, status) and written as ONE ``host_api_calls`` event per plugin
    and minute (at most), plus when its instance stops. Refusals (401, 403, 429) are also written one by one,
    the first per (plugin, operation, status) in a minute: an operator sees every kind of refusal at once
    without a refusing loop writing a row per call."""

    def __init__(self, registry: Registry, clock: Callable[[], float] = time.monotonic,
                 interval: float = AUDIT_INTERVAL) -> None:
        self.registry = registry
        self.clock = clock
        self.interval = interval
        self._counts: dict[str, Counter[str]] = {}
        self._since: dict[str, float] = {}
        self._refusals: dict[tuple[str, str, int], float] = {}
        self._lock = threading.Lock()

    def call(self, plugin: str, op: str, status: int, **detail: Any) -> None:
        now = self.clock()
        refusal = False
        with self._lock:
            self._counts.setdefault(plugin, Counter())[f"{op} {status}"] += 1
            self._since.setdefault(plugin, now)
            if status in (401, 403, 429):
                key = (plugin, op, status)
                if now - self._refusals.get(key, -self.interval - 1) >= self.interval:
                    self._refusals[key] = now
                    refusal = True
            due = now - self._since[plugin] >= self.interval
        if refusal:
            self.registry.record(plugin, "host_api_refused", op=op, status=status, **detail)
        if due:
            self.flush(plugin)

    def flush(self, plugin: str) -> None:
        """Write ``plugin``'s counts since the last summary (nothing when there were none)."""
        with self._lock:
            counts = self._counts.pop(plugin, None)
            self._since.pop(plugin, None)
        if counts:
            self.registry.record(plugin, "host_api_calls", calls=dict(sorted(counts.items())))

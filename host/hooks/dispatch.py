"""The event dispatcher: delivers the outbox (``hook_deliveries``, filled by :func:`host.hooks.events.emit`)
at least once, in a thread of the supervisor that never blocks its main loop.

Each due row is POSTed as CloudEvents structured JSON to ``/.well-known/plugin-host/events`` on the plugin's
live instance socket, signed with that instance's secret (host.hooks.signing); the id is the CloudEvent id,
the same on every retry, so the plugin dedupes by it. Outcome by status (edges of one row's life):

- 2xx                → delivered
- 410 Gone           → gone; the plugin is unsubscribed from that type (``hook_unsubscribed``), audited
- 429 + Retry-After  → retried no sooner than it asks (capped at :data:`MAX_RETRY_AFTER`)
- anything else, a timeout, a refused connection → retried after the next delay of the schedule
  (HOST_HOOK_RETRY_SCHEDULE, default 0 s, 5 s, 30 s, 5 min, 30 min, each with ±20 % jitter); after the last
  attempt: dead (a dead letter: `host hooks`, the audit log, the admin API)

A plugin that is installed but not serving (starting, backing off, disabled, asleep) keeps its rows pending
without spending attempts; an uninstalled plugin's rows are marked gone. At most ``per_plugin`` deliveries to
one plugin are in flight; rows in flight when the host dies are still pending and go out again after it starts.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from host.hooks import HOOK_PREFIX, client
from host.registry import Registry

log = logging.getLogger(__name__)
DEFAULT_SCHEDULE = (0.0, 5.0, 30.0, 300.0, 1800.0)
JITTER = 0.2
MAX_RETRY_AFTER = 3600.0
BATCH = 200
EVENTS_PATH = HOOK_PREFIX + "events"


@dataclass(frozen=True)
class Target:
    """Where one plugin's live instance listens, and the secret it was started with."""

    socket: Path
    secret: str


# What the supervisor says about a plugin: deliver to it, let its rows wait, or drop them (uninstalled).
Resolution = Target | Literal["wait", "gone"]
Resolver = Callable[[str], Resolution]


@dataclass(frozen=True)
class Outcome:
    state: Literal["delivered", "gone", "retry"]
    error: str | None = None
    retry_after: float | None = None


def classify(status: int, retry_after: str | None) -> Outcome:
    """The outcome of a delivery the plugin answered with ``status``."""
    if 200 <= status < 300:
        return Outcome("delivered")
    if status == 410:
        return Outcome("gone", "410 Gone: unsubscribed")
    wait = None
    if status == 429 and retry_after is not None and retry_after.strip().isdigit():
        wait = min(float(retry_after), MAX_RETRY_AFTER)
    return Outcome("retry", f"HTTP {status}", wait)


def next_delay(schedule: Sequence[float], attempts: int, rng: random.Random) -> float | None:
    """Seconds until attempt ``attempts + 1`` after ``attempts`` failed ones; None when none is left (dead)."""
    if attempts >= len(schedule):
        return None
    return schedule[attempts] * rng.uniform(1 - JITTER, 1 + JITTER)


def post(target: Target, msg_id: str, body: bytes, timeout: float) -> tuple[int, str | None]:
    """One signed delivery, over within ``timeout`` however slowly the plugin answers; (status, Retry-After).
    CallFailed when there was no answer."""
    status, headers, _ = client.post(str(target.socket), EVENTS_PATH, body, target.secret, msg_id, timeout,
                                     content_type="application/cloudevents+json")
    return status, headers.get("retry-after")


Poster = Callable[[Target, str, bytes, float], tuple[int, str | None]]


class Dispatcher:
    """Owns no plugin state: ``resolve`` (the supervisor's) says where each plugin is."""

    def __init__(self, registry: Registry, resolve: Resolver, *, schedule: Sequence[float] = DEFAULT_SCHEDULE,
                 per_plugin: int = 2, timeout: float = 10.0, interval: float = 1.0, poster: Poster = post,
                 rng: random.Random | None = None) -> None:
        self.registry = registry
        self.resolve = resolve
        self.schedule = tuple(schedule)
        self.per_plugin = per_plugin
        self.timeout = timeout
        self.interval = interval
        self.poster = poster
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="hook-delivery")
        self._inflight: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hook-dispatcher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at the outbox now (an event was emitted, a plugin came up)."""
        self._wake.set()

    def close(self, wait: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(wait)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.interval
            try:
                self.poll()
                wait = self._until_next(wait)
            except Exception:  # a busy registry must not end delivery; the next tick retries
                log.exception("hook dispatcher: cannot read the outbox")
            self._wake.wait(wait)
            self._wake.clear()

    def _until_next(self, longest: float) -> float:
        """Seconds until the next retry falls due (a short schedule is kept to), at most ``longest``. Rows due
        already but held back (plugin not serving, its slots full) wait for a wake or the next tick."""
        now = time.time()
        row = self.registry.query("SELECT MIN(next_at) FROM hook_deliveries WHERE state = 'pending' AND next_at > ?",
                                  (now,))
        nxt = row[0][0] if row else None
        return longest if nxt is None else max(0.01, min(longest, float(nxt) - now))

    # -- work ---------------------------------------------------------------------------------------------

    def poll(self, now: float | None = None) -> int:
        """Start every due delivery there is room for; returns how many were started."""
        now = time.time() if now is None else now
        rows = self.registry.query(
            "SELECT id, event_id, plugin, event, attempts FROM hook_deliveries WHERE state = 'pending' "
            "AND next_at <= ? ORDER BY next_at, id LIMIT ?", (now, BATCH))
        started = 0
        resolved: dict[str, Resolution] = {}
        for row in rows:
            plugin = str(row["plugin"])
            with self._lock:
                busy = self._inflight.setdefault(plugin, set())
                if row["id"] in busy or len(busy) >= self.per_plugin:
                    continue
            if plugin not in resolved:
                resolved[plugin] = self.resolve(plugin)
            where = resolved[plugin]
            if where == "wait":
                continue
            if where == "gone":
                self._finish(int(row["id"]), "gone", "the plugin was uninstalled")
                continue
            assert isinstance(where, Target)
            with self._lock:
                busy.add(int(row["id"]))
            self._pool.submit(self._deliver, dict(row), where)
            started += 1
        return started

    def run_now(self, row: dict[str, Any], target: Target) -> None:
        """Deliver one row in the calling thread (:meth:`poll` runs :meth:`_deliver` on its pool instead)."""
        with self._lock:
            self._inflight.setdefault(str(row["plugin"]), set()).add(int(row["id"]))
        self._deliver(row, target)

    def _deliver(self, row: dict[str, Any], target: Target) -> None:
        plugin, rid = str(row["plugin"]), int(row["id"])
        try:
            try:
                status, retry_after = self.poster(target, str(row["event_id"]), str(row["event"]).encode(),
                                                  self.timeout)
                outcome = classify(status, retry_after)
            except client.CallFailed as exc:
                outcome = Outcome("retry", str(exc)[:200])
            self._record(row, outcome)
        except Exception:
            log.exception("hook dispatcher: delivery %d to %s", rid, plugin)
        finally:
            with self._lock:
                self._inflight.get(plugin, set()).discard(rid)
            self._wake.set()  # a slot is free, and a retry may be due sooner than the next tick

    def _record(self, row: dict[str, Any], outcome: Outcome) -> None:
        rid, plugin, attempts = int(row["id"]), str(row["plugin"]), int(row["attempts"]) + 1
        event = json.loads(row["event"])
        if outcome.state == "delivered":
            self._finish(rid, "delivered", None, attempts)
            return
        if outcome.state == "gone":
            with self.registry.transaction() as db:
                db.execute("INSERT OR IGNORE INTO hook_unsubscribed VALUES (?, ?, ?)",
                           (plugin, event["type"], time.time()))
                db.execute("UPDATE hook_deliveries SET state = 'gone', attempts = ?, last_error = ?, updated = ? "
                           "WHERE (id = ? OR (plugin = ? AND type = ? AND state = 'pending'))",
                           (attempts, outcome.error, time.time(), rid, plugin, event["type"]))
            log.info("hook: %s unsubscribed from %s (410)", plugin, event["type"])
            self.registry.record(plugin, "hook_unsubscribed", type=event["type"])
            return
        delay = next_delay(self.schedule, attempts, self.rng)
        if delay is None:
            self._finish(rid, "dead", outcome.error, attempts)
            log.error("hook: event %s (%s) to %s is a dead letter after %d attempts: %s", row["event_id"],
                      event["type"], plugin, attempts, outcome.error)
            self.registry.record(plugin, "hook_dead_letter", event_id=row["event_id"], type=event["type"],
                                 attempts=attempts, error=outcome.error)
            return
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        now = time.time()
        with self.registry.transaction() as db:
            db.execute("UPDATE hook_deliveries SET attempts = ?, next_at = ?, last_error = ?, updated = ? "
                       "WHERE id = ? AND state = 'pending'", (attempts, now + delay, outcome.error, now, rid))

    def _finish(self, rid: int, state: str, error: str | None, attempts: int | None = None) -> None:
        with self.registry.transaction() as db:
            db.execute("UPDATE hook_deliveries SET state = ?, last_error = ?, updated = ?, "
                       "attempts = COALESCE(?, attempts) WHERE id = ?", (state, error, time.time(), attempts, rid))

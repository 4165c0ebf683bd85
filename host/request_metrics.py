"""The public web tier's request series (prometheus_client), and the names every /metrics series uses.

Several gunicorn workers serve the public listener, so these series are kept in prometheus_client's
multiprocess mode: every worker writes its own memory-mapped files into <home>/run/web_metrics (the supervisor
points PROMETHEUS_MULTIPROC_DIR there before the web tier starts and wipes the directory when it starts),
and the admin app adds them up (host.admin.metrics). Without that variable (tests, a web tier run by hand)
they are ordinary in-process series.

prometheus_client is imported lazily, when the app is built: the multiprocess mode is chosen when its
``values`` module is first imported, which must be after the variable is set.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
PREFIX = "plugin_host_"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# -- the public web tier (multiprocess) -----------------------------------------------------------------
REQUESTS = PREFIX + "requests"  # counter {plugin, status="2xx"...}: requests answered
REQUEST_DURATION = PREFIX + "request_duration_seconds"  # histogram {plugin}: until the body's last byte
REQUEST_BYTES = PREFIX + "request_bytes"  # counter {plugin}: request bodies (and WebSocket bytes) received
RESPONSE_BYTES = PREFIX + "response_bytes"  # counter {plugin}: bytes handed to clients
IN_FLIGHT = PREFIX + "requests_in_flight"  # gauge {plugin}: requests (and WebSockets) not finished yet
ABORTED = PREFIX + "requests_aborted"  # counter {plugin}: responses that did not reach their end

# -- the supervisor (op "metrics", host.supervisor.metrics) ---------------------------------------------
PLUGIN_STATE = PREFIX + "plugin_state"  # gauge {plugin, state}: 1 for the plugin's current state
PLUGIN_ENABLED = PREFIX + "plugin_enabled"  # gauge {plugin}
PLUGIN_RESTARTS = PREFIX + "plugin_restarts"  # counter {plugin}
PLUGIN_QUARANTINES = PREFIX + "plugin_quarantines"  # counter {plugin}
PLUGIN_START = PREFIX + "plugin_start_seconds"  # gauge {plugin}: how long its last start took to be ready
PLUGIN_EGRESS_REFUSED = PREFIX + "plugin_egress_refused"  # counter {plugin}
FILTER_CIRCUIT_OPEN = PREFIX + "filter_circuit_open"  # counter {plugin, filter}: times a failing filter was skipped
HOOK_DELIVERIES = PREFIX + "hook_deliveries"  # gauge {plugin, state}: event deliveries in the outbox
PLUGIN_MEMORY = PREFIX + "plugin_memory_bytes"  # gauge {plugin}: the live instance's cgroup
PLUGIN_CPU = PREFIX + "plugin_cpu_seconds"  # counter {plugin}: CPU time of the live instance's processes
PLUGIN_PROCESSES = PREFIX + "plugin_processes"  # gauge {plugin}
PLUGINS = PREFIX + "plugins"  # gauge {state}: how many plugins are in each state
SUPERVISOR_UPTIME = PREFIX + "supervisor_uptime_seconds"  # gauge
WEB_UP = PREFIX + "web_tier_up"  # gauge {app}: 1 while that web tier runs

# Requests take milliseconds; streams and long polls take minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")


def status_class(status: int) -> str:
    """``"2xx"`` for 200..299 and so on; anything outside 100..599 is ``"other"``."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


class RequestMetrics:
    """The series one web worker updates (thread-safe: prometheus_client locks each value)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        if os.environ.get(MULTIPROC_ENV) and not multiprocess_active():
            log.error("%s is set but prometheus_client was imported before it: each web worker counts alone, "
                      "and /metrics shows one worker's share", MULTIPROC_ENV)
        # A registry of our own (never the global one): building the app twice in a process is fine.
        self.registry = reg = CollectorRegistry(auto_describe=False)
        self.requests = Counter(REQUESTS, "Requests proxied to a plugin, by status class of the answer",
                                ["plugin", "status"], registry=reg)
        self.duration = Histogram(REQUEST_DURATION, "Time from a request's arrival to its response's last byte",
                                  ["plugin"], buckets=DURATION_BUCKETS, registry=reg)
        self.bytes_in = Counter(REQUEST_BYTES, "Bytes received from clients for a plugin", ["plugin"],
                                registry=reg)
        self.bytes_out = Counter(RESPONSE_BYTES, "Bytes sent to clients from a plugin", ["plugin"], registry=reg)
        self.in_flight = Gauge(IN_FLIGHT, "Requests and WebSockets to a plugin not finished yet", ["plugin"],
                               multiprocess_mode="livesum", registry=reg)
        self.aborted = Counter(ABORTED, "Responses that did not reach their end (client gone, plugin failed)",
                               ["plugin"], registry=reg)

        self._children: dict[str, _Children] = {}  # per plugin: labels() looked up once, not per request

    def _of(self, plugin: str) -> _Children:
        kids = self._children.get(plugin)
        if kids is None:
            kids = self._children[plugin] = _Children(
                self.in_flight.labels(plugin), self.duration.labels(plugin), self.bytes_in.labels(plugin),
                self.bytes_out.labels(plugin), self.aborted.labels(plugin),
                {c: self.requests.labels(plugin, c) for c in STATUS_CLASSES})
        return kids

    def begin(self, plugin: str) -> None:
        self._of(plugin).in_flight.inc()

    def end(self, plugin: str, status: int, duration: float, bytes_in: int, bytes_out: int, aborted: bool) -> None:
        kids = self._of(plugin)
        kids.in_flight.dec()
        kids.requests[status_class(status)].inc()
        if status != 101:  # a WebSocket's lifetime is no request duration
            kids.duration.observe(duration)
        if bytes_in:
            kids.bytes_in.inc(bytes_in)
        if bytes_out:
            kids.bytes_out.inc(bytes_out)
        if aborted:
            kids.aborted.inc()


@dataclass(frozen=True)
class _Children:
    in_flight: Any
    duration: Any
    bytes_in: Any
    bytes_out: Any
    aborted: Any
    requests: dict[str, Any]


def multiprocess_active() -> bool:
    """Whether prometheus_client chose its multiprocess mode (PROMETHEUS_MULTIPROC_DIR was set in time)."""
    from prometheus_client import values

    vc: Any = values.ValueClass
    return vc is not values.MutexValue


def forget_worker(directory: Path, pid: int) -> None:
    """A web worker exited: its in-flight gauge must stop counting (its counters stay, they are history)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def forget_live(directory: Path) -> None:
    """A web tier starts: in-flight gauges left by an earlier one (killed, so never told its workers died)."""
    for path in directory.glob("gauge_live*.db"):
        path.unlink(missing_ok=True)

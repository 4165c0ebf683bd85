"""GET /metrics on the admin listener: Prometheus text of the public web tier's request series (added up
from every worker's multiprocess files in run/web_metrics) and of the supervisor's own (op ``metrics``).

Who may read it: a ``read`` (or ``admin``) token, ``Authorization: Bearer phk_...``, checked by the
supervisor like every admin op (Prometheus: ``authorization: {credentials_file: /etc/prometheus/phk}``).
``HOST_METRICS_PUBLIC=true`` opens it to anyone who reaches the admin listener (which is loopback by
default) and only there: the public listener never serves /metrics. Request counts, memory and restart
history say what runs here and how it is used; that is the operator's, hence a token by default.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from flask import Blueprint, Flask, Response, request

from host import request_metrics as names
from host.layout import Layout

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Backend(Protocol):
    """host.admin.client.AdminClient: its ``call`` raises AdminError with the supervisor's problem."""

    path: Path  # the admin socket, <home>/run/admin.sock

    def call(self, op: str, credential: str | None, *, timeout: float = ..., **args: Any) -> dict[str, Any]: ...


def register(app: Flask, backend: Backend) -> None:
    """Add GET /metrics to the admin app. The supervisor decides who may read it (op ``metrics``: a read
    token, or none when HOST_METRICS_PUBLIC=true); its refusal comes back as an AdminError (401/403)."""
    layout: Layout = getattr(backend, "layout", None) or Layout(backend.path.parent.parent)
    bp = Blueprint("metrics", __name__)

    @bp.get("/metrics")
    def metrics() -> Response:
        snap = backend.call("metrics", bearer(request.headers.get("Authorization", "")), timeout=5.0)
        return Response(exposition(snap, layout.metrics), mimetype=CONTENT_TYPE)

    app.register_blueprint(bp)


def bearer(header: str) -> str | None:
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def exposition(snapshot: dict[str, Any], multiproc_dir: Path) -> bytes:
    """The Prometheus text of ``snapshot`` (the supervisor's op ``metrics``) and of the web workers' files."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    if multiproc_dir.is_dir():
        MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    registry.register(_Supervisor(snapshot))
    return bytes(generate_latest(registry))


class _Supervisor:
    """A prometheus_client collector of one supervisor snapshot."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snap = snapshot

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        return iter(families(self.snap))


def families(snap: dict[str, Any]) -> list[Any]:
    """The supervisor's series (names in host.request_metrics)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    plugins: dict[str, dict[str, Any]] = snap.get("plugins", {})
    states: list[str] = list(snap.get("states", []))
    for p in plugins.values():
        if p["state"] not in states:
            states.append(p["state"])
    state = GaugeMetricFamily(names.PLUGIN_STATE, "1 for the state the plugin is in, 0 for the others",
                              labels=["plugin", "state"])
    enabled = GaugeMetricFamily(names.PLUGIN_ENABLED, "1 when the plugin is enabled", labels=["plugin"])
    restarts = CounterMetricFamily(names.PLUGIN_RESTARTS, "Restarts since the host started", labels=["plugin"])
    quarantines = CounterMetricFamily(names.PLUGIN_QUARANTINES, "Times the plugin was quarantined since the host "
                                      "started", labels=["plugin"])
    start = GaugeMetricFamily(names.PLUGIN_START, "Seconds its last instance took from spawn to ready",
                              labels=["plugin"])
    egress = CounterMetricFamily(names.PLUGIN_EGRESS_REFUSED, "Outgoing connections the egress point refused",
                                 labels=["plugin"])
    memory = GaugeMetricFamily(names.PLUGIN_MEMORY, "Memory its live instance's cgroup uses", labels=["plugin"])
    cpu = CounterMetricFamily(names.PLUGIN_CPU, "CPU time of its live instance (resets with a new instance)",
                              labels=["plugin"])
    procs = GaugeMetricFamily(names.PLUGIN_PROCESSES, "Processes in its live instance's cgroup",
                              labels=["plugin"])
    by_state = GaugeMetricFamily(names.PLUGINS, "Plugins in each state", labels=["state"])
    counts = dict.fromkeys(states, 0)
    for name, p in sorted(plugins.items()):
        for s in states:
            state.add_metric([name, s], 1.0 if p["state"] == s else 0.0)
        counts[p["state"]] += 1
        enabled.add_metric([name], 1.0 if p.get("enabled") else 0.0)
        restarts.add_metric([name], float(p.get("restarts", 0)))
        quarantines.add_metric([name], float(p.get("quarantines", 0)))
        egress.add_metric([name], float(p.get("egress_refused", 0)))
        if p.get("start_seconds") is not None:
            start.add_metric([name], float(p["start_seconds"]))
        for family, key in ((memory, "memory_bytes"), (cpu, "cpu_seconds"), (procs, "processes")):
            if p.get(key) is not None:
                family.add_metric([name], float(p[key]))
    for s, n in counts.items():
        by_state.add_metric([s], float(n))
    uptime = GaugeMetricFamily(names.SUPERVISOR_UPTIME, "Seconds since the supervisor started",
                               value=float(snap.get("uptime", 0.0)))
    web = GaugeMetricFamily(names.WEB_UP, "1 while the web tier serving that listener runs", labels=["app"])
    for app, up in sorted(snap.get("web", {}).items()):
        web.add_metric([app], 1.0 if up else 0.0)
    tripped = CounterMetricFamily(names.FILTER_CIRCUIT_OPEN, "Times a filter failing again and again was skipped "
                                  "(its on_error applied) since the host started", labels=["plugin", "filter"])
    for key, n in sorted(snap.get("filters_tripped", {}).items()):
        tripped.add_metric(key.split("/", 1), float(n))
    outbox = GaugeMetricFamily(names.HOOK_DELIVERIES, "Event deliveries in the outbox by state (dead: dead "
                               "letters)", labels=["plugin", "state"])
    for plugin, per_state in sorted(snap.get("hook_deliveries", {}).items()):
        for st, n in sorted(per_state.items()):
            outbox.add_metric([plugin, st], float(n))
    return [state, enabled, restarts, quarantines, start, egress, memory, cpu, procs, by_state, uptime, web, tripped,
            outbox]

"""The supervisor's part in hooks (host.hooks): the event dispatcher's view of the workers, the filter table it
publishes for the web tier, and the host's own events (``host.started``)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from host.hooks.dispatch import Dispatcher, Resolution, Target
from host.hooks.events import emit_quietly, host_event
from host.hooks.signing import SECRET_ENV
from host.hooks.table import Live, TablePublisher
from host.registry import PluginRecord
from host.supervisor.state import SERVING

if TYPE_CHECKING:
    from host.supervisor.core import Supervisor

log = logging.getLogger(__name__)


class SupervisorHooks:
    def __init__(self, sup: Supervisor) -> None:
        s = sup.settings
        self.sup = sup
        self.dispatcher = Dispatcher(sup.registry, self.resolve, schedule=s.hook_schedule,
                                     per_plugin=s.hook_concurrency, timeout=s.hook_delivery_timeout)
        self.table = TablePublisher(sup.layout.hooks, sup.web_user, s.hook_filter_deadline_max)
        self.tripped: dict[str, int] = {}  # circuits opened per "plugin/filter" since the host started
        self._lock = threading.Lock()

    def start(self) -> None:
        emit_quietly(self.sup.registry, host_event("host.started", pid=os.getpid()))
        self.dispatcher.start()

    def close(self) -> None:
        self.dispatcher.close()

    def resolve(self, name: str) -> Resolution:
        """Where the dispatcher delivers plugin ``name``'s events now: its live instance, or wait (not serving:
        asleep ones are woken), or gone (uninstalled)."""
        with self.sup._lock:
            worker = self.sup.workers.get(name)
        if worker is None:
            return "wait" if self.sup.registry.get(name) is not None else "gone"
        inst = worker.instance
        if inst is not None and worker.lc.state in SERVING and SECRET_ENV in inst.spec.env:
            return Target(inst.spec.instance_socket, inst.spec.env[SECRET_ENV])
        if worker.want_running and worker.asleep:
            worker.submit("wake")  # scaled to zero: an event is a reason to run, like a request
        return "wait"

    def publish(self, records: Iterable[PluginRecord]) -> None:
        """The filter table of the serving plugins (a restart brings a new secret: republished next tick)."""
        with self.sup._lock:
            workers = dict(self.sup.workers)
        live = []
        for rec in records:
            worker = workers.get(rec.name)
            inst = worker.instance if worker is not None else None
            if rec.enabled and inst is not None and worker is not None and worker.lc.state in SERVING \
                    and (rec.manifest.get("hooks") or {}).get("filters"):
                live.append(Live(rec.name, rec.manifest, f"{rec.name}/{inst.spec.instance_socket.name}",
                                 inst.spec.env.get(SECRET_ENV, "")))
        self.table.publish(live)

    def filter_tripped(self, req: dict[str, Any]) -> dict[str, Any]:
        """The web tier reports a filter whose circuit opened: audited and counted (/metrics)."""
        plugin, name = str(req.get("plugin", ""))[:32], str(req.get("filter", ""))[:32]
        with self._lock:
            key = f"{plugin}/{name}"
            self.tripped[key] = self.tripped.get(key, 0) + 1
        self.sup.registry.record(plugin or None, "filter_circuit_open", filter=name,
                                 reason=str(req.get("reason", ""))[:200])
        return {"ok": True}

"""The supervisor's side of /metrics: the numbers only it knows (op ``metrics`` on the admin socket), and the
directories the public web tier records requests in (run/web_metrics, run/access_log).

The admin app turns :func:`snapshot` into Prometheus series (host.admin.metrics); this module only counts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from typing import TYPE_CHECKING, Any

from host.hooks import outbox
from host.layout import Layout
from host.supervisor.state import State
from host.webuser import WebUser
from sandbox_runner.layers import cgroup

if TYPE_CHECKING:
    from host.supervisor.core import Supervisor

log = logging.getLogger(__name__)


def prepare(layout: Layout, user: WebUser | None) -> None:
    """At supervisor start: an empty run/web_metrics (series are counted from this start: a file a killed web
    tier left would be added to the next one's) and run/access_log (kept: it is the plugins' history), both
    the web user's own, 0700."""
    shutil.rmtree(layout.metrics, ignore_errors=True)
    for directory in (layout.metrics, layout.access_logs):
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        if user is not None:
            os.chown(directory, user.uid, user.gid)


def usage(cgroup_name: str | None) -> dict[str, float]:
    """Memory, CPU and processes of one live instance, from its cgroups ({} without cgroups)."""
    if cgroup_name is None:
        return {}
    with contextlib.suppress(OSError):
        return cgroup.usage(cgroup.find(cgroup_name))
    return {}


def snapshot(sup: Supervisor) -> dict[str, Any]:
    """Everything the supervisor counts, as plain JSON: per plugin its state, whether it is enabled,
    restarts, quarantines, last start latency, egress refusals and resource use; the host's uptime and
    which web tiers run."""
    with sup._lock:
        workers = dict(sup.workers)
        refusals = dict(sup.egress_refusals)
    enabled = {r.name: r.enabled for r in sup.registry.all()}
    plugins: dict[str, Any] = {}
    for name, w in sorted(workers.items()):
        inst = w.instance
        plugins[name] = {
            "state": str(w.lc.state),
            "enabled": enabled.get(name, False),
            "restarts": w.lc.restarts,
            "quarantines": w.quarantines,
            "start_seconds": w.start_seconds,
            "egress_refused": refusals.get(name, 0),
            **usage(inst.spec.policy.cgroup_name if inst is not None and inst.live_pid is not None else None),
        }
    tiers = getattr(sup, "tiers", None)
    if tiers is None:  # a supervisor with a single web tier
        tiers = {"public": sup.web} if sup.web is not None else {}
    hooks = getattr(sup, "hooks", None)
    return {
        "uptime": round(time.time() - sup.started, 3),
        "filters_tripped": dict(hooks.tripped) if hooks is not None else {},
        "hook_deliveries": outbox.counts(sup.registry) if hooks is not None else {},
        "web": {app: proc.poll() is None for app, proc in tiers.items()},
        "states": [str(s) for s in State],
        "plugins": plugins,
    }

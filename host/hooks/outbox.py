"""What the operator sees of the outbox (`host hooks`, the admin API): counts per plugin and state, the dead
letters, and requeueing one."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from host.registry import Registry


@dataclass(frozen=True)
class Delivery:
    id: int
    event_id: str
    plugin: str
    type: str
    state: str
    attempts: int
    next_at: float
    last_error: str | None
    created: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def counts(registry: Registry) -> dict[str, dict[str, int]]:
    """plugin -> state -> number of deliveries."""
    out: dict[str, dict[str, int]] = {}
    for r in registry.query("SELECT plugin, state, COUNT(*) FROM hook_deliveries GROUP BY plugin, state"):
        out.setdefault(str(r[0]), {})[str(r[1])] = int(r[2])
    return out


def deliveries(registry: Registry, state: str | None = None, plugin: str | None = None,
               limit: int = 100) -> list[Delivery]:
    """Newest first, optionally only one state (``dead``: the dead letters) or one plugin."""
    where, args = [], []
    if state:
        where.append("state = ?")
        args.append(state)
    if plugin:
        where.append("plugin = ?")
        args.append(plugin)
    q = ("SELECT id, event_id, plugin, type, state, attempts, next_at, last_error, created "
         "FROM hook_deliveries" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?")
    return [Delivery(*tuple(r)) for r in registry.query(q, (*args, limit))]


def event(registry: Registry, delivery_id: int) -> dict[str, Any] | None:
    rows = registry.query("SELECT event FROM hook_deliveries WHERE id = ?", (delivery_id,))
    return json.loads(rows[0][0]) if rows else None


def requeue(registry: Registry, delivery_id: int, who: str | None = None) -> bool:
    """Give a dead letter a fresh schedule (the operator fixed the plugin); False when it is no dead letter."""
    now = time.time()
    with registry.transaction() as db:
        cur = db.execute("UPDATE hook_deliveries SET state = 'pending', attempts = 0, next_at = ?, updated = ? "
                         "WHERE id = ? AND state = 'dead'", (now, now, delivery_id))
        if cur.rowcount == 0:
            return False
    registry.record(None, "hook_requeued", who=who, delivery=delivery_id)
    return True


DONE_RETENTION_DAYS = 7.0  # delivered and gone rows: long past any retry (the schedule ends within the hour)


def prune(registry: Registry, dead_retention_days: float, now: float | None = None) -> int:
    """Forget delivered and gone deliveries after :data:`DONE_RETENTION_DAYS`, dead letters after
    ``dead_retention_days`` (the audit retention; 0 keeps them). Pending ones are never pruned."""
    now = time.time() if now is None else now
    with registry.transaction() as db:
        gone = db.execute("DELETE FROM hook_deliveries WHERE state IN ('delivered', 'gone') AND updated < ?",
                          (now - DONE_RETENTION_DAYS * 86400,)).rowcount
        if dead_retention_days > 0:
            gone += db.execute("DELETE FROM hook_deliveries WHERE state = 'dead' AND updated < ?",
                               (now - dead_retention_days * 86400,)).rowcount
    return int(gone)

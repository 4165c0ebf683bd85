"""The event envelope (CloudEvents 1.0, structured JSON) and the durable outbox: :func:`emit` fans an event
out to every subscribed plugin as one row each in the registry (``hook_deliveries``), in one transaction.

Whoever emits checks the emitter's permission first (``events:emit:<type>``, the host API); host events
(``plugin.*``, ``host.*``) are emitted by the host itself. Subscribers are read from the manifests, whose
validation already required ``events:subscribe:<pattern>`` for each subscription.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from host.registry import Registry

if TYPE_CHECKING:
    from host.hooks.cloudevent import CloudEvent

log = logging.getLogger(__name__)
# <plugin>.<noun>.<verb>, or the host's own plugin.* / host.* events: lower case, dot-separated segments.
TYPE_PATTERN = r"^[a-z][a-z0-9-]{0,31}(\.[a-z][a-z0-9_-]{0,31}){1,4}$"
MAX_DATA = 64 * 1024  # bytes of JSON in ``data``: events are notifications, not a bulk transport
_VALID_TYPE = re.compile(TYPE_PATTERN)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class HostEvent:
    """An event of the host's own (``plugin.*``, ``host.*``), as :class:`CloudEvent` would hold and serialize it,
    without pydantic: the supervisor emits these and must not load pydantic for them (issue 12: idle memory).
    Events from plugins arrive through the host API and are validated as CloudEvents."""

    type: str
    data: dict[str, Any] | None = None
    source: str = "/host"
    id: str = field(default_factory=lambda: f"evt_{uuid.uuid4().hex}")
    time: str = field(default_factory=_now)
    specversion: str = "1.0"
    datacontenttype: str = "application/json"

    def to_json(self) -> str:
        """CloudEvent.model_dump_json()'s text: its field order, compact, non-ASCII as is."""
        fields = {"specversion": self.specversion, "id": self.id, "source": self.source, "type": self.type,
                  "time": self.time, "datacontenttype": self.datacontenttype, "data": self.data}
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


def host_event(kind: str, **data: Any) -> HostEvent:
    """A host event, e.g. ``host_event("plugin.installed", plugin="notes", version="1.0")``."""
    if not _VALID_TYPE.match(kind):
        raise ValueError(f"{kind!r}: not an event type")
    return HostEvent(type=kind, data=data)


# -- subscriptions ------------------------------------------------------------------------------------

def matches(pattern: str, event_type: str) -> bool:
    """``notes.note.created`` matches itself, ``notes.note.*``, ``notes.*`` and ``*`` (a trailing ``*`` is any
    number of further segments); nothing else."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def subscriptions(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The event patterns a stored manifest (JSON) subscribes to."""
    hooks = manifest.get("hooks") or {}
    return tuple(str(p) for p in hooks.get("events", ()))




def emit(registry: Registry, event: CloudEvent | HostEvent) -> int:
    """Durably enqueue ``event`` for every installed plugin subscribed to its type (not one that answered
    ``410 Gone`` for it, nor the emitting plugin itself). Returns how many deliveries were queued; the
    supervisor's dispatcher (:mod:`host.hooks.dispatch`) delivers them at least once. Emitting the same id
    twice queues it once per subscriber."""
    if len(json.dumps(event.data or {})) > MAX_DATA:
        raise ValueError(f"event {event.type}: data over {MAX_DATA} bytes")
    body = event.to_json()
    now = time.time()
    emitter = event.source.removeprefix("/plugins/") if event.source.startswith("/plugins/") else None
    queued = 0
    with registry.transaction() as db:
        gone = {(str(r[0]), str(r[1])) for r in db.execute("SELECT plugin, type FROM hook_unsubscribed")}
        for row in db.execute("SELECT name, manifest FROM plugins ORDER BY name").fetchall():
            name = str(row[0])
            if name == emitter or (name, event.type) in gone:
                continue
            if any(matches(p, event.type) for p in subscriptions(json.loads(row[1]))):
                cur = db.execute(
                    "INSERT OR IGNORE INTO hook_deliveries (event_id, plugin, type, event, attempts, next_at, "
                    "state, created, updated) VALUES (?, ?, ?, ?, 0, ?, 'pending', ?, ?)",
                    (event.id, name, event.type, body, now, now, now))
                queued += cur.rowcount
    return queued


def emit_quietly(registry: Registry, event: CloudEvent | HostEvent) -> None:
    """:func:`emit` for the host's own events: a failure is logged, never raised into the operation that
    happened (the operation is done; its audit event is the record of truth)."""
    try:
        emit(registry, event)
    except Exception:
        log.exception("cannot queue host event %s", event.type)


def __getattr__(name: str) -> Any:
    """``CloudEvent`` (pydantic) is imported when first asked for: by the host API, for a plugin's event."""
    if name == "CloudEvent":
        from host.hooks.cloudevent import CloudEvent

        return CloudEvent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The CloudEvents 1.0 envelope of an event a plugin emits (the host API validates it here, where it enters).
The host's own events need no validation and are :class:`host.hooks.events.HostEvent`s."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from host.hooks.events import TYPE_PATTERN, _now


class CloudEvent(BaseModel):
    """One event, CloudEvents 1.0 structured JSON mode (``application/cloudevents+json``). ``id`` is the
    dedupe id: every delivery and retry of this event to any subscriber carries it (``webhook-id`` too)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: str = Field("1.0", pattern=r"^1\.0$")
    id: str = Field(default_factory=lambda: f"evt_{uuid.uuid4().hex}", pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    source: str = Field(..., min_length=1, max_length=256, pattern=r"^[!-~]+$",
                        description="'/host' for host events, '/plugins/<name>' for a plugin's")
    type: str = Field(..., pattern=TYPE_PATTERN)
    time: str = Field(default_factory=_now, max_length=64)
    datacontenttype: str = "application/json"
    data: dict[str, Any] | None = None

    def to_json(self) -> str:
        return self.model_dump_json()

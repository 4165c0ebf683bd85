"""A manifest's ``[hooks]`` (issue 13): the events a plugin subscribes to and the filters it provides.

Each subscription needs a matching ``events:subscribe:<pattern>`` in ``permissions.host_api`` (checked by
:func:`check_permissions`); filters run at host filter points with a deadline the host caps. Depends on
pydantic only.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# An event type or a pattern: "notes.note.created", "notes.note.*", "plugin.*", "*".
EVENT_PATTERN = r"^(\*|[a-z][a-z0-9-]{0,31}(\.[a-z][a-z0-9_-]{0,31}){0,4}(\.\*)?)$"
FILTER_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
FILTER_POINTS = ("request.before", "plugin.install")
EventPattern = Annotated[str, Field(pattern=EVENT_PATTERN)]


def covers(permission: str, pattern: str) -> bool:
    """Whether the granted pattern ``permission`` includes every type ``pattern`` can match."""
    if permission in ("*", pattern):
        return True
    if permission.endswith(".*"):
        stem = permission[:-1]  # "notes." : any type (or pattern) below it
        return pattern.startswith(stem)
    return False


class Filter(BaseModel):
    """One filter: called synchronously at ``point``; the host waits at most ``deadline_ms`` (capped by
    HOST_HOOK_FILTER_DEADLINE_MAX_MS) and then applies ``on_error``, as for any failure."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=FILTER_NAME, description="Becomes the path /.well-known/plugin-host/"
                                                                  "filters/<name> on the plugin's socket.")]
    point: Literal["request.before", "plugin.install"]
    priority: int = Field(100, ge=0, le=1000, description="Lower runs first; ties by plugin, then name.")
    deadline_ms: int = Field(200, ge=1, le=60000)
    on_error: Literal["allow", "reject"] = Field(
        "allow", description="What a failure, a timeout or an open circuit means: let the request through, or "
                             "refuse it (fail closed, for an auth filter).")


class Hooks(BaseModel):
    """``[hooks]``: ``events`` (type patterns to receive) and ``[[hooks.filters]]``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    events: tuple[EventPattern, ...] = Field((), max_length=64)
    filters: tuple[Filter, ...] = Field((), max_length=16)

    @field_validator("filters")
    @classmethod
    def _unique_names(cls, filters: tuple[Filter, ...]) -> tuple[Filter, ...]:
        names = [f.name for f in filters]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"filter names must be unique: {', '.join(dup)}")
        return filters


def check_permissions(hooks: Hooks, host_api: tuple[str, ...]) -> None:
    """ValueError naming the first subscription no ``events:subscribe:<pattern>`` grant covers."""
    granted = [p.removeprefix("events:subscribe:") for p in host_api if p.startswith("events:subscribe:")]
    for pattern in hooks.events:
        if not any(covers(g, pattern) for g in granted):
            raise ValueError(f"[hooks] events: {pattern!r} needs 'events:subscribe:{pattern}' in "
                             "permissions.host_api")

"""What the outer stage hands the inner one: the policy, the backend, and the layers already applied.

Imports no dataclasses (nor :mod:`sandbox_runner.policy` at run time): under bwrap the inner stage is an
interpreter of its own, and every module it loads is start-up time of every plugin.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox_runner.policy import Policy

Outcome = dict[str, Any]  # {"applied": bool, "detail": str}


class Handoff:
    # Layers the outer stage owns (namespaces, cgroup) are in ``outer``, with their outcome.
    __slots__ = ("backend", "outer", "policy")

    def __init__(self, policy: Policy, backend: str, outer: dict[str, Outcome] | None = None) -> None:
        self.policy = policy
        self.backend = backend  # "bwrap" or "syscalls"
        self.outer: dict[str, Outcome] = outer if outer is not None else {}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Handoff):
            return NotImplemented
        return (self.policy, self.backend, self.outer) == (other.policy, other.backend, other.outer)

    __hash__ = None  # type: ignore[assignment]

    def to_json(self) -> str:
        return json.dumps({"policy": json.loads(self.policy.to_json()), "backend": self.backend, "outer": self.outer})

    @classmethod
    def from_json(cls, text: str) -> Handoff:
        from sandbox_runner.policy import Policy

        raw = json.loads(text)
        return cls(Policy.from_json(json.dumps(raw["policy"])), raw["backend"], raw["outer"])

    @classmethod
    def view_from_json(cls, text: str) -> Handoff:
        """As :meth:`from_json`, with the policy as a :class:`PolicyView` (the inner stage's way)."""
        raw = json.loads(text)
        policy: Policy = PolicyView(raw["policy"])  # type: ignore[assignment]
        return cls(policy, raw["backend"], raw["outer"])


class PolicyView:
    """Read-only attributes of a serialised :class:`~sandbox_runner.policy.Policy` (``Policy.to_json``, which
    writes every field), the same names and values the dataclass has (lists as tuples), without importing
    dataclasses and inspect (~20 ms of every inner stage's start). A missing field is an AttributeError."""

    __slots__ = ("_raw",)
    _NESTED = frozenset({"network", "resources"})

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._raw[name]
        except KeyError:
            raise AttributeError(name) from None
        if name in self._NESTED:
            return PolicyView(value)
        if isinstance(value, list):
            return tuple(tuple(v) if isinstance(v, list) else v for v in value)
        return value


def outcome(applied: bool, detail: str) -> Outcome:
    return {"applied": applied, "detail": detail}

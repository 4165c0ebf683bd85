"""What the outer stage hands the inner one: the policy, the backend, and the layers already applied."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sandbox_runner.policy import Policy

Outcome = dict[str, Any]  # {"applied": bool, "detail": str}


@dataclass(frozen=True)
class Handoff:
    policy: Policy
    backend: str  # "bwrap" or "syscalls"
    # Layers the outer stage owns (namespaces, cgroup), with their outcome.
    outer: dict[str, Outcome] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"policy": json.loads(self.policy.to_json()), "backend": self.backend, "outer": self.outer})

    @classmethod
    def from_json(cls, text: str) -> Handoff:
        raw = json.loads(text)
        return cls(Policy.from_json(json.dumps(raw["policy"])), raw["backend"], raw["outer"])


def outcome(applied: bool, detail: str) -> Outcome:
    return {"applied": applied, "detail": detail}

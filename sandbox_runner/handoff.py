"""What the outer stage hands the inner one: the policy, the backend, the layers already applied, and the
seccomp filter it compiled.

Under bwrap it crosses as :mod:`marshal` data on a memfd: both ends are this same interpreter (the inner stage
runs :func:`sandbox_runner.paths.interpreter`), and json would cost the inner stage ~20 ms of imports (re,
enum). Imports no dataclasses, typing or json (nor :mod:`sandbox_runner.policy` at run time): every module the
inner stage loads is start-up time of every plugin.
"""

from __future__ import annotations

import marshal

from sandbox_runner.policy_file import PolicyView

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

    from sandbox_runner.layers.seccomp import Compiled
    from sandbox_runner.policy import Policy

    Outcome = dict[str, Any]  # {"applied": bool, "detail": str}
else:
    Outcome = dict


class Handoff:
    # Layers the outer stage owns (namespaces, cgroup) are in ``outer``, with their outcome. ``seccomp``: the
    # filter the outer stage compiled (None: the inner stage compiles it, e.g. when tests call it directly).
    __slots__ = ("backend", "outer", "policy", "seccomp")

    def __init__(self, policy: Policy, backend: str, outer: dict[str, Outcome] | None = None,
                 seccomp: Compiled | None = None) -> None:
        self.policy = policy
        self.backend = backend  # "bwrap" or "syscalls"
        self.outer: dict[str, Outcome] = outer if outer is not None else {}
        self.seccomp = seccomp

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Handoff):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def _fields(self) -> tuple[object, ...]:
        return _raw(self.policy), self.backend, self.outer, self.seccomp

    def to_bytes(self) -> bytes:
        return marshal.dumps({"policy": _raw(self.policy), "backend": self.backend, "outer": self.outer,
                              "seccomp": self.seccomp})

    @classmethod
    def from_bytes(cls, data: bytes) -> Handoff:
        """The inner stage's way: the policy as a :class:`PolicyView`."""
        # Our own outer stage wrote it, into a memfd only it and this process hold, before anything untrusted ran.
        raw = marshal.loads(data)  # noqa: S302
        policy: Policy = PolicyView(raw["policy"])  # type: ignore[assignment]
        return cls(policy, raw["backend"], raw["outer"], raw["seccomp"])


def _raw(policy: Policy) -> dict[str, Any]:
    """The policy as plain data (the dict a PolicyView reads; the dataclass through its own JSON form)."""
    if isinstance(policy, PolicyView):
        return policy.raw
    import json  # only for a Policy dataclass: the host's and the tests' side

    data: dict[str, Any] = json.loads(policy.to_json())
    return data


def outcome(applied: bool, detail: str) -> Outcome:
    return {"applied": applied, "detail": detail}

"""The admin app's one way to act: a call on the supervisor's admin socket, carrying the caller's credential.

Everything the supervisor refuses comes back as an AdminError carrying the problem's status and title.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from host import control
from host.errors import AdminError, HostError, SupervisorUnavailable
from host.layout import Layout

DEFAULT_TIMEOUT = 60.0


class AdminClient:
    """``call(op, credential, **args)``: what the UI and metrics blueprints use too (``register(app, backend)``)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.path: Path = layout.admin_socket

    def call(self, op: str, credential: str | None, *, timeout: float = DEFAULT_TIMEOUT, **args: Any
             ) -> dict[str, Any]:
        try:
            reply = control.call(self.path, op, timeout=timeout, credential=credential, **args)
        except SupervisorUnavailable as exc:
            raise AdminError(503, "Service Unavailable", "the supervisor is not answering; try again shortly",
                             retry_after=2) from exc
        except HostError as exc:
            raise AdminError(503, "Service Unavailable", f"the supervisor failed to answer: {exc}",
                             retry_after=2) from exc
        problem = reply.get("problem")
        if isinstance(problem, dict):
            extra = {k: v for k, v in problem.items() if k not in ("type", "title", "status", "detail")}
            raise AdminError(int(problem.get("status") or 500), str(problem.get("title") or "Error"),
                             str(problem.get("detail") or ""), **extra)
        return reply

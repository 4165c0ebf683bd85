"""Named exit codes and the error root of the runner, so the supervisor can tell set-up failures from crashes.

SandboxError
 ├── LayerUnavailable   a required layer cannot be enforced on this machine  → exit LAYER_UNAVAILABLE
 └── LayerFailed        a layer was available but applying it failed         → exit SETUP_FAILED
"""

from __future__ import annotations

# Exit codes of `python -m sandbox_runner`. The supervisor does not retry these forever:
# they mean "this plugin cannot start here", not "this plugin crashed".
SETUP_FAILED = 120
LAYER_UNAVAILABLE = 121
EXEC_FAILED = 122
USAGE = 2

SETUP_EXIT_CODES = frozenset({SETUP_FAILED, LAYER_UNAVAILABLE, EXEC_FAILED, USAGE})


class SandboxError(Exception):
    """Root of the runner's errors; ``layer`` names the layer at fault."""

    exit_code = SETUP_FAILED

    def __init__(self, layer: str, message: str) -> None:
        super().__init__(f"{layer}: {message}")
        self.layer = layer


class LayerUnavailable(SandboxError):
    exit_code = LAYER_UNAVAILABLE


class LayerFailed(SandboxError):
    exit_code = SETUP_FAILED

"""rlimits: per-process ceilings (files, file size, CPU seconds, processes per uid, no core dumps)."""

from __future__ import annotations

import resource

from sandbox_runner.errors import LayerFailed
from sandbox_runner.layers import Step

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (sandbox_runner.inner imports this)
if TYPE_CHECKING:
    from sandbox_runner.policy import Policy


def limits(policy: Policy, memory_by_cgroup: bool) -> list[tuple[str, int, int, int]]:
    """Pure: (name, resource, soft, hard) to set."""
    res = policy.resources
    out = [("CORE", resource.RLIMIT_CORE, 0, 0)]
    if res.open_files is not None:
        out.append(("NOFILE", resource.RLIMIT_NOFILE, res.open_files, res.open_files))
    if res.file_size_bytes is not None:
        out.append(("FSIZE", resource.RLIMIT_FSIZE, res.file_size_bytes, res.file_size_bytes))
    if res.cpu_seconds is not None:
        # hard = soft + 1: soft == hard sends SIGKILL straight away; this way SIGXCPU comes first.
        out.append(("CPU", resource.RLIMIT_CPU, res.cpu_seconds, res.cpu_seconds + 1))
    if res.processes is not None:
        # Per uid, and ignored for root: it only bites after the uid drop (which is why each plugin has
        # its own uid); the cgroup's pids.max is the tree-wide limit.
        out.append(("NPROC", resource.RLIMIT_NPROC, res.processes, res.processes))
    if res.memory_bytes is not None and not memory_by_cgroup:
        # Fallback only: RLIMIT_AS counts address space, not memory, and is per process. The cgroup limit
        # is the real one when available.
        out.append(("AS", resource.RLIMIT_AS, res.memory_bytes, res.memory_bytes))
    return out


def prepare(policy: Policy, memory_by_cgroup: bool) -> Step:
    table = limits(policy, memory_by_cgroup)

    def run() -> str:
        for name, which, soft, hard in table:
            try:
                resource.setrlimit(which, (soft, hard))
            except (OSError, ValueError) as exc:
                raise LayerFailed("rlimits", f"RLIMIT_{name}={soft}/{hard}: {exc}") from exc
        return " ".join(f"{name}={soft}" for name, _w, soft, _h in table)

    return Step("rlimits", run)

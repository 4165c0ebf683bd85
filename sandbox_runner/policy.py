"""The sandbox policy: the one contract between the host (which writes it) and the runner (which enforces it).

Stdlib only. The host's ``launch`` module is the only writer; it serialises a :class:`Policy` to JSON with
:func:`Policy.to_json` and passes the file to ``python -I -m sandbox_runner --policy FILE -- CMD...``.
Unknown keys are an error, so host and runner cannot silently disagree about what is enforced. The runner
itself reads the file with :mod:`sandbox_runner.policy_file` (same checks and defaults, no dataclasses).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from sandbox_runner.policy_file import ETC_FILES, LAYERS, check_etc_files

# LAYERS, ETC_FILES and the etc_files check live with the runner's own reading of the file (policy_file), which
# the runner stages import instead of this module.
__all__ = ["ETC_FILES", "LAYERS", "Backend", "Network", "Policy", "Resources"]

Backend = Literal["auto", "bwrap", "syscalls"]


@dataclass(frozen=True)
class Network:
    """Network access. ``enabled=False`` (the default) means: new empty netns + no AF_INET sockets."""

    enabled: bool = False
    # When enabled: TCP ports the plugin may connect to (Landlock); empty tuple = any port.
    connect_ports: tuple[int, ...] = ()
    # A network namespace the host prepared (an fd the runner inherited): the sandbox joins it instead of a
    # new empty one. It holds the host's egress listeners, so "enabled" no longer means the host's network.
    netns_fd: int | None = None
    # A hosts file shown at /etc/hosts instead of the host's (bwrap backend): granted names → the addresses
    # of their listeners inside the namespace, so plain sockets to a granted name work unchanged. Kept for
    # older policies; the same as ("/etc/hosts", hosts_file) in Policy.etc_files, which wins if both are set.
    hosts_file: str | None = None


@dataclass(frozen=True)
class Resources:
    """Resource ceilings; ``None`` means no limit from this layer."""

    memory_bytes: int | None = 256 * 1024 * 1024
    cpu_seconds: int | None = None  # RLIMIT_CPU per process (soft; hard = soft + 1 → SIGXCPU first)
    cpu_percent: int | None = None  # cgroup CPU quota, 100 = one core
    processes: int | None = 64  # RLIMIT_NPROC (per uid) and cgroup pids.max
    open_files: int | None = 1024  # RLIMIT_NOFILE
    file_size_bytes: int | None = 100 * 1024 * 1024  # RLIMIT_FSIZE → SIGXFSZ / EFBIG


@dataclass(frozen=True)
class Policy:
    """Everything the runner needs to confine one plugin process tree."""

    name: str  # plugin name, used in messages and cgroup names
    # Filesystem allow-list. Everything else is invisible (bwrap) and/or denied (Landlock).
    ro_paths: tuple[str, ...] = ()  # read + execute
    rw_paths: tuple[str, ...] = ()  # read + write + create (data dir, socket dir)
    env: dict[str, str] = field(default_factory=dict)  # the COMPLETE environment of CMD
    cwd: str = "/"
    uid: int | None = None  # root host: drop to this uid/gid; None: keep (non-root uses a user namespace)
    gid: int | None = None
    network: Network = Network()
    resources: Resources = Resources()
    backend: Backend = "auto"
    # cgroup directory names are created under this relative path inside each controller hierarchy
    # (below the runner's own cgroup). None: no cgroup layer.
    cgroup_name: str | None = None
    # Layers that MUST be enforced; if one is unavailable the runner exits with LAYER_UNAVAILABLE.
    required: tuple[str, ...] = LAYERS
    # File to which the runner writes one JSON line describing the layers actually applied (for doctor/UI),
    # as the command starts.
    report_path: str | None = None
    # File to which the runner writes, once the command has ended, how it ended: {"status": exit code or
    # -signal, "started": bool, "signals": forwarded signal names, "oom_kills": n, "forks_refused": n}.
    exit_path: str | None = None
    # A listening socket the host created (an fd the runner inherited): handed to CMD as fd 3 with
    # LISTEN_FDS=1 / LISTEN_PID (systemd socket activation), so the plugin never needs to create its own
    # socket file, nor write access to the directory the host connects through.
    listen_fd: int | None = None
    # (destination, source): host files the bwrap backend binds read-only at these /etc paths (only those in
    # ETC_FILES), e.g. a passwd and group file naming the plugin's uid. The sources must be regular files of
    # the runner's own user that no one else may write (checked before bwrap starts). The syscalls backend has
    # no mount namespace to show them in: there the real files stay denied (Landlock) and these are ignored.
    etc_files: tuple[tuple[str, str], ...] = ()
    # False (bwrap backend only): the runner does its set-up and then *becomes* bwrap (execve) instead of
    # staying resident as the sandbox's parent (a Python process per plugin, ~7.7 MiB PSS). Then the caller
    # owns what the resident runner did once the command ended: bwrap's exit status is the command's (128+N:
    # killed by signal N; bwrap itself killed by a signal: the runner was killed), nothing writes exit_path,
    # and the cgroups are the caller's to read (cgroup.counters) and remove (cgroup.cleanup). Signals sent
    # to the runner's pid reach bwrap, and SIGTERM or SIGKILL there end the whole sandbox at once
    # (--die-with-parent); send SIGTERM to the command itself for a graceful stop. The report at report_path
    # is written by the inner stage itself, through a file the runner opened. The syscalls backend ignores
    # this (no pid namespace ends its tree: it needs the resident subreaper).
    resident: bool = True
    # (hex of the BPF program, the layer report's detail): the seccomp filter the host compiled for this policy
    # (host.launch.write_policy, once per set of allowed socket families), so no runner start loads libseccomp
    # (~20 ms). Must be seccomp.compile_bpf(seccomp.allowed_families(policy)); None: the runner compiles it.
    seccomp_filter: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        check_etc_files(self.etc_files)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        raw: dict[str, Any] = json.loads(text)
        net = Network(**_tupled(raw.pop("network", {})))
        res = Resources(**raw.pop("resources", {}))
        etc = tuple((str(dest), str(src)) for dest, src in raw.pop("etc_files", ()))
        return cls(network=net, resources=res, etc_files=etc, **_tupled(raw))


def _tupled(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}

"""What a manifest grants, the layer that enforces each grant, and a 1–8 risk score with its breakdown
(in the spirit of Home Assistant's add-on rating, inverted: 1 = confined, 8 = can do a lot)."""

from __future__ import annotations

from dataclasses import dataclass

from manifests import Manifest


@dataclass(frozen=True)
class Grant:
    permission: str
    value: str
    enforced_by: str


@dataclass(frozen=True)
class Risk:
    score: int
    reasons: tuple[str, ...]


def grants(m: Manifest) -> list[Grant]:
    p = m.permissions
    r = p.resources
    net = p.network
    if not net.outbound:
        net_value = "none"
        net_layer = "network namespace (no interfaces) + seccomp (no IP/netlink/packet sockets) + Landlock (TCP)"
    else:
        net_value = "outbound, " + (f"TCP ports {', '.join(map(str, net.ports))}" if net.ports else "any port")
        net_layer = "Landlock TCP connect allow-list; bind denied" if net.ports else "host network; bind denied"
    fs = ["own data dir (read-write)", "own code + venv (read-only)"]
    fs += [f"{x} (read-only)" for x in p.filesystem.read] + [f"{x} (read-write)" for x in p.filesystem.write]
    return [
        Grant("network", net_value, net_layer),
        Grant("filesystem", "; ".join(fs), "mount namespace (bubblewrap) + Landlock allow-list + own uid, 0700 dirs"),
        Grant("environment", ", ".join(p.environment) or "none", "sandbox runner (clean environment)"),
        Grant("memory", f"{r.memory_mb} MiB", "cgroup memory.limit (RLIMIT_AS without cgroups)"),
        Grant("processes", str(r.processes), "cgroup pids.max + RLIMIT_NPROC (own uid)"),
        Grant("cpu", (f"{r.cpu_seconds} s/process" if r.cpu_seconds else "no time limit")
              + (f", {r.cpu_percent}% of a core" if r.cpu_percent else ""),
              "RLIMIT_CPU (SIGXCPU) + cgroup cpu quota"),
        Grant("open files", str(r.open_files), "RLIMIT_NOFILE"),
        Grant("file size", f"{r.file_size_mb} MiB", "RLIMIT_FSIZE (EFBIG)"),
        Grant("workers", f"{r.workers} x {r.threads} threads", "gunicorn arguments"),
        Grant("requests", f"{p.requests.timeout_seconds:g} s timeout, {p.requests.max_body_mb} MiB body",
              "host proxy (504 / 413)"),
        Grant("host API", ", ".join(p.host_api) or "none", "host API token scopes (not served yet: denied)"),
        Grant("kernel surface", "ptrace, mount, namespaces, bpf, keyctl, io_uring, perf, modules denied",
              "seccomp + no_new_privs + no capabilities"),
    ]


def assess(m: Manifest) -> Risk:
    p = m.permissions
    score = 1
    reasons: list[str] = []

    def add(points: int, why: str) -> None:
        nonlocal score
        score += points
        reasons.append(f"+{points} {why}")

    if p.network.outbound:
        add(2 if p.network.ports else 3, "outbound network" + (" (listed ports)" if p.network.ports else " (any port)"))
    if p.filesystem.write:
        add(2, f"writes outside its data dir: {', '.join(p.filesystem.write)}")
    if p.filesystem.read:
        add(1, f"reads host paths: {', '.join(p.filesystem.read)}")
    if p.environment:
        add(1, f"receives host environment: {', '.join(p.environment)}")
    if any(s.endswith(":write") for s in p.host_api):
        add(1, "may change host state through the host API")
    r = p.resources
    if r.memory_mb > 1024 or r.processes > 256 or r.workers * r.threads > 64:
        add(1, "large resource allowance")
    if m.requirements:
        reasons.append(f"+0 {len(m.requirements)} third-party package(s), installed confined")
    return Risk(min(score, 8), tuple(reasons) or ("+0 nothing beyond its own data dir",))

"""What a manifest grants, the layer that enforces each grant, and a 1–8 risk score with its breakdown
(in the spirit of Home Assistant's add-on rating, inverted: 1 = confined, 8 = can do a lot)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from manifests import Destination, Manifest


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
    egress_layer = ("own netns + host egress point (refuses loopback, link-local, private, this host unless "
                    "listed) + Landlock TCP")
    extra: list[Grant] = []
    if not net.enabled:
        net_value = "none"
        net_layer = "network namespace (no interfaces) + seccomp (no IP/netlink/packet sockets) + Landlock (TCP)"
    elif net.any_public:
        net_value = "public internet, " + (f"TCP ports {', '.join(map(str, net.ports))}" if net.ports else "any port")
        net_layer = egress_layer
    else:
        net_value = f"{len(net.destinations)} destination(s) only"
        net_layer = egress_layer
        extra = [Grant("  egress", f"{d} (risk: {destination_risk(d)})", "host egress point") for d in net.destinations]
    fs = ["own data dir (read-write)", "own code + venv (read-only)"]
    fs += [f"{x} (read-only)" for x in p.filesystem.read] + [f"{x} (read-write)" for x in p.filesystem.write]
    return [
        Grant("network", net_value, net_layer),
        *extra,
        Grant("filesystem", "; ".join(fs), "mount namespace (bubblewrap) + Landlock allow-list + own uid, 0700 dirs"),
        Grant("environment", ", ".join(p.environment) or "none", "sandbox runner (clean environment)"),
        Grant("memory", f"{r.memory_mb} MiB", "cgroup memory.limit (RLIMIT_AS without cgroups)"),
        Grant("processes", str(r.processes), "cgroup pids.max + RLIMIT_NPROC (own uid)"),
        Grant("cpu", (f"{r.cpu_seconds} s/process" if r.cpu_seconds else "no time limit")
              + (f", {r.cpu_percent}% of a core" if r.cpu_percent else ""),
              "RLIMIT_CPU (SIGXCPU) + cgroup cpu quota"),
        Grant("open files", str(r.open_files), "RLIMIT_NOFILE"),
        Grant("file size", f"{r.file_size_mb} MiB", "RLIMIT_FSIZE (EFBIG)"),
        Grant("disk", f"{r.disk_mb} MiB, {r.files} files (data dir and TMPDIR)",
              "ext4 image per plugin, loop-mounted on its data dir (ENOSPC)"),
        Grant("workers", f"{r.workers} x {r.threads} threads", "gunicorn arguments"),
        Grant("requests", f"{p.requests.timeout_seconds:g} s timeout, {p.requests.max_body_mb} MiB body",
              "host proxy (504 / 413)"),
        Grant("websockets", f"{p.requests.max_websockets} open at once, closed after "
              f"{p.requests.websocket_idle_seconds:g} s idle", "host proxy (503 / close)"),
        Grant("host API", (", ".join(p.host_api) + f"; KV {p.kv.max_keys} keys, {p.kv.max_kb} KiB") if p.host_api
              else "none", "its own socket + per-start token; permission checked per call (403), rate-limited"),
        Grant("hooks", _hooks_value(m), "host: signed calls to its socket; filters with a deadline"),
        Grant("kernel surface", "ptrace, mount, namespaces, bpf, keyctl, io_uring, perf, modules denied",
              "seccomp + no_new_privs + no capabilities"),
    ]


def _hooks_value(m: Manifest) -> str:
    """Events it receives and filters it runs, in words (a filter is power over the other plugins' traffic)."""
    parts = [f"events {', '.join(m.hooks.events)}"] if m.hooks.events else []
    parts += [f"filter {f.name} at {f.point} ({f.deadline_ms} ms, on_error={f.on_error})" for f in m.hooks.filters]
    return "; ".join(parts) or "none"


def destination_risk(d: Destination) -> str:
    """high: an address on this machine or a private network (databases, admin ports, the host itself)."""
    if not d.ip:
        return "medium: any subdomain" if d.wildcard else "low"
    addr = ipaddress.ip_address(d.host)
    return "low" if addr.is_global else "high"


def assess(m: Manifest, unsigned: bool = False) -> Risk:
    """``unsigned``: the installed bundle carries no signature (HOST_SIGNATURES=warn lets it in)."""
    p = m.permissions
    score = 1
    reasons: list[str] = []

    def add(points: int, why: str) -> None:
        nonlocal score
        score += points
        reasons.append(f"+{points} {why}")

    net = p.network
    if net.any_public:
        add(2 if net.ports else 3, "public internet" + (" (listed ports)" if net.ports else " (any port)"))
    elif net.enabled:
        high = [str(d) for d in net.destinations if destination_risk(d) == "high"]
        if high:
            add(3, f"reaches this machine or a private network: {', '.join(high)}")
        else:
            add(1, f"reaches {len(net.destinations)} listed destination(s)")
    if p.filesystem.write:
        add(2, f"writes outside its data dir: {', '.join(p.filesystem.write)}")
    if p.filesystem.read:
        add(1, f"reads host paths: {', '.join(p.filesystem.read)}")
    if p.environment:
        add(1, f"receives host environment: {', '.join(p.environment)}")
    if any(s.endswith(":write") or s.startswith("events:emit:") for s in p.host_api):
        add(1, "may change host state through the host API")
    if "users:read" in p.host_api:
        add(1, "learns who the signed-in users are (users:read)")
    points = {f.point for f in m.hooks.filters}
    if "request.before" in points:
        add(2, "request.before filter: sees every request to the other plugins (headers and cookies) and may "
               "refuse it or add headers")
    if "plugin.install" in points:
        add(1, "plugin.install filter: sees every manifest installed and may veto the install")
    r = p.resources
    if r.memory_mb > 1024 or r.processes > 256 or r.workers * r.threads > 64 or r.disk_mb > 8192:
        add(1, "large resource allowance")
    if unsigned:
        add(1, "unsigned bundle: nothing says who published it")
    if m.requirements:
        reasons.append(f"+0 {len(m.requirements)} third-party package(s), installed confined")
    return Risk(min(score, 8), tuple(reasons) or ("+0 nothing beyond its own data dir",))

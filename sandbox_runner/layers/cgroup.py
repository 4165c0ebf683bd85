"""cgroups (v2 if it has the controllers, else v1): create per-plugin groups, set limits, join, kill, remove.

The outer runner stage imports this: no dataclasses, re, contextlib or enum (each is start-up time of every
plugin; see sandbox_runner.inner).
"""

from __future__ import annotations

import os
import time

from sandbox_runner.errors import LayerFailed, LayerUnavailable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import signal

    from sandbox_runner.policy import Policy
else:  # the C module that signal.py wraps in enums (enum: ~14 ms of every start)
    import _signal as signal

_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@-")
CPU_PERIOD_US = 100_000


def valid_name(name: str) -> bool:
    """``[A-Za-z0-9_.@-]+`` components joined by single slashes, none of them ``..``."""
    parts = name.split("/")
    return all(p and p != ".." and set(p) <= _NAME_CHARS for p in parts)


class Hierarchy:
    __slots__ = ("controllers", "mount", "own", "version")

    def __init__(self, version: int, mount: str, own: str, controllers: frozenset[str]) -> None:
        self.version = version
        self.mount = mount  # where it is mounted
        self.own = own  # this process's cgroup inside it, "/..."
        self.controllers = controllers

    def path(self, name: str) -> str:
        return os.path.join(self.mount, self.own.lstrip("/"), name)


class Groups:
    """The directories one plugin's tree lives in (one per v1 controller, or one v2 group)."""

    __slots__ = ("detail", "dirs", "version")

    def __init__(self, version: int, dirs: tuple[str, ...], detail: str) -> None:
        self.version = version
        self.dirs = dirs
        self.detail = detail

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Groups):
            return NotImplemented
        return (self.version, self.dirs, self.detail) == (other.version, other.dirs, other.detail)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Groups({self.version!r}, {self.dirs!r}, {self.detail!r})"


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup mount, from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _src, opts = [*right.split(), "", ""][:3]
            if fstype in ("cgroup", "cgroup2"):
                out.append((left.split()[4], fstype, set(opts.split(","))))
    return out


def _own() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                own[c] = path
    return own


def hierarchies(wanted: frozenset[str]) -> list[Hierarchy]:
    """The hierarchies that carry ``wanted`` controllers: one v2 group if it has them all, else v1 ones."""
    mounts, own = _mounts(), _own()
    for mount, fstype, _opts in mounts:
        if fstype == "cgroup2" and "" in own:
            try:
                with open(os.path.join(mount, own[""].lstrip("/"), "cgroup.controllers")) as f:
                    have = frozenset(f.read().split())
            except OSError:
                continue
            if wanted <= have:
                return [Hierarchy(2, mount, own[""], wanted)]
    found = []
    for mount, fstype, opts in mounts:
        ctrls = frozenset(opts & wanted)
        if fstype == "cgroup" and ctrls:
            own_path = next((own[c] for c in ctrls if c in own), None)
            if own_path is not None:
                found.append(Hierarchy(1, mount, own_path, ctrls))
    return found


def wanted_controllers(policy: Policy) -> frozenset[str]:
    res = policy.resources
    # pids is always wanted: it is also how the whole tree is found and killed.
    wanted = {"pids"}
    if res.memory_bytes is not None:
        wanted.add("memory")
    if res.cpu_percent is not None:
        wanted.add("cpu")
    return frozenset(wanted)


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _limits(h: Hierarchy, policy: Policy) -> list[tuple[str, str]]:
    """(file, value) pairs, in the order they must be written."""
    res, out = policy.resources, []
    if "pids" in h.controllers:
        out.append(("pids.max", str(res.processes) if res.processes else "max"))
    if "memory" in h.controllers and res.memory_bytes is not None:
        mem = str(res.memory_bytes)
        if h.version == 2:
            out += [("memory.max", mem), ("memory.swap.max?", "0")]
        else:
            # memsw must stay >= the memory limit: open it up, set memory, then close it to the same value.
            out += [
                ("memory.memsw.limit_in_bytes?", "-1"),
                ("memory.limit_in_bytes", mem),
                ("memory.memsw.limit_in_bytes?", mem),
            ]
    if "cpu" in h.controllers and res.cpu_percent is not None:
        quota = res.cpu_percent * CPU_PERIOD_US // 100
        if h.version == 2:
            out.append(("cpu.max", f"{quota} {CPU_PERIOD_US}"))
        else:
            out += [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", str(quota))]
    return out


def create(policy: Policy) -> Groups:
    """Create (or reuse and empty) the plugin's groups and write its limits. Runs in the outer stage."""
    name = policy.cgroup_name
    if name is None:
        raise LayerUnavailable("cgroup", "policy.cgroup_name is not set")
    if not valid_name(name):
        raise LayerFailed("cgroup", f"invalid cgroup_name {name!r}")
    wanted = wanted_controllers(policy)
    found = hierarchies(wanted)
    missing = wanted - frozenset().union(*(h.controllers for h in found))
    if missing:
        raise LayerUnavailable("cgroup", f"no writable hierarchy with {', '.join(sorted(missing))}")
    dirs = []
    for h in found:
        path = h.path(name)
        if os.path.isdir(path):
            # Left by a runner that was killed: its processes go, and a new group starts the kernel's
            # counters (OOM kills, refused forks) at zero, so they speak of this instance only.
            remove(Groups(h.version, (path,), ""))
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise LayerUnavailable("cgroup", f"cannot create {path}: {exc.strerror}") from exc
        dirs.append(path)
    kill_all(tuple(dirs))  # anything that slipped into a group we could not remove
    try:
        for h, path in zip(found, dirs, strict=True):
            for fname, value in _limits(h, policy):
                optional = fname.endswith("?")
                fpath = os.path.join(path, fname.rstrip("?"))
                if optional and not os.path.exists(fpath):
                    continue
                _write(fpath, value)
    except OSError as exc:
        raise LayerFailed("cgroup", f"cannot set limit: {exc}") from exc
    return Groups(found[0].version, tuple(dirs), f"v{found[0].version} {', '.join(dirs)}")


def join(groups: Groups) -> None:
    """Move the calling process into every group (before exec, so all its descendants are born inside)."""
    for d in groups.dirs:
        _write(os.path.join(d, "cgroup.procs"), "0")


def members(directory: str) -> list[int]:
    try:
        with open(os.path.join(directory, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def kill_all(dirs: tuple[str, ...], timeout: float = 2.0) -> None:
    """SIGKILL every process in the groups until they are empty (a forking tree needs several rounds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = {p for d in dirs for p in members(d)}
        if not pids:
            return
        for pid in pids:
            _kill_member(pid, dirs)
        time.sleep(0.005)


def _kill_member(pid: int, dirs: tuple[str, ...]) -> None:
    # pidfd first, then re-check membership: a pid read from cgroup.procs may already be reused.
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if any(pid in members(d) for d in dirs):
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        os.close(fd)


def remove(groups: Groups) -> None:
    kill_all(groups.dirs)
    for d in groups.dirs:
        for _ in range(100):  # rmdir is EBUSY until the killed tasks are reaped
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.005)


def find(cgroup_name: str) -> Groups:
    """The existing groups named ``cgroup_name`` below the caller's own cgroup (which is the runner's when
    the runner is its child), in every hierarchy the runner may have used; none is an empty ``dirs``."""
    found = hierarchies(frozenset({"pids", "memory", "cpu"}))
    dirs = tuple(h.path(cgroup_name) for h in found if os.path.isdir(h.path(cgroup_name)))
    return Groups(found[0].version if found else 1, dirs, "")


def cleanup(cgroup_name: str) -> None:
    """Kill whatever is left in a plugin's groups and remove them; idempotent. For the host to call after
    the runner died (e.g. SIGKILLed with the syscalls backend, where no pid namespace ends the tree)."""
    remove(find(cgroup_name))


def leftovers(prefix: str) -> list[str]:
    """Names of the groups starting with ``prefix`` below the caller's cgroup (what killed runners left)."""
    names: set[str] = set()
    for h in hierarchies(frozenset({"pids", "memory", "cpu"})):
        base = h.path("")
        try:
            names.update(d for d in os.listdir(base) if d.startswith(prefix) and os.path.isdir(os.path.join(base, d)))
        except OSError:
            pass
    return sorted(names)


# (file, key) of the kernel's event counters, per controller file; v1 and v2 spell them differently.
_OOM_KILLS = (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill"))
_FORKS_REFUSED = (("pids.events", "max"),)


def _counter(dirs: tuple[str, ...], sources: tuple[tuple[str, str], ...]) -> int:
    total = 0
    for d in dirs:
        for fname, key in sources:
            try:
                with open(os.path.join(d, fname)) as f:
                    for line in f:
                        k, _, v = line.partition(" ")
                        if k == key and v.strip().isdigit():
                            total += int(v)
            except OSError:
                continue
    return total


def counters(groups: Groups) -> dict[str, int]:
    """What the kernel did to the tree inside its limits: processes the OOM killer ended (memory.events or
    v1 memory.oom_control ``oom_kill``), forks refused at pids.max (pids.events ``max``). Read them before
    :func:`remove`; the plugin cannot write these files, so they are evidence it cannot forge."""
    return {"oom_kills": _counter(groups.dirs, _OOM_KILLS), "forks_refused": _counter(groups.dirs, _FORKS_REFUSED)}


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cpu_ticks(pid: int) -> int:
    """utime + stime (+ the reaped children's) of one process, in clock ticks; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0
    # after the command: state ppid ... utime(14) stime(15) cutime(16) cstime(17), counted from field 3
    return sum(int(x) for x in fields[11:15])


def usage(groups: Groups) -> dict[str, float]:
    """What the tree in ``groups`` uses now: ``memory_bytes`` (v2 memory.current, v1 memory.usage_in_bytes),
    ``processes`` (pids.current) and ``cpu_seconds`` (v2 cpu.stat usage_usec; v1 cpuacct.usage when the
    cpuacct controller shares a group, else the CPU time its live processes and their reaped children
    used). A key is missing when no group tells it."""
    out: dict[str, float] = {}
    for d in groups.dirs:
        for fname, key, scale in (("memory.current", "memory_bytes", 1.0), ("memory.usage_in_bytes", "memory_bytes",
                                  1.0), ("pids.current", "processes", 1.0), ("cpuacct.usage", "cpu_seconds", 1e-9)):
            value = _read_int(os.path.join(d, fname))
            if value is not None:
                out[key] = value * scale
        try:
            with open(os.path.join(d, "cpu.stat")) as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if k == "usage_usec" and v.strip().isdigit():
                        out["cpu_seconds"] = int(v) / 1e6
        except OSError:
            pass
    if "cpu_seconds" not in out and groups.dirs:
        pids = {p for d in groups.dirs for p in members(d)}
        out["cpu_seconds"] = sum(_cpu_ticks(p) for p in pids) / os.sysconf("SC_CLK_TCK")
    return out

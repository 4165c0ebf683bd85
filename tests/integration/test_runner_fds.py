"""The runner hands the command only fds 0-2 (and the listening socket at 3): nothing it inherited leaks through."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.integration import test_runner_support as support
from tests.integration.test_runner_support import Jail, attack_python

jail = support.jail  # the fixture, parametrized over both backends

# /proc is not in the syscalls backend's view, so probe every fd number instead of listing /proc/self/fd.
LIST_FDS = r"""
import json, os, stat
fds = {}
for fd in range(4096):
    try:
        fds[fd] = stat.S_IFMT(os.fstat(fd).st_mode)
    except OSError:
        pass
print(json.dumps({"fds": sorted(fds), "sock3": stat.S_ISSOCK(fds.get(3, 0))}))
"""
LEAKED = 100  # where the "leaked" host file sits in the runner; the listener arrives at 101
LISTENER = 101


@contextlib.contextmanager
def at_fd(fd: int, target: int) -> Iterator[int]:
    """``fd`` duplicated (inheritable) onto ``target`` in this test process, for pass_fds."""
    os.dup2(fd, target, inheritable=True)
    try:
        yield target
    finally:
        os.close(target)


def run_listing(jail: Jail, pass_fds: tuple[int, ...]) -> dict[str, object]:
    argv = jail.argv(attack_python(), "-I", "-c", LIST_FDS)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, pass_fds=pass_fds,
                          start_new_session=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode} stderr={proc.stderr!r}"
    return dict(json.loads(lines[-1]))


@pytest.mark.parametrize("with_listener", [False, True], ids=["no-listener", "listener"])
def test_cant_use_a_descriptor_the_runner_inherited(jail: Jail, with_listener: bool) -> None:
    secret = jail.outside / "host-secret"
    secret.write_text("root-only")
    secret.chmod(0o600)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(jail.root / "l.sock"))
    listener.listen(1)
    fd = os.open(secret, os.O_RDONLY)
    try:
        with at_fd(fd, LEAKED), at_fd(listener.fileno(), LISTENER):
            if with_listener:
                jail.with_(listen_fd=LISTENER)
            got = run_listing(jail, (LEAKED, LISTENER))
    finally:
        os.close(fd)
        listener.close()
    expected = {"fds": [0, 1, 2, 3], "sock3": True} if with_listener else {"fds": [0, 1, 2], "sock3": False}
    assert got == expected

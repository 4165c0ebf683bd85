"""The CLI's contract, end to end and without installing anything: exit 0 ok, 1 operation failed, 2 bad input;
one clear line per failure; a busy port, a misspelt home and a non-root user fail fast and say why."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.layout import Layout
from host.registry import Registry
from tests.integration.harness import FIXTURES, HOST, free_port, run_host


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """An existing, empty home (a registry and nothing installed)."""
    d = Path(tempfile.mkdtemp(prefix="ph-cli-", dir="/tmp"))
    layout = Layout(d / "h")
    layout.ensure()
    Registry(layout.registry).close()
    try:
        yield layout.home
    finally:
        shutil.rmtree(d, ignore_errors=True)


def errors(r: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in r.stderr, r.stderr
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


def test_serve_on_a_busy_port_exits_1_with_one_line(home: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        r = run_host(home, "serve", "--bind", f"127.0.0.1:{port}", timeout=60)
    assert r.returncode == 1
    assert r.stdout == ""
    assert errors(r) == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]


@pytest.mark.parametrize("args", [("list",), ("status", "x"), ("enable", "x"), ("logs", "x"),
                                  ("serve", "--bind", "127.0.0.1:1")])
def test_a_home_that_does_not_exist_is_bad_input_and_is_not_created(args: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory(prefix="ph-cli-", dir="/tmp") as d:
        missing = Path(d) / "misspelt"
        r = run_host(missing, *args, timeout=60)
        assert r.returncode == 2, r.stderr
        assert errors(r) == [f"error: no plugin host at {missing} (check --home / HOST_HOME; `host install` creates "
                             "one, `host serve --create` an empty one)"]
        assert not missing.exists()


@pytest.mark.parametrize(("args", "code", "line"), [
    (("list",), 0, None),
    (("list", "--json"), 0, None),
    (("enable", "nope"), 2, "error: nope: is not installed (see `host list`)"),
    (("status", "nope", "--json"), 2, "error: nope: is not installed (see `host list`)"),
    (("restart", "nope"), 2, "error: nope: is not installed (see `host list`)"),
    (("install", "/nonexistent", "--yes"), 2, "error: /nonexistent: not a plugin directory"),
    (("install", str(FIXTURES / "bad_manifest"), "--yes"), 2,
     f"error: {FIXTURES / 'bad_manifest' / 'plugin.toml'}: name: must match ^[a-z][a-z0-9-]{{0,31}}$"),
    (("frobnicate",), 2, None),
    (("list", "--bogus"), 2, None),
])
def test_exit_codes(home: Path, args: tuple[str, ...], code: int, line: str | None) -> None:
    r = run_host(home, *args, timeout=60)
    assert r.returncode == code, r.stderr
    if line is not None:
        assert [ln for ln in errors(r) if ln.startswith("error:")] == [line]


def test_an_operation_that_fails_exits_1(home: Path) -> None:
    r = run_host(home, "install", str(FIXTURES / "steady"), "--yes", "--no-enable", timeout=600)
    assert r.returncode == 0, r.stderr
    r = run_host(home, "restart", "steady", timeout=60)  # nothing serves this home
    assert r.returncode == 1
    assert errors(r)[-1].startswith("error: no supervisor is running for this home")


@pytest.mark.parametrize("path", [FIXTURES / "bad_manifest", FIXTURES / "unknown_entrypoint"])
def test_check_exits_2_for_an_invalid_plugin_and_0_for_a_valid_one(path: Path) -> None:
    r = subprocess.run([*HOST, "check", str(path)], capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 2 and len(errors(r)) == 1
    ok = subprocess.run([*HOST, "check", str(FIXTURES / "steady")], capture_output=True, text=True, check=False,
                        timeout=60)
    assert ok.returncode == 0
    assert "entrypoint:  module 'app' is app.py and defines 'app'; not imported:" in ok.stdout


def _unshare() -> list[str]:
    """Run as a non-root uid (a user namespace without a mapping: getuid() is 65534) while keeping access
    to the interpreter, which may live under /root."""
    path = shutil.which("unshare")
    if path is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to run a command as a non-root uid")
    probe = subprocess.run([path, "-U", "id", "-u"], capture_output=True, text=True, check=False)
    if probe.returncode != 0 or probe.stdout.strip() == "0":
        pytest.skip(f"user namespaces unavailable: {probe.stderr.strip()}")
    return [path, "-U"]


def test_a_non_root_user_gets_one_line_not_a_traceback(home: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ph-cli-", dir="/tmp") as d:
        theirs = Path(d) / "h"
        Layout(theirs).ensure()
        Registry(Layout(theirs).registry).close()
        for p in (theirs, *theirs.rglob("*")):
            os.chown(p, 65533, 65533)  # someone else's home
        r = subprocess.run([*_unshare(), *HOST, "--home", str(theirs), "list"], capture_output=True, text=True,
                           check=False, timeout=60)
        assert r.returncode == 1
        (line,) = errors(r)
        assert line.startswith(f"error: permission denied: {theirs}")
        assert "this runs as uid 65534, not root: use a home this user owns (--home DIR)" in line


def test_a_non_root_host_says_what_it_cannot_enforce() -> None:
    with tempfile.TemporaryDirectory(prefix="ph-cli-", dir="/tmp") as d:
        os.chmod(d, 0o777)
        argv = [*_unshare(), *HOST, "--home", f"{d}/h", "serve", "--create", "--bind", f"127.0.0.1:{free_port()}"]
        try:  # it serves until stopped: give it long enough to start, then SIGKILL takes everything down
            out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False).stderr
        except subprocess.TimeoutExpired as exc:
            out = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        assert "Traceback" not in out
        assert "not running as root (uid 65534): plugins run without their own uid, cgroup limits and disk " \
               "quota" in out, out

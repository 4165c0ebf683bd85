"""`host install` / `uninstall` / `list` with real venvs and pip, including every failure path."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BUNDLED, FIXTURES, HOST, ServedHost, run_host, wait_for


def snapshot(home: Path) -> tuple[set[str], list[tuple[str, ...]]]:
    """Everything a failed install must leave untouched: the file tree (minus logs) and registry rows."""
    files = {str(p.relative_to(home)) for p in home.rglob("*")
             if not {"logs", "cache", "__pycache__"} & set(p.relative_to(home).parts) and p.name != ".lock" and
             not p.name.startswith("registry.db")}
    rows: list[tuple[str, ...]] = []
    db = home / "registry.db"
    if db.exists():
        with sqlite3.connect(db) as c:
            rows = [tuple(r) for r in c.execute("SELECT name, version, install_id FROM plugins ORDER BY name")]
    return files, rows


def test_install_then_list_then_uninstall(home: Path) -> None:
    r = run_host(home, "install", str(BUNDLED / "example_plugin"), "--yes")
    assert r.returncode == 0, r.stderr
    for step in ("resolving", "creating venv", "installing 2 packages", "checking entrypoint", "registering"):
        assert step in r.stderr
    listed = json.loads(run_host(home, "list", "--json", check=True).stdout)
    assert [(p["name"], p["version"], p["enabled"]) for p in listed] == [("example", "1.0.0", True)]
    venv_python = next((home / "plugins" / "example").glob("*/venv/bin/python"))
    out = subprocess.run([str(venv_python), "-c", "import flask, gunicorn, plugin_base; print('ok')"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"

    r = run_host(home, "uninstall", "example")
    assert r.returncode == 0, r.stderr
    assert "uninstalled example: nothing of it is left but its events in the audit log" in r.stderr
    assert json.loads(run_host(home, "list", "--json", check=True).stdout) == []
    assert not (home / "plugins" / "example").exists()
    assert not (home / "logs" / "example").exists()  # its install log too
    assert not list((home / "run").glob(".example.*")) and not (home / "run" / "example").exists()


def test_requirements_go_into_the_plugins_own_venv(home: Path) -> None:
    run_host(home, "install", str(FIXTURES / "echo"), "--yes", check=True)
    venv_python = next((home / "plugins" / "echo").glob("*/venv/bin/python"))
    out = subprocess.run([str(venv_python), "-c", "import six; print(six.__version__)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1.16.0"


def test_bad_manifest_is_one_clear_line_and_changes_nothing(home: Path) -> None:
    before = snapshot(home) if home.exists() else (set(), [])
    r = run_host(home, "install", str(FIXTURES / "bad_manifest"), "--yes")
    assert r.returncode == 2  # bad input, as from `host check`
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1
    assert "plugin.toml: name: must match ^[a-z][a-z0-9-]{0,31}$" in err[0]
    assert "Traceback" not in r.stderr
    after = snapshot(home)
    assert after[1] == before[1] == []
    assert not any(p.startswith("plugins/") for p in after[0])


def test_check_rejects_bad_manifest_with_usage_exit_code(home: Path) -> None:
    r = subprocess.run([*HOST, "check", str(FIXTURES / "bad_manifest")], capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "name: must match" in r.stderr


def test_failing_pip_install_keeps_log_and_changes_nothing(home: Path) -> None:
    run_host(home, "install", str(BUNDLED / "example_plugin"), "--yes", check=True)
    before = snapshot(home)
    r = run_host(home, "install", str(FIXTURES / "bad_requirement"), "--yes")
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: bad-requirement: install failed while installing packages:")
    assert "this-package-does-not-exist-plugin-host" in line
    log = Path(line.rsplit("full log: ", 1)[1].rstrip(")"))
    assert log.exists() and "this-package-does-not-exist-plugin-host" in log.read_text()
    assert snapshot(home) == before


def test_unknown_entrypoint_is_bad_input_found_before_anything_is_built(home: Path) -> None:
    r = run_host(home, "install", str(FIXTURES / "unknown_entrypoint"), "--yes")
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert err == [f"error: {FIXTURES / 'unknown_entrypoint' / 'plugin.toml'}: entrypoint: app.py defines no "
                   "'application' at module level"]
    assert "creating venv" not in r.stderr
    assert snapshot(home)[1] == []
    assert not (home / "plugins" / "unknown-entrypoint").exists()
    checked = subprocess.run([*HOST, "check", str(FIXTURES / "unknown_entrypoint")], capture_output=True, text=True,
                             check=False)
    assert checked.returncode == 2 and "defines no 'application'" in checked.stderr


def test_running_out_of_memory_at_install_says_so(home: Path) -> None:
    """The confined import check was OOM-killed: the cgroup's count says so, where the output says nothing."""
    r = run_host(home, "install", str(FIXTURES / "hog_on_import"), "--yes")
    assert r.returncode == 1
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: hog-on-import: install failed while checking the entrypoint: out of memory: the "
                           "kernel's OOM killer ended a process at the memory limit (memory_mb=64); killed by SIGKILL")
    assert "failed with no output" not in line
    assert snapshot(home)[1] == []
    assert not list((home / "run").glob(".hog-on-import.*"))  # nor its exit report


def test_crash_at_import_fails_the_install(home: Path) -> None:
    r = run_host(home, "install", str(FIXTURES / "crash_on_import"), "--yes")
    assert r.returncode == 1
    assert "RuntimeError: boom at import" in r.stderr
    assert snapshot(home)[1] == []
    # a Flask-only plugin: its venv was kept in the partial install (host.venv_template), and went with it
    assert not (home / "venvs").exists()


def test_reinstalling_the_same_version_is_a_noop_unless_forced(home: Path) -> None:
    run_host(home, "install", str(BUNDLED / "example_plugin"), "--yes", check=True)
    first = snapshot(home)
    r = run_host(home, "install", str(BUNDLED / "example_plugin"), "--yes")
    assert r.returncode == 0
    assert "already installed" in r.stderr
    assert snapshot(home) == first
    r = run_host(home, "install", str(BUNDLED / "example_plugin"), "--yes", "--force")
    assert r.returncode == 0, r.stderr
    assert snapshot(home)[1][0][2] != first[1][0][2]  # a new install id went live


def test_install_without_yes_and_without_a_terminal_refuses(home: Path) -> None:
    r = run_host(home, "install", str(BUNDLED / "example_plugin"))
    assert r.returncode == 2
    assert "pass --grant FILE (or --yes)" in r.stderr
    assert snapshot(home)[1] == []


@contextlib.contextmanager
def tarpit_index() -> Iterator[str]:
    """A package index on 127.0.0.1 that accepts connections and never answers: an install asking it for
    packages waits there, its venv made, for as long as the test needs (installs from a warm wheel cache are
    over in well under a second otherwise)."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while len(held) < 64:
            try:
                held.append(lsock.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{lsock.getsockname()[1]}/simple"
    finally:
        lsock.close()
        for conn in held:
            conn.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_install_interrupted_midway_leaves_nothing_behind(home: Path, sig: int) -> None:
    run_host(home, "install", str(BUNDLED / "example_plugin"), "--yes", check=True)
    before = snapshot(home)
    with tarpit_index() as index:
        env = {**os.environ, "HOST_PIP_ARGS": f"--index-url {index}", "PIP_FIND_LINKS": ""}
        proc = subprocess.Popen([*HOST, "--home", str(home), "install", str(FIXTURES / "echo"), "--yes"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        # interrupt while the installer waits for the index: the venv exists, its packages are not in yet
        wait_for(lambda: list((home / "plugins").glob("echo/*/venv/bin/python")), 60, what="venv creation")
        time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()[0].decode()
        os.killpg(proc.pid, sig)
        out = proc.communicate(timeout=30)[0].decode()
    if sig == signal.SIGINT:
        assert proc.returncode != 0
        assert "interrupted; nothing was changed" in out or "install failed" in out
    # the next command sweeps whatever a kill -9 left (under the home lock)
    run_host(home, "install", str(BUNDLED / "example_plugin"), "--yes", check=True)  # a no-op + sweep
    assert snapshot(home) == before


def mounted(point: Path) -> bool:
    """Whether something is mounted on ``point`` in this (the host's) mount namespace."""
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        return any(line.split()[4] == str(point) for line in fh)


@pytest.mark.skipif(os.geteuid() != 0, reason="disk images are a root host's (host.quota)")
def test_install_killed_in_its_entrypoint_check_is_swept_by_the_next_serve(home: Path) -> None:
    run_host(home, "install", str(BUNDLED / "example_plugin"), "--yes", check=True)  # registered: its image stays
    before = snapshot(home)
    data, image = home / "data" / "hang-on-import", home / "data" / "hang-on-import.img"
    proc = subprocess.Popen([*HOST, "--home", str(home), "install", str(FIXTURES / "hang_on_import"), "--yes"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # its import, confined in the check, wrote into the image the install made and mounted, and waits there
        wait_for(lambda: (data / "importing").exists() or proc.poll() is not None, 120, what="the entrypoint check")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate(timeout=30)[0].decode()
    assert image.is_file() and mounted(data), out  # what the kill left: the image, mounted on its data dir
    assert list((home / "plugins").glob("hang-on-import/*/.partial"))
    # the next `host serve` sweeps it (under the home lock) before it serves: the plugin was never registered
    served = ServedHost(home).start(wait_plugins=("example",))
    try:
        assert "removed half-finished installs of a killed `host install`" in served.read_log()
        assert not (home / "plugins" / "hang-on-import").exists()
    finally:
        assert served.stop() == 0
    assert not mounted(data)
    assert not image.exists() and not data.exists() and not (home / "run" / "hang-on-import").exists()
    after = snapshot(home)  # the registered plugin's install, image and data dir are still there
    assert after[1] == before[1]
    assert {f for f in before[0] if f.startswith(("plugins/", "data/example"))} <= after[0]


def test_symlinks_out_of_the_plugin_dir_are_not_followed(home: Path) -> None:
    r = run_host(home, "install", str(FIXTURES / "symlink_escape"), "--yes")
    assert r.returncode == 0, r.stderr
    assert "skipped symlink shadow -> /etc/shadow" in r.stderr
    bundle = next((home / "plugins" / "symlink-escape").glob("*/bundle"))
    assert not (bundle / "shadow").exists()
    assert (bundle / "inside_link.py").read_text() == (FIXTURES / "symlink_escape" / "app.py").read_text()

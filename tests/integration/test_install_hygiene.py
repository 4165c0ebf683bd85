"""Install-time hygiene, end to end: what reaches the operator's terminal from a hostile plugin, and which
uid its code runs as."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

from tests.integration.harness import BUNDLED, HOST, run_host, short_home

ERASE_LINE_ABOVE = "\x1b[1A\x1b[2K"


def on_a_terminal(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str]:
    """Run `host ARGS` with stdout and stderr on a pseudo-terminal, as an operator would (click strips
    ESC[...m-style sequences only when the output is NOT a terminal, which would hide the attack)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*HOST, *args], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    os.close(follower)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([leader], [], [], 1.0)[0]:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), out.decode(errors="replace")
    finally:
        os.close(leader)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()


def _plugin(root: Path, name: str, extra: str = "") -> Path:
    root.mkdir(parents=True)
    (root / "plugin.toml").write_text(f'name = "{name}"\nversion = "1.0.0"\nentrypoint = "app:app"\n{extra}')
    (root / "app.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    return root


def test_cant_write_escape_sequences_to_the_operators_terminal(tmp_path: Path, home: Path) -> None:
    # the manifest's own text: refused at the model, and the refusal quotes it escaped
    loud = _plugin(tmp_path / "loud", "loud", 'description = "\\u001b[1A\\u001b[2Ktrusted by your admin"\n'
                                               'requirements = ["six\\u001b[1A\\u001b[2K"]\n')
    checked = on_a_terminal("check", str(loud))
    installed = on_a_terminal("--home", str(home), "install", str(loud), "--yes")
    for _, out in (checked, installed):
        assert "\x1b" not in out
        assert "'\\x1b[1A\\x1b[2Ktrusted by your admin': one line of text without control characters" in out
    assert (checked[0], installed[0]) == (2, 1)

    # text the model cannot vet: a bundle's file names, printed in the install's progress lines
    named = _plugin(tmp_path / "named", "named")
    os.symlink("/etc/shadow", named / f"{ERASE_LINE_ABOVE}shadow")
    rc, out = on_a_terminal("--home", str(home), "install", str(named), "--yes",
                            env={"HOST_PIP_ARGS": "--no-index"})  # and pip fails at once
    assert "\x1b" not in out
    assert "warning: skipped symlink ?[1A?[2Kshadow -> /etc/shadow" in out
    assert rc == 1


def test_plugin_uids_are_unique_per_machine_not_per_home(tmp_path: Path) -> None:
    uid_file = tmp_path / "lib" / "uids.json"
    uid_file.parent.mkdir(mode=0o700)
    busy = 1_900_000_001  # the first uid this file would hand out
    uid_file.write_text(json.dumps({"next": busy, "owners": {}}))
    squatter = subprocess.Popen(["sleep", "300"], user=busy, group=busy, stdin=subprocess.DEVNULL)
    owners = []
    try:
        with short_home() as a, short_home() as b:
            for home in (a, b):
                run_host(home, "install", str(BUNDLED / "example_plugin"), "--yes", "--no-enable", check=True,
                         env={"HOST_UID_FILE": str(uid_file), "HOST_UID_BASE": str(busy - 1)})
                owners.append((home / "plugins" / "example").stat().st_gid)  # group = the plugin's uid
            recorded = json.loads(uid_file.read_text())["owners"]
    finally:
        squatter.kill()
        squatter.wait()
    assert owners == [busy + 1, busy + 2]  # not the squatter's uid, and not the same in both homes
    assert recorded == {str(busy + 1): {"home": str(a), "plugin": "example"},
                        str(busy + 2): {"home": str(b), "plugin": "example"}}

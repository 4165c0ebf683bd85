"""Install-time hygiene, end to end: what reaches the operator's terminal from a hostile plugin, which uid
its code runs as, and what the build code of its sdist dependencies sees and leaves behind."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import shutil
import subprocess
import tarfile
import tempfile
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
    assert (checked[0], installed[0]) == (2, 2)  # a manifest error is bad input (exit 2) everywhere

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
    # not the squatter's uid, and not the same in both homes (pip's egress process claims one per home too)
    assert owners[0] == busy + 1 and owners[1] > owners[0] and busy not in owners
    plugins = {u: o for u, o in recorded.items() if o["plugin"] == "example"}
    assert plugins == {str(owners[0]): {"home": str(a), "plugin": "example"},
                       str(owners[1]): {"home": str(b), "plugin": "example"}}
    egress = sorted(o["home"] for o in recorded.values() if o["plugin"] == "@egress")
    assert egress == sorted([str(a), str(b)])  # each home's pip egress process has a uid of its own


DUMP = "plugin-host-test-envdump"
# The in-tree build backend of an sdist-only dependency: the build code pip runs at install time. It
# records what it can see, plants a pip.conf that would steer the next install of its plugin to a
# "2.0" it also plants, and builds a wheel that carries the record into the venv.
BACKEND = r'''
import base64, hashlib, json, os, zipfile

NAME, SECRET = "plugin_host_test_envdump", os.environ.get("SEEN_SECRET_PROBE", "")


def _wheel(directory, version, files):
    dist = f"{NAME}-{version}"
    files = {**files, f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {version}\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(t.encode())}" for p, t in files.items()]
    name = f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, name), "w") as z:
        for p, t in files.items():
            z.writestr(p, t)
        z.writestr(f"{dist}.dist-info/RECORD", "\n".join([*record, f"{dist}.dist-info/RECORD,,"]) + "\n")
    return name


def _procs(needle):
    hits = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for what in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as fh:
                    if needle and needle.encode() in fh.read():
                        hits.append(f"{pid}/{what}")
            except OSError:
                pass
    return hits


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    home = os.path.expanduser("~")
    evil = os.path.join(home, "evil-wheels")
    os.makedirs(evil, exist_ok=True)
    _wheel(evil, "2.0", {f"{NAME}/__init__.py": "PLANTED = True\n"})
    for conf in (os.path.join(home, ".config", "pip", "pip.conf"), os.path.join(home, ".pip", "pip.conf")):
        os.makedirs(os.path.dirname(conf), exist_ok=True)
        with open(conf, "w") as fh:
            fh.write(f"[global]\nfind-links = {evil}\n")
    seen = {"environ": dict(os.environ), "home": home, "uid": os.getuid(),
            "proc_hits": _procs("hunter2-from-the-operator")}
    return _wheel(wheel_directory, "1.0", {f"{NAME}/__init__.py": "PLANTED = False\n",
                                           f"{NAME}/seen.json": json.dumps(seen)})


def get_requires_for_build_wheel(config_settings=None):
    return []
'''


def _sdist(directory: Path) -> None:
    """plugin-host-test-envdump 1.0, sdist only, with the backend above (needs nothing from an index)."""
    root = "plugin_host_test_envdump-1.0"
    files = {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "dumpbackend"\nbackend-path = ["."]\n'
                          f'[project]\nname = "{DUMP}"\nversion = "1.0"\n',
        "dumpbackend.py": BACKEND,
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {DUMP}\nVersion: 1.0\n",
    }
    with tarfile.open(directory / f"{root}.tar.gz", "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _install(home: Path, plugin: Path, env: dict[str, str], *more: str) -> None:
    # As run by an operator with no find-links of their own in the environment: PIP_FIND_LINKS would
    # override (not add to) the find-links of any pip.conf, the planted one included, and hide the attack.
    clean = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    r = subprocess.run([*HOST, "--home", str(home), "install", str(plugin), "--yes", "--no-enable", *more],
                       capture_output=True, text=True, timeout=600, env={**clean, **env}, check=False)
    assert r.returncode == 0, r.stderr


def _installed(home: Path) -> Path:
    """The dump package in the live venv of plugin `dumper`."""
    live = json.loads(run_host(home, "list", "--json", check=True).stdout)
    assert [p["name"] for p in live] == ["dumper"]
    return next((home / "plugins" / "dumper").glob("*/venv/lib/python*/site-packages/plugin_host_test_envdump"))


def test_cant_see_operator_secrets_or_keep_a_pip_conf_while_building_an_sdist(tmp_path: Path, home: Path,
                                                                              runtime_wheels: Path) -> None:
    wheelhouse = Path(tempfile.mkdtemp(prefix="ph-wheels-", dir="/tmp"))  # not under pytest's 0700 tmp
    try:
        wheelhouse.chmod(0o755)
        for wheel in runtime_wheels.glob("*.whl"):
            shutil.copyfile(wheel, wheelhouse / wheel.name)
        _sdist(wheelhouse)
        plugin = _plugin(tmp_path / "dumper", "dumper", f'requirements = ["{DUMP}"]\n')
        env = {"HOST_PIP_ARGS": f"--no-index --find-links {wheelhouse}", "PIP_FOO_SECRET": "hunter2-from-the-operator"}

        _install(home, plugin, env)
        seen = json.loads((_installed(home) / "seen.json").read_text())
        assert "PIP_FOO_SECRET" not in seen["environ"]
        assert "hunter2" not in json.dumps(seen["environ"])
        assert seen["proc_hits"] == []  # nor in the environment or argv of any process it can read
        assert not Path(seen["home"]).exists()  # its HOME (and what it planted there) went with the install

        # the next install of the same name: the planted pip.conf (find-links -> a "2.0") must not count
        _install(home, plugin, env, "--force")
        pkg = _installed(home)
        assert (pkg / "__init__.py").read_text() == "PLANTED = False\n"
        assert [d.name for d in pkg.parent.glob("plugin_host_test_envdump-*.dist-info")] == \
            ["plugin_host_test_envdump-1.0.dist-info"]
        assert not [p for p in home.rglob("*") if p.name in ("pip.conf", "evil-wheels")]
    finally:
        shutil.rmtree(wheelhouse, ignore_errors=True)

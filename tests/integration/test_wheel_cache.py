"""The wheel cache every install of a home shares (host.wheel_cache), end to end against a local index: the
first install fills it with verified wheels, a plugin's sdist build code cannot change it, and a later install
takes everything from it with the index gone. Then: builds of different plugins run at the same time."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

from host.installer import RUNTIME_REQUIREMENTS
from host.wheel_cache import Index, WheelCache
from tests.integration.harness import HOST, run_host, short_home

POISON = "plugin-host-test-cachepoison"
# The in-tree build backend of an sdist-only dependency: build code the installer runs, as the plugin. It tries
# every way to change the shared cache (path filled in by the test) and ships what happened in its wheel.
BACKEND = r'''
import base64, errno, hashlib, json, os, zipfile

SHARED = {shared!r}


def _try(what, fn):
    try:
        fn()
        return "done"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def _attack():
    genuine = next(os.path.join(SHARED, f) for f in sorted(os.listdir(SHARED)) if f.startswith("flask-"))
    return {{
        "listed": sorted(os.listdir(SHARED)),
        "overwrite": _try("overwrite", lambda: open(genuine, "r+b").write(b"PK poisoned")),
        "replace": _try("replace", lambda: os.rename(genuine, genuine + ".bak")),
        "delete": _try("delete", lambda: os.unlink(genuine)),
        "plant": _try("plant", lambda: open(os.path.join(SHARED, "flask-99.0-py3-none-any.whl"), "wb").close()),
        "chmod": _try("chmod", lambda: os.chmod(SHARED, 0o777)),
    }}


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name, dist = "plugin_host_test_cachepoison", "plugin_host_test_cachepoison-1.0"
    files = {{f"{{name}}/__init__.py": "", f"{{name}}/attack.json": json.dumps(_attack()),
             f"{{dist}}.dist-info/METADATA": "Metadata-Version: 2.1\nName: {poison}\nVersion: 1.0\n",
             f"{{dist}}.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}}
    def digest(text):
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    files[f"{{dist}}.dist-info/RECORD"] = "".join(f"{{p}},sha256={{digest(t)}},{{len(t.encode())}}\n"
                                                for p, t in files.items()) + f"{{dist}}.dist-info/RECORD,,\n"
    whl = os.path.join(wheel_directory, f"{{dist}}-py3-none-any.whl")
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return os.path.basename(whl)


def get_requires_for_build_wheel(config_settings=None):
    return []
'''


class LocalIndex:
    """A PEP 503 index on 127.0.0.1 (files under /files/, sha256 fragments) that counts what it serves."""

    def __init__(self, root: Path) -> None:
        self.root, self.hits = root, []
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a: object, **kw: object) -> None:
                super().__init__(*a, directory=str(root), **kw)  # type: ignore[arg-type]

            def do_GET(self) -> None:
                index.hits.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self) -> None:
        by_name: dict[str, list[Path]] = {}
        for f in (self.root / "files").iterdir():
            name = parse_wheel_filename(f.name)[0] if f.name.endswith(".whl") else canonicalize_name(POISON)
            by_name.setdefault(name, []).append(f)
        for name, files in by_name.items():
            page = self.root / "simple" / name / "index.html"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text("<html><body>" + "".join(
                f'<a href="../../files/{f.name}#sha256={_sha(f)}">{f.name}</a>' for f in files) + "</body></html>")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sdist(files_dir: Path, shared: Path) -> None:
    src = files_dir.parent / "src" / "plugin_host_test_cachepoison-1.0"
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "poisonbackend"\n'
                                        f'backend-path = ["."]\n[project]\nname = "{POISON}"\nversion = "1.0"\n')
    (src / "poisonbackend.py").write_text(BACKEND.format(shared=str(shared), poison=POISON))
    (src / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {POISON}\nVersion: 1.0\n")
    with tarfile.open(files_dir / f"{src.name}.tar.gz", "w:gz") as tar:
        tar.add(src, arcname=src.name)


def _plugin(root: Path, name: str, requirements: str = "") -> Path:
    root.mkdir(parents=True)
    (root / "plugin.toml").write_text(f'name = "{name}"\nversion = "1.0.0"\nentrypoint = "app:app"\n{requirements}')
    (root / "app.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    return root


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Path, LocalIndex, Path]]:
    """One home, one local index holding the runtime's wheels (fetched once) and the poisoning sdist."""
    served = Path(tempfile.mkdtemp(prefix="ph-index-", dir="/tmp"))
    try:
        (served / "files").mkdir()
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:", "-d",
                        str(served / "files"), *RUNTIME_REQUIREMENTS], check=True, timeout=300)
        index = LocalIndex(served)
        with short_home() as home:
            shared = WheelCache.of(home / "wheels", Index(index.url, None), 0).root
            _sdist(served / "files", shared)
            index.publish()
            yield home, index, shared
        index.stop()
    finally:
        subprocess.run(["rm", "-rf", str(served)], check=False)


def _install(home: Path, index: LocalIndex, plugin: Path) -> subprocess.CompletedProcess[str]:
    return run_host(home, "install", str(plugin), "--yes", "--no-enable", check=True,
                    env={"HOST_PIP_ARGS": f"--index-url {index.url}", "PIP_FIND_LINKS": ""})


def _cached(shared: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in shared.iterdir()}


def test_cant_poison_the_shared_wheel_cache_and_a_later_install_needs_no_index(world: tuple[Path, LocalIndex, Path],
                                                                               tmp_path: Path) -> None:
    home, index, shared = world
    _install(home, index, _plugin(tmp_path / "first", "wc-first"))
    published = {p.name: _sha(p) for p in (index.root / "files").glob("*.whl")}
    cached = _cached(shared)
    assert cached == published  # exactly the index's wheels, byte for byte; the sdist is not among them
    assert shared.stat().st_mode & 0o777 == 0o755 and shared.stat().st_uid == 0

    r = _install(home, index, _plugin(tmp_path / "attacker", "wc-attacker", f'requirements = ["{POISON}==1.0"]\n'))
    attack = json.loads(next((home / "plugins" / "wc-attacker").glob(
        "*/venv/lib/python*/site-packages/plugin_host_test_cachepoison/attack.json")).read_text())
    assert attack["listed"] == sorted(published)  # it may read the cache (public packages) ...
    assert {k: v for k, v in attack.items() if k != "listed"} == {  # ... and change nothing in it
        "overwrite": "EACCES", "replace": "EROFS", "delete": "EROFS", "plant": "EROFS", "chmod": "EROFS"}
    assert "asking the index" in r.stderr  # its sdist is not in the cache: built from the index
    assert _cached(shared) == cached

    # the first plugin's venv is kept for installs of the same packages; the attacker's (its own sdist) is not
    assert [d.stat().st_mode & 0o777 for d in (home / "venvs").iterdir()] == [0o700]
    kept = next((home / "venvs").iterdir())
    assert "a copy of the one an earlier install built" not in r.stderr

    index.stop()  # gone: the next install must not need it
    hits = len(index.hits)
    r = _install(home, index, _plugin(tmp_path / "later", "wc-later"))
    assert "asking the index" not in r.stderr
    assert len(index.hits) == hits
    site = next((home / "plugins" / "wc-later").glob("*/venv/lib/python*/site-packages"))
    assert {canonicalize_name(d.name.split("-")[0]) for d in site.glob("*.dist-info")} == \
        {parse_wheel_filename(n)[0] for n in published}
    assert _cached(shared) == cached
    # a Flask-only plugin: its venv is a copy of the kept one (no installer ran), its scripts name its own venv,
    # and it passed the confined entrypoint check like any other
    assert "a copy of the one an earlier install built of the same packages" in r.stderr
    venv = site.parents[2]
    log = next((home / "logs" / "wc-later").glob("install-*.log")).read_text()
    assert " pip install " not in log and "Bytecode compiled" not in log
    assert (venv / "bin" / "gunicorn").read_text().startswith(f"#!{venv}/bin/python\n")
    assert (venv / "bin" / "python").resolve() == (kept / "venv" / "bin" / "python").resolve()
    assert list(site.glob("flask/__pycache__/*.pyc"))  # the bytecode came along, valid (mtimes kept)
    # a copy, not links: no file of it shares an inode with the template (or anything else), and all of it is
    # root's and read-only to the plugin, as a venv its installer built and root locked
    kept_inodes = {(st.st_dev, st.st_ino) for st in _lstats(kept / "venv")}
    for st in _lstats(venv):
        assert (st.st_dev, st.st_ino) not in kept_inodes
        assert stat.S_ISLNK(st.st_mode) or (st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
        assert not stat.S_ISREG(st.st_mode) or st.st_nlink == 1
    probe = subprocess.run([str(venv / "bin" / "python"), "-I", "-c", "import flask, importlib.util as u, os; "
                            "p = u.cache_from_source(flask.__file__); print(os.path.exists(p), flask.__file__)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.split() == ["True", str(site / "flask" / "__init__.py")]


def _lstats(top: Path) -> list[os.stat_result]:
    return [os.lstat(p) for p in top.rglob("*")]


SLOW = "plugin-host-test-slowbuild"
# A build backend that waits (at most 60 s) until the test says go, after telling it that it is waiting.
SLOW_BACKEND = r'''
import os, time, zipfile


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    home = os.path.expanduser("~")
    open(os.path.join(home, "waiting"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(home, "go")) and time.monotonic() < deadline:
        time.sleep(0.1)
    dist = "plugin_host_test_slowbuild-1.0"
    whl = os.path.join(wheel_directory, dist + "-py3-none-any.whl")
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(dist + ".dist-info/METADATA", "Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        z.writestr(dist + ".dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(dist + ".dist-info/RECORD", "")
    return os.path.basename(whl)


def get_requires_for_build_wheel(config_settings=None):
    return []
'''


def _wait_for(what: str, found: Callable[[], object], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_builds_of_different_plugins_run_at_the_same_time(world: tuple[Path, LocalIndex, Path],
                                                          tmp_path: Path) -> None:
    home, index, _ = world
    links = index.root / "links"  # an sdist whose build waits for the test
    src = links / "src" / "plugin_host_test_slowbuild-1.0"
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "slowbackend"\n'
                                        f'backend-path = ["."]\n[project]\nname = "{SLOW}"\nversion = "1.0"\n')
    (src / "slowbackend.py").write_text(SLOW_BACKEND.replace("{name}", SLOW))
    (src / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {SLOW}\nVersion: 1.0\n")
    with tarfile.open(links / f"{src.name}.tar.gz", "w:gz") as tar:
        tar.add(src, arcname=src.name)
    for d in (index.root, links):
        d.chmod(0o755)
    env = {"HOST_PIP_ARGS": f"--index-url {index.url} --find-links {links}", "PIP_FIND_LINKS": ""}
    slow = subprocess.Popen([*HOST, "--home", str(home), "install", str(_plugin(tmp_path / "slow", "wc-slow",
                             f'requirements = ["{SLOW}==1.0"]\n')), "--yes", "--no-enable"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, stdin=subprocess.DEVNULL)
    try:
        _wait_for("the slow build", lambda: list((home / "plugins" / "wc-slow").glob("*/.tmp/waiting")))
        # while it builds, another plugin installs from start to finish
        run_host(home, "install", str(_plugin(tmp_path / "quick", "wc-quick")), "--yes", "--no-enable", check=True,
                 env=env)
        assert slow.poll() is None
        (next((home / "plugins" / "wc-slow").glob("*/.tmp/waiting")).parent / "go").touch()
        _, err = slow.communicate(timeout=300)
        assert slow.returncode == 0, err
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()
    listed = {p["name"] for p in json.loads(run_host(home, "list", "--json", check=True).stdout)}
    assert {"wc-slow", "wc-quick"} <= listed

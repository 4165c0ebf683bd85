"""Signed bundles end to end (issue 14): install verifies, every start re-checks the installed files, publishers
are pinned, downgrades are refused, upgrades roll back, dependencies can be locked and installed offline. One
served host for the module, installing from a wheelhouse (HOST_WHEELHOUSE); the tests run in order and build on
it."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from host.registry import Registry
from tests.integration.harness import FIXTURES, ServedHost, run_host, short_home, wait_for

NAME = "signedapp"


@dataclass
class Signed:
    home: Path
    host: ServedHost
    work: Path
    lock: str = ""  # a requirements.lock of the wheelhouse: every wheel pinned with its sha256

    def source(self, version: str, key: str | None, previous: str | None = None, app: str | None = None,
               lock: str | None = None, permissions: str = "") -> Path:
        """The steady fixture as NAME ``version``, signed by ``key`` (None: unsigned); ``app``: its app.py;
        ``lock``: its requirements.lock."""
        src = self.work / f"{NAME}-{version}-{key}-{previous}"
        shutil.copytree(FIXTURES / "steady", src)
        if app is not None:
            (src / "app.py").write_text(app)
        if lock is not None:
            (src / "requirements.lock").write_text(lock)
        (src / "plugin.toml").write_text(f'name = "{NAME}"\nversion = "{version}"\nentrypoint = "app:app"\n'
                                         + permissions)
        if key is not None:
            extra = ("--previous-key", str(self.work / previous)) if previous else ()
            run_host(self.home, "sign", str(src), "--key", str(self.work / key), *extra, check=True)
        return src

    def install_dir(self) -> Path:
        rec = Registry(self.home / "registry.db").require(NAME)
        return self.home / "plugins" / NAME / rec.install_id

    def state(self) -> tuple[str, str, tuple[str, ...]]:
        """(version, install id, install dirs on disk): what a refused install must leave as it was."""
        rec = Registry(self.home / "registry.db").require(NAME)
        return rec.version, rec.install_id, tuple(sorted(p.name for p in (self.home / "plugins" / NAME).iterdir()))


def wheelhouse(into: Path, runtime_wheels: Path) -> str:
    """The runtime's wheels (from pip's configured index) copied into ``into``; returns their lock."""
    into.mkdir(parents=True)
    for w in runtime_wheels.glob("*.whl"):
        shutil.copyfile(w, into / w.name)
    return "".join(f"{w.name.split('-')[0]}=={w.name.split('-')[1]} \\\n"
                   f"    --hash=sha256:{hashlib.sha256(w.read_bytes()).hexdigest()}\n"
                   for w in sorted(into.glob("*.whl")))


@pytest.fixture(scope="module")
def signed(runtime_wheels: Path) -> Iterator[Signed]:
    with short_home() as home, pytest.MonkeyPatch.context() as mp:
        work = home.parent / "work"
        work.mkdir()
        mp.setenv("HOST_WHEELHOUSE", str(work / "wheels"))  # every install and the served host: offline
        for key in ("k1", "k2"):
            run_host(home, "keygen", str(work / key), check=True)
        ctx = Signed(home, ServedHost(home), work, wheelhouse(work / "wheels", runtime_wheels))
        out = run_host(home, "install", str(ctx.source("1.0.0", "k1", lock=ctx.lock)), "--yes", check=True)
        assert "pinned as signedapp's publisher (trust on first use)" in out.stderr
        assert "locked packages from requirements.lock (--require-hashes)" in out.stderr
        ctx.host.start(wait_plugins=(NAME,))
        try:
            yield ctx
        finally:
            ctx.host.stop()


def key_id(work: Path, key: str) -> str:
    from host.signing import key_id as kid

    return kid((work / f"{key}.pub").read_text().strip())


def test_cant_install_a_locked_package_whose_hash_differs(signed: Signed) -> None:
    before = signed.state()
    first = signed.lock.split("--hash=sha256:")[1][:64]
    forged = signed.lock.replace(first, "0" * 64, 1)
    res = run_host(signed.home, "install", str(signed.source("1.0.1", "k1", lock=forged)), "--yes")
    assert res.returncode == 1, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: signedapp: install failed while installing packages: "
                           f"{signed.lock.split(' ')[0]}: its sha256 is {first}, but requirements.lock says {'0' * 64} "
                           "(changed since it was locked? refusing it)"), line
    assert signed.state() == before


def test_host_list_shows_who_signed_it(signed: Signed) -> None:
    rows = json.loads(run_host(signed.home, "list", "--json", check=True).stdout)
    assert rows[0]["signature"] == {"signed": True, "key_id": key_id(signed.work, "k1"),
                                    "badge": key_id(signed.work, "k1")}
    assert key_id(signed.work, "k1") in run_host(signed.home, "list", check=True).stdout


@pytest.mark.parametrize("where", ["bundle/app.py", "venv/lib/python3.11/site-packages/flask/__init__.py"])
def test_cant_start_a_tampered_install(signed: Signed, where: str) -> None:
    target = signed.install_dir() / where
    original = target.read_bytes()
    run_host(signed.home, "disable", NAME, check=True)
    with open(target, "ab") as fh:
        fh.write(b"\nimport os  # planted\n")
    try:
        run_host(signed.home, "enable", NAME, check=True)
        st = signed.host.wait_state(NAME, "quarantined")
        line = (f"integrity: {where}: modified since install (sha256 differs); refusing to start it (reinstall it: "
                "`host install --force`)")
        assert st["reason"] == line
        assert line in run_host(signed.home, "status", NAME, check=True).stdout
    finally:
        target.write_bytes(original)  # the same bytes again: its stat changed, so the check hashes it, and passes
    run_host(signed.home, "enable", NAME, check=True)
    signed.host.wait_state(NAME, "running")
    assert signed.host.get(f"/plugins/{NAME}/").text == "steady"


def test_cant_install_an_unsigned_bundle_under_require(signed: Signed) -> None:
    before = signed.state()
    res = run_host(signed.home, "install", str(signed.source("1.0.1", None)), "--yes",
                   env={"HOST_SIGNATURES": "require"})
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "error: signedapp: signature: the bundle is unsigned and this host requires signatures "
        "(HOST_SIGNATURES=require); ask its author to sign it (`host sign`)")
    assert signed.state() == before


V110 = "from flask import Flask\napp = Flask(__name__)\n\n@app.get('/')\ndef index():\n    return 'v1.1.0'\n"


def test_another_key_is_refused_until_the_pinned_key_hands_over(signed: Signed) -> None:
    (signed.home / "data" / NAME / "marker").write_text("data of 1.0.0")
    before = signed.state()
    k1, k2 = key_id(signed.work, "k1"), key_id(signed.work, "k2")
    res = run_host(signed.home, "install", str(signed.source("1.1.0", "k2")), "--yes")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"error: signedapp: signature: signed by key {k2}, but signedapp's publisher is key {k1}; refused")
    assert signed.state() == before

    res = run_host(signed.home, "install", str(signed.source("1.1.0", "k2", previous="k1", app=V110)), "--yes",
                   check=True)
    assert f"key {k1} handed signedapp over to it" in res.stderr
    assert "snapshotted the data dir of 1.0.0 for `host rollback`" in res.stderr
    (signed.home / "data" / NAME / "marker").write_text("data of 1.1.0")
    assert signed.host.wait_state(NAME, "running")["version"] == "1.1.0"
    rows = json.loads(run_host(signed.home, "list", "--json", check=True).stdout)
    assert rows[0]["signature"]["key_id"] == k2
    kinds = [e.kind for e in Registry(signed.home / "registry.db").events(NAME, limit=5)]
    assert "publisher_succeeded" in kinds


# v1.2.0 serves, passes its start, then its worker exits with gunicorn's "app failed to load" code, which
# halts the master too: the whole new instance is gone a few seconds after the switch.
CRASHES_AFTER_START = """import os, sys, threading
from flask import Flask
app = Flask(__name__)
if "gunicorn" in sys.modules:
    threading.Timer(3.0, os._exit, (4,)).start()

@app.get("/")
def index():
    return "v1.2.0"
"""


def test_a_new_version_that_crashes_after_start_is_rolled_back_with_no_failed_request_to_the_old_one(
        signed: Signed) -> None:
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        for _ in range(20000):
            if stop.is_set():
                return
            try:
                r = httpx.get(f"{signed.host.url}/plugins/{NAME}/", timeout=30)
                seen.append((r.status_code, r.text))
            except httpx.HTTPError as exc:
                seen.append((0, type(exc).__name__))
            time.sleep(0.01)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        run_host(signed.home, "install", str(signed.source("1.2.0", "k2", app=CRASHES_AFTER_START)), "--yes",
                 check=True)
        wait_for(lambda: any(text == "v1.2.0" for _, text in seen), 30, what="1.2.0 to serve")
        wait_for(lambda: Registry(signed.home / "registry.db").require(NAME).version == "1.1.0", 30,
                 what="the rollback to 1.1.0")
        rolled = len(seen)
        wait_for(lambda: len(seen) > rolled + 50, 30, what="requests after the rollback")
    finally:
        stop.set()
        t.join(30)
    event = Registry(signed.home / "registry.db").events(NAME, kinds=["rolled_back"], limit=1)[0]
    assert (event.detail["from"], event.detail["to"]) == ("1.2.0", "1.1.0")
    st = signed.host.wait_state(NAME, "running")
    assert st["reason"].startswith("upgrade rolled back, the previous version serves again: ")
    # The old version answered every request it got: before the switch, and from the first answer after the
    # crash on. Failures, if any, are requests that reached the crashing instance.
    first_new = next(i for i, (_, text) in enumerate(seen) if text == "v1.2.0")
    last_new = max(i for i, (_, text) in enumerate(seen) if text == "v1.2.0")
    back = next(i for i in range(last_new, len(seen)) if seen[i] == (200, "v1.1.0"))
    assert set(seen[:first_new]) == {(200, "v1.1.0")}
    assert set(seen[back:]) == {(200, "v1.1.0")}, seen[back:]
    assert signed.host.get(f"/plugins/{NAME}/").text == "v1.1.0"


def test_host_rollback_restores_the_previous_code_and_its_data(signed: Signed) -> None:
    # 1.2.0 failed and was rolled back automatically: it is no rollback target; 1.0.0 is, with its snapshot
    res = run_host(signed.home, "rollback", NAME, check=True)
    assert res.stderr.strip().splitlines()[-1] == (
        "==> rolled back signedapp 1.1.0 → 1.0.0: code and data (the snapshot taken before the upgrade)")
    signed.host.wait_state(NAME, "running")
    assert signed.host.get(f"/plugins/{NAME}/").text == "steady"
    assert (signed.home / "data" / NAME / "marker").read_text() == "data of 1.0.0"
    assert Registry(signed.home / "registry.db").require(NAME).version == "1.0.0"


def test_an_upgrade_adding_an_egress_destination_waits_for_consent_while_the_old_version_serves(
        signed: Signed) -> None:
    before = signed.state()
    src = signed.source("1.3.0", "k2", permissions='[permissions.network]\noutbound = ["api.example.com:443"]\n')
    res = run_host(signed.home, "install", str(src), "--yes")
    assert res.returncode == 2, res.stderr
    assert "      widened:  network.outbound: + api.example.com:443" in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "error: signedapp: upgrading 1.0.0 → 1.3.0 widens its permissions (network.outbound: + api.example.com:443); "
        "--yes does not grant a widening: pass --grant-widened (or --grant FILE); 1.0.0 stays installed and serving")
    assert signed.state() == before
    assert signed.host.get(f"/plugins/{NAME}/").text == "steady"


def test_a_downgrade_is_refused_unless_allowed_and_then_audited(signed: Signed) -> None:
    before = signed.state()
    old = signed.source("1.0.5", "k2")
    res = run_host(signed.home, "install", str(old), "--yes")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "error: signedapp: 1.0.5 is older than 1.2.0, the highest version installed here before; refusing a "
        "downgrade (pass --allow-downgrade to install it anyway; it is audited)")
    assert signed.state() == before

    run_host(signed.home, "install", str(old), "--yes", "--allow-downgrade", "--no-enable", check=True)
    assert Registry(signed.home / "registry.db").require(NAME).version == "1.0.5"
    event = Registry(signed.home / "registry.db").events(NAME, kinds=["downgrade_allowed"], limit=1)[0]
    assert event.detail == {"from": "1.2.0", "to": "1.0.5"} and (event.who or "").startswith("local:")

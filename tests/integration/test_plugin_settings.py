"""Plugin settings and secrets end to end: a plugin with a required secret does not start without it (and says
which), starts once it is set, finds its values in its environment and settings.json, restarts with no failed
request when they change, and the secret never shows up anywhere the operator or a client can look."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.integration.harness import FIXTURES, HOST, ServedHost, run_host, short_home

NAME = "configured"
SECRET = "s3cr3t-Kf9Qx2-never-printed"
NEW_SECRET = "n3w-s3cr3t-Zp7Lw4-never-printed"
MISSING = f"missing required setting secret_key: set it with `host config {NAME} secret_key=...`"


@dataclass
class Served:
    host: ServedHost
    install: subprocess.CompletedProcess[str]
    outputs: list[str] = field(default_factory=list)  # everything a CLI printed during the tests

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        if stdin is None:
            proc = self.host.cli(*args)
        else:
            proc = subprocess.run([*HOST, "--home", str(self.host.home), *args], input=stdin, capture_output=True,
                                  text=True, timeout=120, check=False)
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def settings(self) -> dict[str, object]:
        r = self.host.get(f"/plugins/{NAME}/settings")
        assert r.status_code == 200, r.text
        return dict(r.json())


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with short_home() as home:
        install = run_host(home, "install", str(FIXTURES / NAME), "--yes")
        host = ServedHost(home).start()
        try:
            yield Served(host, install, [install.stdout, install.stderr])
        finally:
            host.stop()


def digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def test_install_succeeds_and_says_what_to_set(served: Served) -> None:
    assert served.install.returncode == 0, served.install.stderr
    assert (f"==> set secret_key before it can start: host config {NAME} secret_key=... "
            "(or --from-file FILE.json|.toml|-)") in served.install.stderr
    assert "not checking entrypoint app:app yet: it needs secret_key" in served.install.stderr


def test_cant_start_without_its_required_secret_and_says_which(served: Served) -> None:
    st = served.host.wait_state(NAME, "quarantined", timeout=30)
    assert st["reason"] == MISSING
    assert st["restarts"] == 0 and st["pid"] is None  # a set-up failure: not retried, not a crash loop
    listed = {p["name"]: p for p in json.loads(served.cli("list", "--json").stdout)}
    assert listed[NAME]["reason"] == MISSING
    assert MISSING in served.cli("list").stdout
    assert served.host.get(f"/plugins/{NAME}/").status_code == 503
    shown = served.cli("config", NAME).stdout
    assert re.search(rf"^secret_key = \(not set\) +# string, secret, required — set it: host config {NAME} "
                     r"secret_key=\.\.\.$", shown, re.M), shown
    assert re.search(r'^greeting = "hello" \(default\) +# string — What / answers$', shown, re.M), shown


@pytest.mark.parametrize(("args", "error"), [
    (["page_size=abc"], "page_size: expected an integer, got 'abc'"),
    (["mode=slow"], "mode: 'slow': must be one of 'fast', 'safe'"),
    (["debug=maybe"], "debug: expected true or false, got 'maybe'"),
    (["colour=red"], "colour: not a setting of this plugin (its settings: secret_key, greeting, page_size, "
                     "ratio, debug, mode, api_token)"),
    (["greeting"], "'greeting': write KEY=VALUE"),
    (["greeting=hi", "ratio=nan"], "ratio: expected a number (e.g. 0.5), got 'nan'"),
    (["--unset", "nope"], "nope: not a setting of this plugin"),
])
def test_invalid_values_exit_2_with_one_line_and_change_nothing(served: Served, args: list[str], error: str) -> None:
    before = served.cli("config", NAME, "--json").stdout
    r = served.cli("config", NAME, *args)
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {NAME}: {error}") and r.stderr.count("\n") == 1, r.stderr
    assert served.cli("config", NAME, "--json").stdout == before


def test_a_rejected_secret_is_not_echoed(served: Served, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"secret_key": SECRET + "\x01"}))
    r = served.cli("config", NAME, "--from-file", str(bad))
    assert r.returncode == 2
    assert r.stderr == (f"error: {NAME}: secret_key: control characters other than tab and line breaks are not "
                        "allowed\n")


def test_it_starts_once_the_secret_is_set_and_sees_its_settings(served: Served) -> None:
    # from standard input: the secret stays off the command line that `ps` shows
    r = served.cli("config", NAME, "--from-file", "-", "page_size=50", stdin=json.dumps({"secret_key": SECRET}))
    assert r.returncode == 0, r.stderr
    assert f"==> {NAME}: saved secret_key, page_size" in r.stderr
    served.host.wait_state(NAME, "running", timeout=60)
    got = served.settings()
    assert got["secret_in_env"] == got["secret_in_file"] == got["secret_in_config"] == digest(SECRET)
    assert got["env"] == {"GREETING": "hello", "PAGE_SIZE": "50", "RATIO": "0.5", "DEBUG": "false", "MODE": "safe"}
    assert got["file"] == {"greeting": "hello", "page_size": 50, "ratio": 0.5, "debug": False, "mode": "safe"}
    assert got["api_token_set"] is False  # no default, not set: absent
    # settings.json: the plugin's own uid may read it, no one else
    assert got["file_mode"] == 0o400 and got["file_uid"] == got["uid"]
    path = served.host.home / "data" / NAME / "settings.json"
    assert path.stat().st_uid == got["uid"] and path.stat().st_mode & 0o077 == 0


def test_a_change_restarts_it_with_no_failed_request(served: Served) -> None:
    before = served.host.wait_state(NAME, "running", timeout=60)["pid"]  # the host's view: pids inside are namespaced
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=served.host.url, timeout=10) as client:
            deadline = time.monotonic() + 90
            while not stop.is_set() and len(statuses) < 5000 and time.monotonic() < deadline:
                statuses.append(client.get(f"/plugins/{NAME}/").status_code)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        r = served.cli("config", NAME, "greeting=bonjour", "debug=yes")
    finally:
        time.sleep(0.3)  # a few requests after the switch, too
        stop.set()
        t.join(100)
    assert r.returncode == 0, r.stderr
    after = served.settings()
    assert served.host.plugin(NAME)["pid"] != before
    assert f"==> {NAME} restarted with the new settings (pid " in r.stderr
    assert after["env"]["GREETING"] == "bonjour" and after["env"]["DEBUG"] == "true"
    assert served.host.get(f"/plugins/{NAME}/").text == "bonjour"
    assert len(statuses) > 10 and set(statuses) == {200}, sorted(set(statuses))


def test_root_never_writes_through_a_symlink_the_plugin_planted(served: Served) -> None:
    sentinel = served.host.home.parent / "sentinel"
    sentinel.write_text("untouched\n")
    assert served.host.get(f"/plugins/{NAME}/").status_code == 200
    r = httpx.post(f"{served.host.url}/plugins/{NAME}/plant/{str(sentinel).lstrip('/')}", timeout=10)
    assert r.text == "planted"
    assert (served.host.home / "data" / NAME / "settings.json").is_symlink()
    assert served.cli("config", NAME, "ratio=0.25").returncode == 0
    assert sentinel.read_text() == "untouched\n"
    path = served.host.home / "data" / NAME / "settings.json"
    assert not path.is_symlink() and json.loads(path.read_bytes())["ratio"] == 0.25


def test_the_secret_can_change_and_is_shown_as_dots(served: Served) -> None:
    r = served.cli("config", NAME, f"secret_key={NEW_SECRET}")
    assert r.returncode == 0, r.stderr
    assert served.settings()["secret_in_env"] == digest(NEW_SECRET)
    shown = served.cli("config", NAME).stdout
    assert re.search(r"^secret_key = •••• +# string, secret, required — Signs", shown, re.M), shown
    assert re.search(r"^api_token = \(not set\) +# string, secret — Optional", shown, re.M), shown
    rows = {s["key"]: s for s in json.loads(served.cli("config", NAME, "--json").stdout)["settings"]}
    assert rows["secret_key"]["value"] == "••••" and rows["secret_key"]["set"] is True
    schema = json.loads(served.cli("config", NAME, "--schema").stdout)
    assert schema["required"] == ["secret_key"] and schema["properties"]["secret_key"]["writeOnly"] is True


def test_an_upgrade_keeps_the_values_still_declared(served: Served, tmp_path: Path) -> None:
    v2 = tmp_path / NAME
    shutil.copytree(FIXTURES / NAME, v2)
    toml = (v2 / "plugin.toml").read_text().replace('version = "1.0.0"', 'version = "2.0.0"')
    # page_size is gone, ratio becomes text (its stored number no longer fits), the rest stays
    toml = toml.replace('[settings.page_size]\ntype = "integer"\ndefault = 20\n', "")
    toml = toml.replace('[settings.ratio]\ntype = "number"\ndefault = 0.5\n', '[settings.ratio]\ndefault = "half"\n')
    (v2 / "plugin.toml").write_text(toml)
    bad = served.cli("install", str(v2), "--yes", "--set", "mode=slow")
    assert bad.returncode == 2  # before anything is built
    assert bad.stderr.splitlines()[-1] == f"error: {NAME}: mode: 'slow': must be one of 'fast', 'safe'"
    r = served.cli("install", str(v2), "--yes", "--set", "greeting=salut")
    assert r.returncode == 0, r.stderr
    assert "dropping settings page_size, ratio: not declared by configured 2.0.0, or no longer valid" in r.stderr
    rows = {s["key"]: s for s in json.loads(served.cli("config", NAME, "--json").stdout)["settings"]}
    assert rows["secret_key"]["set"] and rows["greeting"]["value"] == "salut" and "page_size" not in rows
    assert rows["ratio"] == {**rows["ratio"], "set": False, "value": "half"}
    got = served.settings()  # the new version serves (its entrypoint check needed the kept secret at import)
    assert got["secret_in_env"] == digest(NEW_SECRET) and got["env"]["PAGE_SIZE"] is None
    assert got["env"]["GREETING"] == "salut" and got["env"]["RATIO"] == "half"


def test_the_secret_never_appears_anywhere_the_operator_or_a_client_looks(served: Served) -> None:
    """Runs last: every CLI output so far (two installs included), plus list, logs, /healthz, the host's log,
    every log file under the home (install logs included) and the audit log."""
    host = served.host
    served.cli("list")
    served.cli("list", "--json")
    served.cli("logs", NAME, "-n", "1000")
    served.cli("logs", NAME, "-n", "1000", "--previous")
    looked = [*served.outputs, json.dumps(host.health()), host.get("/").text, host.read_log(),
              json.dumps(host.status())]
    looked += [p.read_text(errors="replace") for p in (host.home / "logs").rglob("*") if p.is_file()]
    from host.registry import Registry

    looked.append(json.dumps([e.detail for e in Registry(host.home / "registry.db").events(limit=10_000)]))
    for secret in (SECRET, NEW_SECRET):
        assert not [text[:200] for text in looked if secret in text]
    assert any("settings_changed" in json.dumps(e.kind) for e in Registry(host.home / "registry.db").events(NAME))

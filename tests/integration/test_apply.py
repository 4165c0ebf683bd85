"""`host apply FILE` and `host export` against a served host: install from a file, converge, change only what the
file changes, round-trip through export, and refuse a bad file or an over-asking plugin with nothing changed."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from host.registry import Registry
from tests.integration.harness import FIXTURES, ServedHost, short_home, wait_for

SECRET = "s3cr3t-Ap9Lx-never-printed"


def config(steady: bool = True, greeting: str = "hi", extra: str = "") -> str:
    return f"""
[[plugin]]
name = "steady"
source = "src/steady"
enabled = {str(steady).lower()}

[[plugin]]
name = "configured"
source = "src/configured"
settings = {{ secret_key = "{SECRET}", greeting = "{greeting}" }}
{extra}"""


@dataclass
class Applied:
    host: ServedHost
    dir: Path
    first: subprocess.CompletedProcess[str]
    outputs: list[str] = field(default_factory=list)  # everything apply and export printed

    def apply(self, text: str, *args: str, name: str = "host.toml") -> subprocess.CompletedProcess[str]:
        path = self.dir / name
        path.write_text(text)
        return self.run("apply", str(path), *args)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.host.cli(*args)
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def text(self, name: str) -> tuple[int, str]:
        r = self.host.get(f"/plugins/{name}/")
        return r.status_code, r.text

    def listed(self) -> list[tuple[str, str, str, bool]]:
        """Every installed plugin's name, version, install and enabled flag (from the registry: no CLI start-up)."""
        return [(r.name, r.version, r.install_id, r.enabled) for r in Registry(self.host.home / "registry.db").all()]


@pytest.fixture(scope="module")
def applied() -> Iterator[Applied]:
    with short_home() as home:
        work = home.parent
        for name in ("steady", "configured", "egress_probe"):
            shutil.copytree(FIXTURES / name, work / "src" / name)
        host = ServedHost(home).start()
        try:
            state = Applied(host, work, subprocess.CompletedProcess([], 0))
            state.first = state.apply(config())
            yield state
        finally:
            host.stop()


def test_apply_installs_both_and_the_running_host_serves_them(applied: Applied) -> None:
    assert applied.first.returncode == 0, applied.first.stderr
    assert applied.first.stdout.splitlines() == ["+ steady 1.0.0 installed", "+ configured 1.0.0 installed"]
    assert applied.text("steady") == (200, "steady")
    assert applied.text("configured") == (200, "hi")


def test_applying_the_same_file_again_changes_nothing(applied: Applied) -> None:
    proc = applied.apply(config())
    assert (proc.returncode, proc.stdout) == (0, "no changes\n"), proc.stderr


def test_a_changed_setting_and_enabled_flag_change_only_those(applied: Applied) -> None:
    changed = config(steady=False, greeting="hey")
    dry = applied.apply(changed, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == ["- steady disabled", "~ configured settings: greeting"]
    assert "dry run: nothing was changed" in dry.stderr
    assert applied.text("steady") == (200, "steady") and applied.text("configured") == (200, "hi")

    proc = applied.apply(changed)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["- steady disabled", "~ configured settings: greeting"]
    assert applied.text("steady")[0] == 404  # at once: the disable waited for the stop
    assert applied.text("configured") == (200, "hey")
    assert applied.apply(changed).stdout == "no changes\n"

    back = applied.apply(config())
    assert back.stdout.splitlines() == ["+ steady enabled", "~ configured settings: greeting"], back.stderr
    wait_for(lambda: applied.text("steady") == (200, "steady"), 30, what="steady served again")
    assert applied.text("configured") == (200, "hi")


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_export_then_apply_is_no_changes_and_holds_no_secret(applied: Applied, fmt: str) -> None:
    exported = applied.run("export", *(["--json"] if fmt == "json" else []))
    assert exported.returncode == 0, exported.stderr
    assert SECRET not in exported.stdout
    if fmt == "json":
        entries = {p["name"]: p for p in json.loads(exported.stdout)["plugin"]}
        assert entries["configured"]["settings"] == {"greeting": "hi"}
        assert entries["configured"]["secrets_omitted"] == ["secret_key"]
        assert entries["steady"]["source"] == str(applied.dir / "src" / "steady")
    else:
        assert "# secret settings are not exported; apply leaves their values on the host as they are: " \
               "secret_key" in exported.stdout
    proc = applied.apply(exported.stdout, name=f"exported.{fmt}")
    assert (proc.returncode, proc.stdout) == (0, "no changes\n"), proc.stderr


def test_new_content_under_the_same_version_is_reinstalled(applied: Applied) -> None:
    app = applied.dir / "src" / "steady" / "app.py"
    app.write_text(app.read_text().replace('return "steady"', 'return "steady, edited"'))
    proc = applied.apply(config())
    assert proc.stdout.splitlines() == ["~ steady 1.0.0 reinstalled: its content changed"], proc.stderr
    assert applied.text("steady") == (200, "steady, edited")
    assert applied.apply(config()).stdout == "no changes\n"


def test_an_archive_of_the_same_files_is_the_same_plugin(applied: Applied) -> None:
    shutil.make_archive(str(applied.dir / "steady-1.0.0"), "gztar", applied.dir / "src", "steady")
    archived = config().replace('source = "src/steady"', 'source = "steady-1.0.0.tar.gz"')
    proc = applied.apply(archived)
    assert proc.stdout == "~ steady source recorded\n", proc.stderr  # nothing to reinstall
    assert applied.apply(archived).stdout == "no changes\n"
    scratch = applied.host.home / "cache" / "unpack"
    assert not scratch.exists() or not list(scratch.iterdir())  # unpacked only while apply ran
    assert applied.apply(config()).stdout == "~ steady source recorded\n"


def test_a_plugin_asking_more_than_its_grant_is_refused_and_nothing_changes(applied: Applied) -> None:
    before = applied.listed()
    extra = '\n[[plugin]]\nname = "egress-probe"\nsource = "src/egress_probe"\n'
    proc = applied.apply(config(greeting="changed") + extra)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert any(line.startswith(f"error: {applied.dir / 'host.toml'}: egress-probe: asks for more than its grant: ")
               and "network" in line for line in lines), proc.stderr
    assert lines[-1] == f"error: {applied.dir / 'host.toml'}: 1 problem; nothing was changed"
    assert applied.listed() == before
    assert applied.text("configured") == (200, "hi")
    # granted, it is accepted (planned only: installing it needs network isolation this test does not need)
    granted = applied.apply(config() + extra + "[plugin.grant.network]\noutbound = true\n", "--dry-run")
    assert granted.stdout.splitlines() == ["+ egress-probe 1.0.0 installed"], granted.stderr


def test_a_broken_file_changes_nothing(applied: Applied) -> None:
    before = applied.listed()
    path = applied.dir / "host.toml"
    # the first entry alone would be applied (steady disabled): the whole file is checked first
    broken = config(steady=False, greeting="changed").replace('source = "src/configured"', 'source = "src/nowhere"')
    proc = applied.apply(broken.replace('enabled = false', 'enabled = false\nsettings = { colour = "red" }'))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines() == [
        f"error: {path}: steady: settings.colour: not a setting of this plugin (its settings: none)",
        f"error: {path}: configured: source {applied.dir / 'src' / 'nowhere'}: no such plugin directory or archive",
        f"error: {path}: 2 problems; nothing was changed"]
    shape = applied.apply(config(steady=False) + '\n[[plugin]]\nname = "x"\nenabled = "maybe"\n')
    assert (shape.returncode, shape.stdout) == (2, "")
    assert shape.stderr.splitlines() == [
        f"error: {path}: plugin[3] ('x').source: Field required",
        f"error: {path}: plugin[3] ('x').enabled: Input should be a valid boolean",
        f"error: {path}: 2 problems; nothing was changed"]
    unparsable = applied.apply("[[plugin]\n")
    assert unparsable.returncode == 2 and "not valid TOML" in unparsable.stderr
    assert applied.listed() == before
    assert applied.text("steady") == (200, "steady, edited") and applied.text("configured") == (200, "hi")


def test_prune_uninstalls_what_the_file_does_not_list(applied: Applied) -> None:
    only = config().split("[[plugin]]")[2]
    assert applied.apply("[[plugin]]" + only).stdout == "no changes\n"  # unlisted: left alone
    proc = applied.apply("[[plugin]]" + only, "--prune")
    assert proc.stdout.splitlines() == ["- steady uninstalled"], proc.stderr
    assert [p[0] for p in applied.listed()] == ["configured"]
    assert applied.text("steady")[0] == 404


def test_host_install_records_its_source_and_grant_for_export(applied: Applied) -> None:
    grant = applied.dir / "grant.json"
    grant.write_text('{"resources": {"memory_mb": 512}}')
    proc = applied.run("install", str(applied.dir / "src" / "steady"), "--grant", str(grant))
    assert proc.returncode == 0, proc.stderr
    entries = {p["name"]: p for p in json.loads(applied.run("export", "--json").stdout)["plugin"]}
    assert entries["steady"]["source"] == str(applied.dir / "src" / "steady")
    assert entries["steady"]["grant"] == {"resources": {"memory_mb": 512}}
    # the file that says so is what the host has
    same = config().replace("enabled = true\n", "enabled = true\ngrant = { resources = { memory_mb = 512 } }\n", 1)
    assert applied.apply(same).stdout == "no changes\n"


def test_no_secret_in_anything_apply_or_export_printed(applied: Applied) -> None:
    assert applied.outputs
    assert not [out for out in applied.outputs if SECRET in out]

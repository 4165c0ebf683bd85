"""`host apply` / `host export`: reading and writing the file, checking it against sources, and planning."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tomllib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from host import config_file, declarative
from host.bundle import copy_bundle
from host.config_file import DesiredState, PluginSpec
from host.declarative import Current, Resolved, plan, tree_digest
from host.errors import HostError
from host.layout import Layout
from host.registry import Registry
from host.settings import HostSettings
from manifests import Permissions, load_manifest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "plugins"

GOOD = """
[[plugin]]
name = "steady"
source = "plugins/steady"

[[plugin]]
name = "configured"
source = "plugins/configured"
enabled = false
settings = { greeting = "hi", page_size = 5 }

[plugin.grant.requests]
timeout_seconds = 3
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_toml_and_json_alike(tmp_path: Path) -> None:
    state, problems = config_file.read(write(tmp_path, "hosts.toml", GOOD))
    assert problems == [] and state is not None
    as_json = json.dumps(state.model_dump(mode="json"))
    again, problems = config_file.read(write(tmp_path, "hosts.json", as_json))
    assert problems == [] and again == state
    assert [p.name for p in state.plugin] == ["steady", "configured"]
    assert state.plugin[0].enabled and not state.plugin[1].enabled
    assert state.plugin[1].settings == {"greeting": "hi", "page_size": 5}
    assert state.plugin[1].grant.requests.timeout_seconds == 3


def test_format_by_content_when_the_extension_says_nothing(tmp_path: Path) -> None:
    _, problems = config_file.read(write(tmp_path, "plugins.conf", GOOD))
    assert problems == []
    _, problems = config_file.read(write(tmp_path, "plugins.conf", '{"plugin": [{"name": "a", "source": "."}]}'))
    assert problems == []


def test_every_problem_is_one_line_naming_the_plugin_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.toml", """
[[plugin]]
name = "steady"
source = "x"
enabled = "yes"

[[plugin]]
name = "Bad Name"
sorce = "y"

[[plugin]]
name = "net"
source = "z"
grant = { network = { outbound = "everything" } }
""")
    state, problems = config_file.read(path)
    assert state is None
    assert all("\n" not in p and p.startswith(f"{path}: plugin[") for p in problems), problems
    joined = "\n".join(problems)
    assert "plugin[1] ('steady').enabled: Input should be a valid boolean" in joined
    assert "plugin[2] ('Bad Name').name: String should match pattern" in joined
    assert "plugin[2] ('Bad Name').source: Field required" in joined
    assert "plugin[2] ('Bad Name').sorce: Extra inputs are not permitted" in joined
    assert "plugin[3] ('net').grant.network.outbound" in joined


@pytest.mark.parametrize(("text", "expect"), [
    ("[[plugin]\nname=", "not valid TOML"),
    ('{"plugin": [', "not valid JSON"),
    ("[1, 2]", "not valid TOML"),
])
def test_unparsable_file_is_one_line(tmp_path: Path, text: str, expect: str) -> None:
    state, problems = config_file.read(write(tmp_path, "f", text))
    assert state is None and len(problems) == 1 and expect in problems[0]


def test_a_json_array_is_not_a_config(tmp_path: Path) -> None:
    state, problems = config_file.read(write(tmp_path, "f.json", "[]"))
    assert state is None and problems == [f"{tmp_path / 'f.json'}: must hold one object with a list \"plugin\""]


def test_toml_writer_round_trips_awkward_values() -> None:
    entries: list[dict[str, Any]] = [{
        "name": "configured", "source": '/srv/a "quoted" dir/ünï', "enabled": False,
        "secrets_omitted": ["secret_key"],
        "settings": {"greeting": 'line1\nline2\t"q" \\ \x7f 😀', "page_size": -3, "ratio": 1e-05, "debug": True},
        "grant": {"environment": ["TZ_X"], "network": {"outbound": ["api.example.com:443"], "ports": []},
                  "resources": {"memory_mb": 512}, "requests": {"timeout_seconds": 3.0}},
    }, {"name": "steady", "source": "/p", "enabled": True, "settings": {}, "grant": {}}]
    text = config_file.to_toml(entries, {"configured": ["a note"]})
    assert "# a note\n[[plugin]]" in text
    parsed = tomllib.loads(text)
    # empty tables are left out (the same as absent: no settings, the default grant)
    assert parsed == {"plugin": [entries[0], {"name": "steady", "source": "/p", "enabled": True}]}
    DesiredState.model_validate(parsed)


def test_digest_of_a_source_equals_that_of_its_installed_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "steady", src)
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"junk")
    os.symlink("app.py", src / "alias.py")
    os.symlink("/etc/hostname", src / "outside")
    copy_bundle(src, tmp_path / "bundle")
    assert tree_digest(src) == tree_digest(tmp_path / "bundle")
    (src / "app.py").write_text((src / "app.py").read_text() + "\n# changed\n")
    assert tree_digest(src) != tree_digest(tmp_path / "bundle")


# -- planning -----------------------------------------------------------------------------------------------


def resolved(name: str = "configured", digest: str = "d1", **spec: Any) -> Resolved:
    manifest = load_manifest(FIXTURES / name)
    s = PluginSpec(name=manifest.name, source=f"/src/{name}", **spec)
    values = {k: (float(v) if manifest.settings[k].type == "number" else v) for k, v in s.settings.items()}
    return Resolved(s, Path(f"/src/{name}"), FIXTURES / name, manifest, values, digest)


def have(version: str = "1.0.0", enabled: bool = True, digest: str = "d1", source: str = "/src/configured",
         grant: Permissions = Permissions(), **settings: Any) -> Current:  # noqa: B008 - frozen
    return Current(version, enabled, settings, digest, source, grant)


def lines(wanted: list[Resolved], current: dict[str, Current], prune: bool = False) -> list[str]:
    return [c.line for c in plan(wanted, current, prune)]


def test_plan_installs_what_is_missing() -> None:
    assert lines([resolved("steady"), resolved(enabled=False)], {}) == [
        "+ steady 1.0.0 installed", "+ configured 1.0.0 installed (disabled)"]


def test_plan_is_empty_when_converged() -> None:
    r = resolved(settings={"greeting": "hi", "ratio": 1})
    assert lines([r], {"configured": have(greeting="hi", ratio=1.0, secret_key="kept")}) == []


def test_plan_names_only_what_differs_in_order() -> None:
    r = resolved(enabled=False, settings={"greeting": "hi", "secret_key": "s2", "page_size": 20})
    cur = have(greeting="hello", secret_key="s1", page_size=20)
    assert lines([r], {"configured": cur}) == ["- configured disabled",
                                               "~ configured settings: greeting, secret_key"]
    assert lines([resolved()], {"configured": have(enabled=False)}) == ["+ configured enabled"]


def test_plan_upgrades_on_a_new_version_or_new_content() -> None:
    assert lines([resolved()], {"configured": have(version="0.9")}) == ["~ configured 0.9 -> 1.0.0 upgraded"]
    assert lines([resolved(digest="d2")], {"configured": have()}) == [
        "~ configured 1.0.0 reinstalled: its content changed"]


def test_plan_records_a_new_source_or_grant_without_reinstalling() -> None:
    wide = Permissions.model_validate({"network": {"outbound": True}})
    assert lines([resolved()], {"configured": have(source="/elsewhere", grant=wide)}) == [
        "~ configured source and grant recorded"]
    wider = Permissions.model_validate({"resources": {"memory_mb": 512}})
    assert lines([resolved(grant=wider)], {"configured": have()}) == ["~ configured grant recorded"]


def test_plan_leaves_unlisted_plugins_alone_unless_pruning() -> None:
    current = {"configured": have(), "old": have(), "zzz": have()}
    assert lines([resolved()], current) == []
    assert lines([resolved()], current, prune=True) == ["- old uninstalled", "- zzz uninstalled"]


# -- checking the file against its sources and the host -----------------------------------------------------


def check(tmp_path: Path, text: str) -> tuple[list[Resolved], list[str]]:
    registry = Registry(tmp_path / "registry.db")
    path = write(tmp_path, "host.toml", text)
    with ExitStack() as stack:
        return declarative.load(path, registry, Layout(tmp_path / "home"), stack)


def test_sources_are_relative_to_the_file_and_checked(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "steady", tmp_path / "plugins" / "steady")
    wanted, problems = check(tmp_path, '[[plugin]]\nname = "steady"\nsource = "plugins/steady"\n')
    assert problems == []
    assert wanted[0].source == tmp_path / "plugins" / "steady"
    assert wanted[0].digest == tree_digest(FIXTURES / "steady")


def test_an_archive_source_is_checked_as_what_it_holds(tmp_path: Path) -> None:
    shutil.make_archive(str(tmp_path / "steady-1.0"), "gztar", FIXTURES, "steady")
    shutil.copy(FIXTURES / "steady" / "app.py", tmp_path / "not-an-archive.zip")
    with ExitStack() as stack:
        registry = Registry(tmp_path / "registry.db")
        path = write(tmp_path, "host.toml", '[[plugin]]\nname = "steady"\nsource = "steady-1.0.tar.gz"\n'
                                            '[[plugin]]\nname = "fake"\nsource = "not-an-archive.zip"\n')
        wanted, problems = declarative.load(path, registry, Layout(tmp_path / "home"), stack)
        assert [r.manifest.name for r in wanted] == ["steady"]
        assert wanted[0].source == tmp_path / "steady-1.0.tar.gz"
        assert wanted[0].digest == tree_digest(FIXTURES / "steady")  # the same content as the directory
        assert (wanted[0].tree / "plugin.toml").is_file()
        assert len(problems) == 1 and problems[0].startswith(f"{path}: fake: ") and "not a plugin directory" in \
            problems[0]
    assert not wanted[0].tree.exists()  # the unpacked copy lives only while the apply runs


def test_every_problem_with_sources_and_settings_at_once(tmp_path: Path) -> None:
    wanted, problems = check(tmp_path, f"""
[[plugin]]
name = "steady"
source = "{FIXTURES / 'echo'}"

[[plugin]]
name = "configured"
source = "{FIXTURES / 'configured'}"
settings = {{ page_size = "many", mode = "turbo", nope = 1 }}

[[plugin]]
name = "gone"
source = "missing/dir"

[[plugin]]
name = "gone"
source = "missing/dir"
""")
    assert wanted == []
    path = tmp_path / "host.toml"
    assert problems[0] == f"{path}: steady: source {FIXTURES / 'echo'} is plugin 'echo', not 'steady'"
    assert problems[1].startswith(f"{path}: configured: settings.page_size: expected an integer, got 'many'; "
                                  "settings.mode: 'turbo': must be one of 'fast', 'safe'; settings.nope: not a "
                                  "setting of this plugin")
    assert problems[2] == f"{path}: gone: source {tmp_path / 'missing/dir'}: no such plugin directory or archive"
    assert problems[3] == f"{path}: gone: listed twice"
    assert len(problems) == 4


def test_an_enabled_plugin_needs_its_required_settings(tmp_path: Path) -> None:
    text = f'[[plugin]]\nname = "configured"\nsource = "{FIXTURES / "configured"}"\n'
    _, problems = check(tmp_path, text)
    assert problems == [f"{tmp_path / 'host.toml'}: configured: settings: secret_key required (enabled = true), "
                        "and neither the file nor the host has a value"]
    _, problems = check(tmp_path, text + "enabled = false\n")
    assert problems == []
    _, problems = check(tmp_path, text + 'settings = { secret_key = "s" }\n')
    assert problems == []


def test_a_plugin_asking_more_than_its_grant_is_refused_with_the_difference(tmp_path: Path) -> None:
    text = f'[[plugin]]\nname = "egress-probe"\nsource = "{FIXTURES / "egress_probe"}"\n'
    _, problems = check(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'host.toml'}: egress-probe: asks for more than its grant: ")
    assert "network" in problems[0]
    _, problems = check(tmp_path, text + "[plugin.grant.network]\noutbound = true\n")
    assert problems == []


# -- export -------------------------------------------------------------------------------------------------


def installed(tmp_path: Path, name: str, values: dict[str, Any]) -> tuple[HostSettings, Registry]:
    """A home where `host install` put plugin ``name`` (registry row and bundle; no venv, nothing runs)."""
    settings = HostSettings(home=tmp_path / "home")
    layout = Layout(settings.home_dir)
    layout.ensure()
    registry = Registry(layout.registry)
    manifest = load_manifest(FIXTURES / name)
    copy_bundle(FIXTURES / name, layout.install_dir(manifest.name, "1.0.0-abc") / "bundle")
    registry.put(manifest.name, manifest.version, "1.0.0-abc", manifest.model_dump(mode="json"), enabled=True,
                 plugin_settings=values)
    return settings, registry


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_export_applies_back_as_no_changes_and_leaves_secrets_out(tmp_path: Path, fmt: str) -> None:
    settings, registry = installed(tmp_path, "configured", {"secret_key": "SECRET-x", "greeting": "hi", "ratio": 2.0})
    entries, notes = declarative.export(settings, registry)
    text = config_file.to_json(entries) if fmt == "json" else config_file.to_toml(entries, notes)
    assert "SECRET-x" not in text
    assert entries[0]["settings"] == {"greeting": "hi", "ratio": 2.0}
    assert entries[0]["secrets_omitted"] == ["secret_key"]
    # installed before installs were recorded: the installed copy is the source, the grant what it asked for
    assert entries[0]["source"] == str(Layout(settings.home_dir).install_dir("configured", "1.0.0-abc") / "bundle")
    if fmt == "toml":
        assert "# installed before sources were recorded: the source is its installed copy" in text
        assert f"# {config_file.SECRETS_NOTE}: secret_key" in text
    path = write(tmp_path, f"exported.{fmt}", text)
    with ExitStack() as stack:
        wanted, problems = declarative.load(path, registry, Layout(settings.home_dir), stack)
        assert problems == []
        assert plan(wanted, declarative.current(settings, registry)) == []


def test_export_writes_the_source_and_grant_apply_recorded(tmp_path: Path) -> None:
    settings, registry = installed(tmp_path, "steady", {})
    grant = {"resources": {"memory_mb": 1024}, "network": {"outbound": ["api.example.com:443"]}}
    path = write(tmp_path, "host.json", json.dumps({"plugin": [
        {"name": "steady", "source": str(FIXTURES / "steady"), "grant": grant}]}))
    with ExitStack() as stack:
        wanted, _ = declarative.load(path, registry, Layout(settings.home_dir), stack)
        changes = plan(wanted, declarative.current(settings, registry))
        assert [c.line for c in changes] == ["~ steady source and grant recorded"]
        declarative.execute(settings, registry, wanted, changes, "local:test", lambda _: None, lambda _: None)
        assert plan(wanted, declarative.current(settings, registry)) == []
    entries, notes = declarative.export(settings, registry)
    assert entries == [{"name": "steady", "source": str(FIXTURES / "steady"), "enabled": True, "settings": {},
                        "grant": grant}]
    assert notes == {}
    assert registry.events("steady", limit=1)[0].who == "local:test"


def test_a_failed_change_stops_there_and_what_was_printed_is_done(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    settings, registry = installed(tmp_path, "steady", {})
    wanted = [resolved("steady"), resolved("echo"), resolved("configured")]
    changes = [declarative.Change("record", "steady", "~ steady source and grant recorded"),
               declarative.Change("install", "echo", "+ echo 1.0.0 installed"),
               declarative.Change("install", "configured", "+ configured 1.0.0 installed")]

    def fail(*args: Any) -> None:
        raise HostError("install failed while installing packages: no network", plugin="echo")

    monkeypatch.setattr(declarative, "_install", fail)
    printed: list[str] = []
    with pytest.raises(HostError, match="echo: install failed"):
        declarative.execute(settings, registry, wanted, changes, "local:test", lambda _: None, printed.append)
    assert printed == ["~ steady source and grant recorded"]
    assert [r.name for r in registry.all()] == ["steady"]


def test_standard_input_is_read_as_json_or_toml(monkeypatch: pytest.MonkeyPatch) -> None:
    for text in ('{"plugin": [{"name": "steady", "source": "s"}]}', GOOD):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
        state, problems = config_file.read(Path("-"))
        assert problems == [] and state is not None and state.plugin[0].name == "steady"


# -- the commands (in process: nothing is installed or started) ---------------------------------------------


def host(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from host import cli

    monkeypatch.setattr(sys, "argv", ["host", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_apply_creates_a_new_home_but_a_dry_run_does_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    empty = write(tmp_path, "empty.toml", "plugin = []\n")
    home = tmp_path / "home"
    code, _, err = host(monkeypatch, capsys, "--home", str(home), "apply", "--dry-run", str(empty))
    assert code == 2 and err.startswith(f"error: no plugin host at {home}")
    assert not home.exists()
    assert host(monkeypatch, capsys, "--home", str(home), "apply", str(empty)) == (0, "no changes\n", "")
    assert (home / "registry.db").is_file()
    assert host(monkeypatch, capsys, "--home", str(home), "export", "--json") == (0, '{\n  "plugin": []\n}\n', "")


def test_apply_prints_each_problem_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.json", '{"plugin": [{"name": "steady", "source": "nowhere", "enabled": 1}]}')
    code, out, err = host(monkeypatch, capsys, "--home", str(tmp_path / "home"), "apply", str(bad))
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"error: {bad}: plugin[1] ('steady').enabled: Input should be a valid boolean",
                                f"error: {bad}: 1 problem; nothing was changed"]


def test_a_recorded_source_that_is_gone_is_exported_as_the_installed_copy(tmp_path: Path) -> None:
    settings, registry = installed(tmp_path, "steady", {})
    gone = tmp_path / "scratch" / "steady"
    grant = Permissions.model_validate({"resources": {"memory_mb": 512}})
    declarative.remember(registry, "steady", gone, grant, "local:test", "1.0.0-abc")
    entries, notes = declarative.export(settings, registry)
    copy = Layout(settings.home_dir).install_dir("steady", "1.0.0-abc") / "bundle"
    assert entries[0]["source"] == str(copy) and entries[0]["grant"] == {"resources": {"memory_mb": 512}}
    assert notes == {"steady": [f"installed from {gone}, which is gone: the source is its installed copy"]}
    path = write(tmp_path, "exported.toml", config_file.to_toml(entries, notes))
    with ExitStack() as stack:
        wanted, problems = declarative.load(path, registry, Layout(settings.home_dir), stack)
        assert problems == [] and plan(wanted, declarative.current(settings, registry)) == []

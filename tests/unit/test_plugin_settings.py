"""A manifest's [settings]: declarations, operator input checked against them, what the plugin gets, what an
upgrade keeps, and what the operator sees (secrets never), plus the registry's migration that stores them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from host import plugin_settings as ps
from host.configure import render
from host.errors import MissingSettings, PluginNotFound, SettingsError
from host.registry import SCHEMA_VERSION, Registry
from manifests import Manifest, ManifestValidationError, json_schema, parse_manifest
from manifests.settings import values_schema

SECRET = "hunter2-secret-value"


def manifest(**settings: Any) -> Manifest:
    return parse_manifest({"name": "demo", "version": "1.0", "entrypoint": "app:app", "settings": settings})


M = manifest(
    secret_key={"secret": True, "required": True, "description": "signs cookies"},
    greeting={"default": "hello"},
    page_size={"type": "integer", "default": 20},
    ratio={"type": "number"},
    debug={"type": "boolean", "default": False},
    mode={"choices": ["fast", "safe"], "default": "safe"},
)


@pytest.mark.parametrize(("settings", "error"), [
    ({"Secret": {}}, "settings.Secret.[key]: must match ^[a-z][a-z0-9_]{0,63}$"),
    ({"path": {}}, "settings: 'path': its environment variable PATH is the runtime's own"),
    ({"pythonpath": {}}, "settings: 'pythonpath': its environment variable PYTHONPATH is the runtime's own"),
    ({"ld_preload": {}}, "LD_PRELOAD is the runtime's own"),
    ({"plugin_name": {}}, "PLUGIN_NAME is the runtime's own"),
    ({"http_proxy": {}}, "HTTP_PROXY is the runtime's own"),
    ({"user": {}}, "USER is the runtime's own"),
    ({"a": {"type": "integer", "default": "x"}}, "settings.a: expected an integer, got 'x'"),
    ({"a": {"secret": True, "default": "x"}}, "settings.a: a secret cannot have a default: the manifest is public"),
    ({"a": {"required": True, "default": "x"}}, "settings.a: a required setting has no default"),
    ({"a": {"type": "boolean", "choices": [True]}}, "settings.a: a boolean has its two values already"),
    ({"a": {"choices": ["x", "x"]}}, "settings.a: choices: each value once"),
    ({"a": {"default": "b", "choices": ["a"]}}, "settings.a: 'b': must be one of 'a'"),
    ({"a": {"typo": 1}}, "settings.a.typo: is not a known field"),
    ({"a": {"type": "float"}}, "settings.a.type: Input should be 'string', 'integer', 'number' or 'boolean'"),
    ({"a": {"description": "x\x1b[2J"}}, "settings.a: description: one line of text without control characters"),
])
def test_bad_declarations_are_refused_naming_the_key(settings: dict[str, Any], error: str) -> None:
    with pytest.raises(ManifestValidationError) as exc:
        manifest(**settings)
    assert error in str(exc.value)


def test_a_setting_cannot_claim_a_variable_passed_from_the_host() -> None:
    raw = {"name": "demo", "version": "1.0", "entrypoint": "app:app", "settings": {"api_key": {}},
           "permissions": {"environment": ["API_KEY"]}}
    with pytest.raises(ManifestValidationError, match=r"settings\.api_key: API_KEY is also in permissions\."):
        parse_manifest(raw)


def test_the_manifest_schema_still_exports_and_describes_settings() -> None:
    schema = json.loads(json_schema())
    assert schema["properties"]["settings"]["patternProperties"] == {
        "^[a-z][a-z0-9_]{0,63}$": {"$ref": "#/$defs/Setting"}}
    assert set(schema["$defs"]["Setting"]["properties"]) == {"type", "description", "default", "required", "secret",
                                                             "choices"}
    values = values_schema(M.settings)
    assert values["required"] == ["secret_key"] and values["additionalProperties"] is False
    assert values["properties"]["mode"] == {"type": "string", "default": "safe", "enum": ["fast", "safe"],
                                            "maxLength": 16384}
    assert values["properties"]["secret_key"]["writeOnly"] is True


@pytest.mark.parametrize(("word", "value"), [
    ("page_size=50", 50), ("page_size= -3 ", -3), ("ratio=0.25", 0.25), ("ratio=1", 1.0), ("debug=yes", True),
    ("debug=OFF", False), ("mode=fast", "fast"), ("greeting=a=b", "a=b"), ("greeting=", ""),
])
def test_command_line_values_are_typed(word: str, value: object) -> None:
    got = ps.parse_assignments(M, [word])
    assert got == {word.partition("=")[0]: value} and type(next(iter(got.values()))) is type(value)


@pytest.mark.parametrize(("words", "error"), [
    (["page_size=1.5"], "demo: page_size: expected an integer, got '1.5'"),
    (["ratio=inf"], "demo: ratio: expected a number (e.g. 0.5), got 'inf'"),
    (["debug=2"], "demo: debug: expected true or false, got '2'"),
    (["mode=slow"], "demo: mode: 'slow': must be one of 'fast', 'safe'"),
    (["nope=1"], "demo: nope: not a setting of this plugin (its settings: secret_key, greeting, page_size, ratio, "
                 "debug, mode)"),
    (["greeting"], "demo: 'greeting': write KEY=VALUE"),
    (["greeting=a\x00b"], "demo: greeting: control characters other than tab and line breaks are not allowed"),
])
def test_bad_values_are_one_usage_line(words: list[str], error: str) -> None:
    with pytest.raises(SettingsError) as exc:
        ps.parse_assignments(M, words)
    assert str(exc.value) == error and exc.value.exit_code == 2


def test_a_rejected_secret_is_never_quoted() -> None:
    m = manifest(pin={"type": "integer", "secret": True}, word={"secret": True, "choices": ["a"]})
    for word in (f"pin={SECRET}", f"word={SECRET}"):
        with pytest.raises(SettingsError) as exc:
            ps.parse_assignments(m, [word])
        assert SECRET not in str(exc.value)
    assert str(exc.value) == "demo: word: must be one of 'a'"


def test_files_json_and_toml(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps({"secret_key": SECRET, "page_size": 5, "debug": True}))
    assert ps.read_file(M, tmp_path / "s.json") == {"secret_key": SECRET, "page_size": 5, "debug": True}
    (tmp_path / "s.toml").write_text('ratio = 2\nmode = "fast"\n')
    assert ps.read_file(M, tmp_path / "s.toml") == {"ratio": 2.0, "mode": "fast"}
    (tmp_path / "bad.json").write_text('{"secret_key": "' + SECRET + '",')
    with pytest.raises(SettingsError) as exc:
        ps.read_file(M, tmp_path / "bad.json")
    assert "not valid JSON" in str(exc.value) and SECRET not in str(exc.value)
    (tmp_path / "typed.json").write_text(json.dumps({"page_size": "5"}))  # typed files are not coerced
    with pytest.raises(SettingsError, match="page_size: expected an integer, got '5'"):
        ps.read_file(M, tmp_path / "typed.json")


def test_a_plugin_starts_with_defaults_and_values_and_never_without_a_required_one(tmp_path: Path) -> None:
    with pytest.raises(MissingSettings) as exc:
        ps.for_start(M, {"page_size": 3})
    assert exc.value.detail == "missing required setting secret_key: set it with `host config demo secret_key=...`"
    values = ps.for_start(M, {"secret_key": SECRET, "page_size": 3, "gone": 1})
    assert values == {"secret_key": SECRET, "greeting": "hello", "page_size": 3, "debug": False, "mode": "safe"}
    env = ps.environment(M, values, tmp_path)
    assert env == {"SECRET_KEY": SECRET, "GREETING": "hello", "PAGE_SIZE": "3", "DEBUG": "false", "MODE": "safe",
                   "PLUGIN_SETTINGS_FILE": str(tmp_path / "settings.json")}
    assert ps.environment(manifest(), {}, tmp_path) == {}  # a plugin without [settings] gets nothing new
    two = manifest(a={"required": True}, b={"required": True})
    assert MissingSettings("demo", ps.missing(two, {})).detail == \
        "missing required settings a, b: set them with `host config demo a=... b=...`"


def test_an_upgrade_keeps_what_is_still_declared_and_valid() -> None:
    new = manifest(secret_key={"secret": True}, page_size={"type": "number"}, mode={"choices": ["safe"]})
    kept, dropped = ps.kept_on_upgrade(new, {"secret_key": SECRET, "greeting": "hi", "page_size": 3, "mode": "fast"})
    assert kept == {"secret_key": SECRET, "page_size": 3.0}
    assert dropped == ["greeting", "mode"]


def test_the_operator_sees_dots_for_a_secret_and_every_other_value() -> None:
    shown = {"plugin": "demo", "settings": ps.view(M, {"secret_key": SECRET, "page_size": 7}), "idle_timeout": None,
             "idle_timeout_default": 0.0}
    assert SECRET not in json.dumps(shown)
    lines = render(shown)
    assert SECRET not in "\n".join(lines)
    assert lines[0].startswith("secret_key = ••••") and lines[0].endswith("# string, secret, required — signs cookies")
    assert lines[2].startswith("page_size = 7 ") and lines[1].startswith('greeting = "hello" (default) ')
    assert lines[3].startswith("ratio = (not set) ") and lines[-1] == "idle_timeout = 0.0 (host default)"
    unset = render({**shown, "settings": ps.view(M, {})})
    assert unset[0].startswith("secret_key = (not set)")
    assert unset[0].endswith("set it: host config demo secret_key=...")


# -- the registry -----------------------------------------------------------------------------------------

# The schema of a registry created before settings existed (user_version 0).
OLD_SCHEMA = """
CREATE TABLE plugins (name TEXT PRIMARY KEY, version TEXT NOT NULL, install_id TEXT NOT NULL, manifest TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1, uid_index INTEGER NOT NULL UNIQUE, installed_at REAL NOT NULL,
    updated_at REAL NOT NULL);
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, plugin TEXT, kind TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}');
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO plugins VALUES ('demo', '1.0', 'i1', '{}', 1, 1, 0, 0);
INSERT INTO settings VALUES ('idle_timeout:demo', '30.0');
"""


def test_an_existing_home_is_migrated_and_keeps_its_plugins(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_SCHEMA)
    reg = Registry(db)
    assert reg.require("demo").install_id == "i1" and reg.get_setting("idle_timeout:demo") == "30.0"
    assert reg.plugin_settings("demo") == {}
    reg.set_plugin_settings("demo", {"secret_key": SECRET, "page_size": 3})
    assert Registry(db).plugin_settings("demo") == {"page_size": 3, "secret_key": SECRET}  # reopened: not again
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1


def test_settings_are_audited_by_key_only_and_replaced_by_an_upgrade(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.db")
    reg.put("demo", "1.0", "i1", {}, True, uid_index=1)
    reg.set_plugin_settings("demo", {"secret_key": SECRET, "greeting": "hi"})
    reg.set_plugin_settings("demo", {}, unset=("greeting",))
    assert reg.plugin_settings("demo") == {"secret_key": SECRET}
    events = [e for e in reg.events("demo") if e.kind == "settings_changed"]
    assert [e.detail for e in events] == [{"set": [], "unset": ["greeting"]}, {"set": ["greeting", "secret_key"],
                                                                                "unset": []}]
    assert SECRET not in json.dumps([e.detail for e in reg.events()])
    reg.put("demo", "2.0", "i2", {}, True, plugin_settings={"page_size": 9})
    assert reg.plugin_settings("demo") == {"page_size": 9}
    reg.remove("demo", keep_uid=True)  # --keep-data keeps them for a reinstall
    assert reg.plugin_settings("demo") == {"page_size": 9}
    reg.put("demo", "2.0", "i3", {}, True, uid_index=1)
    reg.remove("demo")
    assert reg.plugin_settings("demo") == {}
    with pytest.raises(PluginNotFound):
        reg.set_plugin_settings("demo", {"a": 1})

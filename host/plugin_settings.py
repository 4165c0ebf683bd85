"""A plugin's settings: operator input checked against its manifest's ``[settings]``, and what the plugin gets.

Values live in the registry (``plugin_settings``, root-only like the whole file). At each start the plugin gets
every declared key that has a value (set, or its default) as the environment variable ``KEY`` and in
``settings.json`` in its data dir (0400, its own uid), written by root through host.rootfs. A required key without
a value stops the start (:class:`MissingSettings`, a set-up failure: not retried, not a crash loop).

Secret values leave this module only toward the plugin (its environment, its settings.json) and the registry:
never in an error message, a log line, an audit event or anything the CLI prints (:data:`MASK`).
Imports neither the supervisor nor the web tier.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host import rootfs
from host.errors import MissingSettings, SettingsError
from host.layout import Layout
from manifests.setting_rules import Value, env_name, to_env

if TYPE_CHECKING:
    from manifests import Manifest
    from manifests.settings import Setting

MASK = "••••"
SETTINGS_FILE = "settings.json"
SETTINGS_FILE_ENV = "PLUGIN_SETTINGS_FILE"
MAX_FILE = 1 << 20  # --from-file: a settings file is small


def _declared(manifest: Manifest, key: str) -> Setting:
    setting = manifest.settings.get(key)
    if setting is None:
        known = ", ".join(manifest.settings) or "none"
        raise SettingsError(manifest.name, key, f"not a setting of this plugin (its settings: {known})")
    return setting


def parse_assignments(manifest: Manifest, pairs: Iterable[str]) -> dict[str, Value]:
    """``key=value`` words from the command line → checked values; SettingsError (exit 2) on the first bad one."""
    out: dict[str, Value] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise SettingsError(manifest.name, None, f"{pair.split()[0][:64]!r}: write KEY=VALUE")
        setting = _declared(manifest, key)
        try:
            out[key] = setting.parse(text)
        except ValueError as exc:
            raise SettingsError(manifest.name, key, str(exc)) from None
    return out


def parse_mapping(manifest: Manifest, raw: Mapping[str, Any]) -> dict[str, Value]:
    """Typed values (a JSON object or a TOML table) → checked values."""
    out: dict[str, Value] = {}
    for key, value in raw.items():
        setting = _declared(manifest, str(key))
        try:
            out[str(key)] = setting.check(value)
        except ValueError as exc:
            raise SettingsError(manifest.name, str(key), str(exc)) from None
    return out


def read_file(manifest: Manifest, path: Path) -> dict[str, Value]:
    """``--from-file``: a ``.toml`` file, or JSON (``.json``, or ``-`` for standard input, which keeps secrets out
    of the command line that `ps` shows everyone)."""
    try:
        if str(path) == "-":
            text = sys.stdin.read(MAX_FILE + 1)
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read(MAX_FILE + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(manifest.name, None, f"{path}: cannot read: {exc}") from exc
    if len(text) > MAX_FILE:
        raise SettingsError(manifest.name, None, f"{path}: larger than {MAX_FILE} bytes")
    import tomllib  # `host config --from-file` only: not resident in the supervisor

    try:
        raw: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except ValueError as exc:  # TOMLDecodeError and JSONDecodeError both are; their messages quote no text
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise SettingsError(manifest.name, None, f"{path}: not valid {kind}: {exc}") from None
    if not isinstance(raw, dict):
        raise SettingsError(manifest.name, None, f"{path}: must hold one object of key: value")
    return parse_mapping(manifest, raw)


def check_unset(manifest: Manifest, keys: Iterable[str]) -> tuple[str, ...]:
    for key in keys:
        _declared(manifest, key)
    return tuple(keys)


def stored_values(manifest: Manifest, stored: Mapping[str, Any]) -> dict[str, Value]:
    """The stored values this manifest still declares and accepts (an upgrade may drop or retype a key)."""
    out: dict[str, Value] = {}
    for key, value in stored.items():
        setting = manifest.settings.get(key)
        if setting is None:
            continue
        try:
            out[key] = setting.check(value)
        except ValueError:
            continue
    return out


def effective(manifest: Manifest, stored: Mapping[str, Any]) -> dict[str, Value]:
    """What the plugin gets: each declared key's stored value, else its default (keys with neither are absent)."""
    values = stored_values(manifest, stored)
    for key, s in manifest.settings.items():
        if key not in values and s.default is not None:
            values[key] = s.default
    return {key: values[key] for key in manifest.settings if key in values}  # in declaration order


def missing(manifest: Manifest, stored: Mapping[str, Any]) -> list[str]:
    """Required keys without a value."""
    have = stored_values(manifest, stored)
    return [key for key, s in manifest.settings.items() if s.required and key not in have]


def for_start(manifest: Manifest, stored: Mapping[str, Any]) -> dict[str, Value]:
    """The values to start with; MissingSettings when a required one has none."""
    absent = missing(manifest, stored)
    if absent:
        raise MissingSettings(manifest.name, absent)
    return effective(manifest, stored)


def environment(manifest: Manifest, values: Mapping[str, Value], data_dir: Path) -> dict[str, str]:
    """The variables the plugin finds its settings in (nothing for a plugin without ``[settings]``)."""
    if not manifest.settings:
        return {}
    env = {env_name(key): to_env(value) for key, value in values.items()}
    env[SETTINGS_FILE_ENV] = str(data_dir / SETTINGS_FILE)
    return env


def write_settings_file(layout: Layout, name: str, values: Mapping[str, Value], uid: int | None) -> None:
    """``<data dir>/settings.json``: the plugin's uid may read it, no one else (0400). Root writes a new file
    and renames it into place from the data dir's descriptor: a symlink, hard link or directory the plugin left
    at that name is replaced, never followed."""
    data_root = rootfs.open_dir(layout.home / "data")
    try:
        data = rootfs.open_beneath(data_root, name, rootfs.DIR_FLAGS)
    finally:
        os.close(data_root)
    try:
        body = json.dumps(dict(values), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        rootfs.write_file_at(data, SETTINGS_FILE, body.encode(), 0o400, uid)
    finally:
        os.close(data)


def kept_on_upgrade(new: Manifest, stored: Mapping[str, Any]) -> tuple[dict[str, Value], list[str]]:
    """(values the new version keeps, keys dropped: no longer declared, or no longer valid for their type)."""
    kept = stored_values(new, stored)
    return kept, sorted(set(stored) - set(kept))


def view(manifest: Manifest, stored: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`host config NAME`: each declared setting, with secrets as MASK (or None when unset)."""
    values = stored_values(manifest, stored)
    rows = []
    for key, s in manifest.settings.items():
        is_set = key in values
        value = values[key] if is_set else s.default
        rows.append({
            "key": key, "env": env_name(key), "type": s.type, "secret": s.secret, "required": s.required,
            "set": is_set, "default": s.default, "choices": list(s.choices) if s.choices is not None else None,
            "description": s.description,
            "value": MASK if s.secret and value is not None else value,
        })
    return rows

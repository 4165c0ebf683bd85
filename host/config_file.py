"""The declarative config file of `host apply` / `host export`: its model, reading it (TOML or JSON) and writing it.

Pure: no registry, no processes. Every problem comes back as one line naming the file and the plugin, so `host
apply` can show them all at once and change nothing (host.declarative).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from manifests import Permissions
from manifests.model import NAME_PATTERN
from manifests.settings import SettingKey

MAX_FILE = 4 << 20
MAX_PLUGINS = 1024
SettingValue = StrictBool | StrictInt | StrictFloat | StrictStr


class PluginSpec(BaseModel):
    """One ``[[plugin]]``: where it comes from, whether it runs, its settings and what the operator grants it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    source: Annotated[str, Field(min_length=1, max_length=4096,
                                 description="A plugin directory or archive (.zip, .tar.gz, .tgz, .tar); "
                                             "relative to the file's directory.")]
    enabled: StrictBool = True
    settings: dict[SettingKey, SettingValue] = Field(
        default_factory=dict, description="Values for the manifest's [settings]; keys not listed keep theirs.")
    grant: Permissions = Field(default_factory=Permissions,
                               description="What the operator grants: the shape of a manifest's [permissions].")
    secrets_omitted: tuple[SettingKey, ...] = Field(
        (), description="Written by `host export`: secret settings it left out. Apply ignores it.")


class DesiredState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    plugin: tuple[PluginSpec, ...] = Field((), max_length=MAX_PLUGINS)


def is_toml(path: Path, text: str) -> bool:
    """By extension; otherwise by content (JSON is an object, TOML is not)."""
    if path.suffix == ".toml":
        return True
    if path.suffix == ".json":
        return False
    return not text.lstrip().startswith("{")


def read(path: Path) -> tuple[DesiredState | None, list[str]]:
    """Parse and check the file's shape: (the state, []) or (None, one line per problem)."""
    try:
        with contextlib.nullcontext(sys.stdin.buffer) if str(path) == "-" else open(path, "rb") as fh:
            data = fh.read(MAX_FILE + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path}: cannot read: {exc}"]
    if len(data) > MAX_FILE:
        return None, [f"{path}: larger than {MAX_FILE} bytes"]
    toml = is_toml(path, text)
    try:
        raw: Any = tomllib.loads(text) if toml else json.loads(text)
    except ValueError as exc:  # the decoders' messages give the position, never the text
        return None, [f"{path}: not valid {'TOML' if toml else 'JSON'}: {exc}"]
    if not isinstance(raw, dict):
        return None, [f"{path}: must hold one object with a list \"plugin\""]
    try:
        return DesiredState.model_validate(raw), []
    except ValidationError as exc:
        return None, [f"{path}: {_where(raw, err['loc'])}: {err['msg']}" for err in exc.errors()]


def _where(raw: dict[str, Any], loc: tuple[int | str, ...]) -> str:
    """``plugin[2] (notes).settings.greeting`` from pydantic's location, naming the plugin when it can."""
    if len(loc) >= 2 and loc[0] == "plugin" and isinstance(loc[1], int):
        entries = raw.get("plugin")
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        head = f"plugin[{loc[1] + 1}]" + (f" ({str(name)[:32]!r})" if isinstance(name, str) else "")
        return ".".join([head, *(str(p) for p in loc[2:])])
    return ".".join(str(p) for p in loc) or "(top level)"


# -- writing ------------------------------------------------------------------------------------------------

HEADER = ("Written by `host export`: the installed plugins, their settings and grants. `host apply FILE` makes a "
          "host match it.")
SECRETS_NOTE = "secret settings are not exported; apply leaves their values on the host as they are"


def to_json(entries: list[dict[str, Any]]) -> str:
    return json.dumps({"plugin": entries}, indent=2, ensure_ascii=False) + "\n"


def to_toml(entries: list[dict[str, Any]], notes: dict[str, list[str]] | None = None) -> str:
    """Each entry as a ``[[plugin]]`` table; ``notes``: comment lines to put above a plugin's entry."""
    out = [f"# {HEADER}", ""]
    for entry in entries:
        for note in (notes or {}).get(str(entry.get("name")), []):
            out.append(f"# {note}")
        out.append("[[plugin]]")
        _table(out, "plugin", entry)
        out.append("")
    return "\n".join(out)


def _table(out: list[str], path: str, table: dict[str, Any]) -> None:
    subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
    for key, value in table.items():
        if key not in subtables:
            out.append(f"{_key(key)} = {_value(value)}")
    for key, value in subtables.items():
        if not value:
            continue
        sub = f"{path}.{_key(key)}"
        if any(not isinstance(v, dict) for v in value.values()):
            out.append(f"[{sub}]")
        _table(out, sub, value)


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE.match(key) else _string(key)


def _string(text: str) -> str:
    # JSON's escapes are TOML's (with ensure_ascii=False no surrogate pairs); TOML also forbids a raw DEL
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no TOML spelling here")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")

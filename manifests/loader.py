"""Read plugin.toml from disk into a Manifest, turning every failure into one ManifestError line."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from manifests.errors import ManifestNotFound, ManifestSyntaxError, ManifestValidationError
from manifests.model import Manifest

MANIFEST_FILE = "plugin.toml"


def load_manifest(plugin_dir: Path | str) -> Manifest:
    """Load ``<plugin_dir>/plugin.toml``; raise a ManifestError naming the file and field."""
    path = Path(plugin_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestNotFound(path, "no plugin.toml found; a plugin directory must contain one")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestSyntaxError(path, f"not valid TOML: {exc}") from exc
    return parse_manifest(raw, path)


def parse_manifest(raw: dict[str, Any], path: Path | str = MANIFEST_FILE) -> Manifest:
    """Validate an already-parsed manifest mapping."""
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise ManifestValidationError(path, _explain(err), field=field) from exc


def _explain(err: Any) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field (check spelling; unknown permissions are never granted)"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def json_schema() -> str:
    """The manifest's JSON Schema, for editors and CI linting of plugin repos."""
    return json.dumps(Manifest.model_json_schema(), indent=2)

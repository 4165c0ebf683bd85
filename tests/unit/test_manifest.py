"""The plugin.toml schema: what is accepted, what is refused, and how refusals read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manifests import (
    ManifestError,
    ManifestNotFound,
    ManifestSyntaxError,
    ManifestValidationError,
    json_schema,
    load_manifest,
    parse_manifest,
)

MINIMAL = {"name": "echo", "version": "1.0.0", "entrypoint": "app:app", "requirements": ["six==1.16.0"]}


def test_minimal_manifest_is_accepted_and_denies_everything_else() -> None:
    m = parse_manifest(MINIMAL)
    assert m.name == "echo" and m.is_wsgi_entrypoint
    p = m.permissions
    assert p.network.outbound is False
    assert p.filesystem.read == () and p.filesystem.write == ()
    assert p.environment == ()
    assert p.host_api == ()


def test_factory_call_syntax_is_accepted() -> None:
    assert parse_manifest({**MINIMAL, "entrypoint": "pkg.app:create_app()"}).is_wsgi_entrypoint


def test_bare_module_entrypoint_means_plugin_base_style() -> None:
    assert not parse_manifest({**MINIMAL, "entrypoint": "example_plugin"}).is_wsgi_entrypoint


@pytest.mark.parametrize(("patch", "field", "message"), [
    ({"name": "Echo"}, "name", "must match ^[a-z][a-z0-9-]{0,31}$"),
    ({"name": "../etc"}, "name", "must match"),
    ({"name": "a" * 33}, "name", "must match"),
    ({"version": "one"}, "version", "is not a PEP 440 version"),
    ({"entrypoint": "app:make(1)"}, "entrypoint", "must match"),
    ({"entrypoint": "os.system('x')"}, "entrypoint", "must match"),
    ({"requirements": ["--index-url http://evil/"]}, "requirements", "must be a PEP 508 requirement"),
    ({"requirements": ["pkg @ https://evil/pkg.whl"]}, "requirements", "no URLs"),
    ({"requirements": ["-e ."]}, "requirements", "must be a PEP 508 requirement"),
    ({"permissoins": {}}, "permissoins", "is not a known field"),
    ({"permissions": {"network": {"outbound": True, "ports": [0]}}}, "permissions.network.ports.0", "greater"),
    ({"permissions": {"filesystem": {"read": ["etc/passwd"]}}}, "permissions.filesystem.read", "absolute"),
    ({"permissions": {"filesystem": {"write": ["/srv/../etc"]}}}, "permissions.filesystem.write", "'..'"),
    ({"permissions": {"environment": ["LD_PRELOAD"]}}, "permissions.environment", "may not be passed"),
    ({"permissions": {"resources": {"memory_mb": 1}}}, "permissions.resources.memory_mb", "greater than"),
    ({"permissions": {"host_api": ["root"]}}, "permissions.host_api.0", "Input should be"),
])
def test_invalid_manifests_name_the_field_and_the_rule(patch: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(ManifestValidationError) as exc:
        parse_manifest({**MINIMAL, **patch}, "plugins/x/plugin.toml")
    assert exc.value.field == field
    assert message in str(exc.value)
    assert str(exc.value).startswith(f"plugins/x/plugin.toml: {field}: ")
    assert "\n" not in str(exc.value)


def test_missing_field_is_reported() -> None:
    with pytest.raises(ManifestValidationError, match="entrypoint: is required"):
        parse_manifest({"name": "x", "version": "1"})


def test_manifest_is_frozen() -> None:
    m = parse_manifest(MINIMAL)
    with pytest.raises(ValueError):
        m.name = "other"  # type: ignore[misc]


def test_load_from_disk_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestNotFound):
        load_manifest(tmp_path)
    (tmp_path / "plugin.toml").write_text("name = ")
    with pytest.raises(ManifestSyntaxError, match="not valid TOML"):
        load_manifest(tmp_path)
    (tmp_path / "plugin.toml").write_text('name = "ok"\nversion = "1.0"\nentrypoint = "app:app"\n')
    assert load_manifest(tmp_path).name == "ok"


def test_errors_share_one_root() -> None:
    for cls in (ManifestNotFound, ManifestSyntaxError, ManifestValidationError):
        assert issubclass(cls, ManifestError)


def test_json_schema_export_describes_the_manifest() -> None:
    schema = json.loads(json_schema())
    assert schema["properties"]["name"]["pattern"] == "^[a-z][a-z0-9-]{0,31}$"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "version", "entrypoint"}

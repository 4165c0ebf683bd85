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
    ({"permissions": {"host_api": ["root"]}}, "permissions.host_api", "not a host API permission"),
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


# pip splits a requirements file with str.splitlines(): \r, \v, \f, \x1c-\x1e and \x85 end a line, so each of
# these entries would hand pip an option line of its own. A regex anchored with ^...$ let them through.
@pytest.mark.parametrize("entry", [
    "six==1.16.0\r--index-url=http://127.0.0.1:9/simple",
    "six\v--trusted-host evil.example",
    "six\f--extra-index-url http://evil.example/",
    "six\n-r /etc/shadow",
    "six\x85--index-url=http://evil/",
    "six\t; python_version >= '3'",
    "s\u0131x==1.0",  # dotless i: looks like six, is not ASCII
    "six\x1b[1A\x1b[2K",
])
def test_cant_smuggle_pip_lines_through_a_requirement(entry: str) -> None:
    with pytest.raises(ManifestValidationError) as exc:
        parse_manifest({**MINIMAL, "requirements": ["flask", entry]}, "p/plugin.toml")
    assert exc.value.field == "requirements"
    message = str(exc.value)
    assert message == (f"p/plugin.toml: requirements: {entry!a}: only printable ASCII is allowed "
                       "(no control or non-ASCII characters)")
    assert message.isprintable() and message.isascii()  # one line, every control character shown escaped


@pytest.mark.parametrize(("entry", "message"), [
    ("--index-url=http://evil/", "not a pip option"),
    ("  -e .", "not a pip option"),
    ("pkg @ https://evil/pkg.whl", "by name (no URLs or paths)"),
    ("pkg@file:///etc/passwd", "by name (no URLs or paths)"),
    ("./local/pkg", "must be a PEP 508 requirement such as 'six==1.16.0' (Expected package name"),
    ("/abs/pkg", "must be a PEP 508 requirement"),
    ("evil.whl", "pip would read 'evil.whl' as a file name"),
    ("evil.tar.gz[x]", "pip would read 'evil.tar.gz' as a file name"),
    ("six --hash=sha256:00", "must be a PEP 508 requirement"),
    ("six; os_name == 'a --index-url=http://evil/'", "may not contain '$'"),
    ("six; os_name == 'x #'", "may not contain '$'"),
    ("six; os_name == '${PIP_INDEX_URL}'", "may not contain '$'"),
    ("six; os_name == 'x\\'", "must be a PEP 508 requirement"),
    ("", "must be a PEP 508 requirement"),
])
def test_requirements_are_plain_pep508_names(entry: str, message: str) -> None:
    with pytest.raises(ManifestValidationError) as exc:
        parse_manifest({**MINIMAL, "requirements": [entry]})
    assert exc.value.field == "requirements"
    assert f"requirements: {entry!a}: " in str(exc.value)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_ordinary_requirements_are_accepted() -> None:
    reqs = ["six==1.16.0", "Flask[async]>=2.2,<4", "humanize (>=4.0)", "tomli; python_version < '3.11'",
            "zope.interface~=6.0", "backports-zoneinfo; platform_release == '5.4-generic'"]
    assert parse_manifest({**MINIMAL, "requirements": reqs}).requirements == tuple(reqs)


@pytest.mark.parametrize("text", ["\x1b[1A\x1b[2Kplugin: trusted 1.0", "line\nrisk: 1/8", "a\rb", "\u202eevil",
                                  "\x9b2K"])
def test_description_is_one_line_without_control_characters(text: str) -> None:
    with pytest.raises(ManifestValidationError) as exc:
        parse_manifest({**MINIMAL, "description": text})
    assert exc.value.field == "description"
    assert str(exc.value).isprintable()
    assert parse_manifest({**MINIMAL, "description": "Notes — with ünïcode, ✓"}).description


def test_filesystem_paths_and_health_path_refuse_control_characters() -> None:
    with pytest.raises(ManifestValidationError, match=r"'/srv/\\x1b\[2K': must be an absolute path"):
        parse_manifest({**MINIMAL, "permissions": {"filesystem": {"read": ["/srv/\x1b[2K"]}}})
    with pytest.raises(ManifestValidationError, match="health_path: must match"):
        parse_manifest({**MINIMAL, "health_path": "/\x1b[2K"})

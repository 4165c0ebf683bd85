"""The entrypoint is found (or not) in the plugin directory without running any of its code."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifests import EntrypointNotFound, parse_manifest
from manifests.entrypoint import check_entrypoint

REPO = Path(__file__).resolve().parents[2]


def plugin(tmp_path: Path, entrypoint: str, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def check(path: Path, entrypoint: str, requirements: tuple[str, ...] = ()) -> str:
    m = parse_manifest({"name": "p", "version": "1.0", "entrypoint": entrypoint,
                        "requirements": list(requirements)}, "plugin.toml")
    return check_entrypoint(path, m)


def test_the_fixture_whose_attribute_does_not_exist_is_refused() -> None:
    m = parse_manifest({"name": "unknown-entrypoint", "version": "1.0.0", "entrypoint": "app:application"}, "x")
    with pytest.raises(EntrypointNotFound) as err:
        check_entrypoint(REPO / "tests/fixtures/plugins/unknown_entrypoint", m)
    assert str(err.value).endswith("plugin.toml: entrypoint: app.py defines no 'application' at module level")


def test_a_missing_module_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EntrypointNotFound, match="no module 'web' in"):
        check(plugin(tmp_path, "web:app", {"app.py": "app = 1"}), "web:app")


def test_a_module_from_the_requirements_is_not_verified(tmp_path: Path) -> None:
    assert "not verified" in check(tmp_path, "someapp.wsgi:app", ("someapp==1.0",))


@pytest.mark.parametrize(("source", "verdict"), [
    ("app = Flask(__name__)", "defines 'app'"),
    ("from flask import Flask as app", "defines 'app'"),
    ("def app(environ, start_response): ...", "defines 'app'"),
    ("try:\n    import x\nexcept ImportError:\n    app = None", "defines 'app'"),
    ("if True:\n    app, other = 1, 2", "defines 'app'"),
    ("from factory import *", "shows only on import"),
    ("def __getattr__(name): ...", "shows only on import"),
    ("globals()['app'] = 1", "shows only on import"),
    ("def make():\n    app = 1", None),
])
def test_module_level_bindings(tmp_path: Path, source: str, verdict: str | None) -> None:
    path = plugin(tmp_path, "pkg.mod:app", {"pkg/__init__.py": "", "pkg/mod.py": source})
    if verdict is None:
        with pytest.raises(EntrypointNotFound, match=r"pkg/mod\.py defines no 'app'"):
            check(path, "pkg.mod:app")
    else:
        assert verdict in check(path, "pkg.mod:app")


def test_a_package_and_a_bare_module(tmp_path: Path) -> None:
    path = plugin(tmp_path, "shop", {"shop/__init__.py": "def create_app(): ..."})
    assert check(path, "shop:create_app()") == "module 'shop' is shop/__init__.py and defines 'create_app'"
    assert check(path, "shop") == "module 'shop' is shop/__init__.py"

"""The plugin runtime (host/runtime/plugin_host_wsgi.py) points an unchanged app's default write locations at
its data dir: the working directory and Flask's instance folder, where its code and venv are read-only."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import flask
import pytest

APP = """
import os
from flask import Flask

app = Flask(__name__)
# what Flask-Session (./flask_session), a relative sqlite:///app.db in SQLAlchemy and Flask-SQLAlchemy
# (os.makedirs(app.instance_path)) do at import
os.makedirs("flask_session", exist_ok=True)
open("app.log", "a").close()
os.makedirs(app.instance_path, exist_ok=True)
"""


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from host.runtime import RUNTIME_DIR

    monkeypatch.chdir(tmp_path)  # restored afterwards: the runtime changes the process's directory
    # restored afterwards too: the runtime replaces it for the process it runs in
    monkeypatch.setattr(flask.Flask, "auto_find_instance_path", flask.Flask.auto_find_instance_path)
    monkeypatch.syspath_prepend(str(RUNTIME_DIR))
    for mod in ("plugin_host_wsgi", "probeapp"):
        monkeypatch.setitem(sys.modules, mod, ModuleType(mod))  # undo removes what the test imports
        del sys.modules[mod]
    import plugin_host_wsgi  # type: ignore[import-not-found]

    return plugin_host_wsgi


def serve(runtime: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Any]:
    bundle, data = tmp_path / "bundle", tmp_path / "data"
    data.mkdir()
    bundle.mkdir(exist_ok=True)
    (bundle / "probeapp.py").write_text(APP)
    monkeypatch.chdir(bundle)  # gunicorn's --chdir
    for var, value in (("PLUGIN_ENTRYPOINT", "probeapp:app"), ("PLUGIN_BUNDLE", str(bundle)),
                       ("PLUGIN_DATA_DIR", str(data))):
        monkeypatch.setenv(var, value)
    return bundle, data, runtime._application().app


def test_an_app_writing_relative_paths_and_its_instance_folder_writes_into_its_data_dir(
        runtime: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, data, app = serve(runtime, tmp_path, monkeypatch)
    assert os.getcwd() == str(data)
    assert (data / "flask_session").is_dir() and (data / "app.log").is_file()
    assert app.instance_path == str(data / "instance") and (data / "instance").is_dir()
    assert sorted(p.name for p in bundle.iterdir()) == ["probeapp.py"]  # nothing written beside the code
    assert str(data) not in sys.path  # the data dir is never importable (the bundle is)
    assert str(bundle) in sys.path


def test_an_instance_folder_the_bundle_ships_stays_where_it_is(
        runtime: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bundle" / "instance").mkdir(parents=True)
    (tmp_path / "bundle" / "instance" / "config.py").write_text("GREETING = 'hi'\n")
    bundle, _data, app = serve(runtime, tmp_path, monkeypatch)
    assert app.instance_path == str(bundle / "instance")
    assert app.config.from_pyfile(os.path.join(app.instance_path, "config.py")) and app.config["GREETING"] == "hi"


def test_every_python_process_of_the_venv_gets_the_instance_folder_once_it_imports_flask(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The venv's .pth runs plugin_host_defaults.install() at every start: a finder that patches Flask when it
    is first imported (a "spawn" child imports the app, and so Flask, anew)."""
    from host.runtime import RUNTIME_DIR

    assert (RUNTIME_DIR / "plugin_host_defaults.pth").read_text() == (
        "import plugin_host_defaults; plugin_host_defaults.install()\n")
    fake = tmp_path / "site" / "flask"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("class Flask:\n    def auto_find_instance_path(self):\n"
                                      "        return '/read-only/venv/var/app-instance'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(RUNTIME_DIR))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    for mod in ("flask", "plugin_host_defaults"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.setenv("PLUGIN_DATA_DIR", str(tmp_path / "data"))
    import plugin_host_defaults  # type: ignore[import-not-found]

    plugin_host_defaults.install()
    plugin_host_defaults.install()  # idempotent: one finder
    assert sum(type(f).__name__ == "_AfterFlask" for f in sys.meta_path) == 1
    import flask as fresh

    assert fresh.Flask().auto_find_instance_path() == str(tmp_path / "data" / "instance")

"""Runs at the start of every Python process of a plugin's venv (``plugin_host_defaults.pth``): inside the
plugin's sandbox (``PLUGIN_DATA_DIR`` set), Flask's instance folder defaults to ``$PLUGIN_DATA_DIR/instance``
when the one Flask finds (``<bundle>/instance``, ``<venv>/var/<app>-instance``, both read-only) does not exist.

Every process, not only the one gunicorn serves from (plugin_host_wsgi): a multiprocessing child started with
"spawn" or "forkserver" imports the app anew, and Flask-SQLAlchemy creates the instance folder at import.
Outside a sandbox, or until Flask is imported, it costs one finder asked about one name. Imports nothing of the
host, nor Flask itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_MARK = "_plugin_host_instance_folder"


def instance_folder(flask_cls: Any, data: str) -> None:
    """Point ``flask_cls``'s auto-found instance folder into ``data`` where the found one does not exist."""
    found = flask_cls.auto_find_instance_path
    if getattr(found, _MARK, False):
        return

    def auto_find_instance_path(self: Any) -> str:
        path: str = found(self)
        return path if os.path.isdir(path) else os.path.join(data, "instance")

    setattr(auto_find_instance_path, _MARK, True)
    flask_cls.auto_find_instance_path = auto_find_instance_path


class _AfterFlask(importlib.abc.MetaPathFinder):
    """Finds ``flask`` as the path finder would, and applies :func:`instance_folder` once it is executed."""

    def __init__(self, data: str) -> None:
        self.data = data

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if fullname != "flask":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run, data = spec.loader.exec_module, self.data

        def exec_module(module: ModuleType) -> None:
            run(module)
            instance_folder(module.Flask, data)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Called by the .pth file (and by plugin_host_wsgi): nothing outside a plugin's sandbox; idempotent."""
    data = os.environ.get("PLUGIN_DATA_DIR")
    if not data:
        return
    flask = sys.modules.get("flask")
    if flask is not None:
        instance_folder(flask.Flask, data)
    elif not any(isinstance(finder, _AfterFlask) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterFlask(data))

"""Runs inside a plugin's sandbox: turns the manifest entrypoint into the WSGI app gunicorn serves.

``PLUGIN_ENTRYPOINT`` is ``module:attr`` (a WSGI app, or a zero-argument factory returning one) or a bare
``module`` holding a seed-style ``PluginBase`` subclass. The host's ``X-Forwarded-Prefix`` (``/plugins/<name>``
when the request came by path) becomes SCRIPT_NAME so ``url_for`` and redirects stay under the plugin's prefix;
without it (the plugin's own origin, ``<name>.<domain>``) SCRIPT_NAME is empty. Imports nothing of the host.

Before the app is imported, the places apps write to by default move into ``PLUGIN_DATA_DIR`` (the plugin's
code and venv are read-only): the working directory, and Flask's instance folder when the app's own does not
exist (see :func:`writable_defaults`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

HOOK_PREFIX = "/.well-known/plugin-host/"
ENTRYPOINT_ERROR = 3  # exit code: the entrypoint could not be loaded (gunicorn's WORKER_BOOT_ERROR too)


class EntrypointError(Exception):
    pass


def load(entrypoint: str) -> Any:
    """Import the entrypoint and return a WSGI callable, or raise EntrypointError with one clear line."""
    module_name, _, attr = entrypoint.partition(":")
    call = attr.endswith("()")
    attr = attr.removesuffix("()")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name.split(".")[0]:
            raise EntrypointError(f"entrypoint {entrypoint!r}: no module named {module_name!r} in the bundle") from exc
        raise
    if attr:
        if not hasattr(module, attr):
            raise EntrypointError(f"entrypoint {entrypoint!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(module, attr)
        if call or _is_factory(target):
            target = target()
        if not callable(target):
            raise EntrypointError(f"entrypoint {entrypoint!r} is not a WSGI application")
        return target
    return _seed_app(module, entrypoint)


def _is_factory(obj: Any) -> bool:
    """A plain function with no required parameters is an app factory (a WSGI function takes two)."""
    if not inspect.isfunction(obj):
        return False
    params = inspect.signature(obj).parameters.values()
    return not any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _seed_app(module: Any, entrypoint: str) -> Any:
    from flask import Flask
    from plugin_base import PluginBase  # type: ignore[import-not-found]  # ships beside this module

    classes: list[Any] = [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, PluginBase) and obj is not PluginBase
        and obj.__module__ == module.__name__
    ]
    if not classes:
        raise EntrypointError(
            f"entrypoint {entrypoint!r}: module defines no PluginBase subclass "
            "(use 'module:app' for a Flask app)"
        )
    root = os.path.dirname(getattr(module, "__file__", None) or os.getcwd())
    app = Flask(module.__name__, root_path=root)
    for cls in classes:
        cls(app).register()
    return app


class _Prefixed:
    """Set SCRIPT_NAME to the plugin's public prefix; trust X-Forwarded-* (only the host reaches our socket).

    The prefix is per request: one instance serves both ``/plugins/<name>/...`` on the main host name (the
    host sends X-Forwarded-Prefix, and strips any copy a client sent) and the root of its own origin (none)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        prefix = environ.get("HTTP_X_FORWARDED_PREFIX", "")
        environ["SCRIPT_NAME"] = prefix.rstrip("/") if prefix.startswith("/") else ""
        fwd_for = environ.get("HTTP_X_FORWARDED_FOR")
        if fwd_for:
            environ["REMOTE_ADDR"] = fwd_for.split(",")[-1].strip()
        proto = environ.get("HTTP_X_FORWARDED_PROTO")
        if proto in ("http", "https"):
            environ["wsgi.url_scheme"] = proto
        host = environ.get("HTTP_X_FORWARDED_HOST")
        if host:
            environ["HTTP_HOST"] = host
        # Hook calls (signed by the host, never proxied from clients) go to the plugin SDK's handlers when the
        # plugin registered any; otherwise to the app, which may answer them itself with plain HTTP.
        if environ.get("PATH_INFO", "").startswith(HOOK_PREFIX):
            sdk = sys.modules.get("plugin_sdk.hooks")
            if sdk is not None and sdk.HOOKS:
                return sdk.HOOKS.handle(environ, start_response)
        return self.app(environ, start_response)


def writable_defaults(data: str) -> None:
    """Make the data dir where an unchanged app writes when it names no directory.

    The working directory: Flask-Session's default ``./flask_session``, a relative SQLite URL in plain
    SQLAlchemy, ``logging.FileHandler("app.log")``, ``uploads/``... (gunicorn's ``--chdir`` is the bundle, so
    that it lands on ``sys.path``; the data dir never does). And Flask's instance folder (``app.instance_path``,
    where Flask-SQLAlchemy puts ``sqlite:///app.db`` and creates the folder at import) when the one Flask
    finds does not exist (plugin_host_defaults, which the venv's .pth file also applies in every other Python
    process of the plugin)."""
    os.chdir(data)
    from plugin_host_defaults import install  # type: ignore[import-not-found]  # ships beside this module

    install()


def _application() -> Any:
    entrypoint = os.environ.get("PLUGIN_ENTRYPOINT", "")
    bundle = os.environ.get("PLUGIN_BUNDLE")
    if bundle and bundle not in sys.path:
        sys.path.insert(0, bundle)
    data = os.environ.get("PLUGIN_DATA_DIR")
    if data and os.path.isdir(data):
        writable_defaults(data)
    try:
        app = load(entrypoint)
    except EntrypointError as exc:
        print(f"plugin_host: {exc}", file=sys.stderr, flush=True)
        sys.exit(ENTRYPOINT_ERROR)
    return _Prefixed(app)


application = _application() if os.environ.get("PLUGIN_ENTRYPOINT") else None

"""The admin app factory (no import-time side effects): the admin origin check, problem details, and the
blueprints of the admin API (host.admin.api), UI (host.admin.ui) and metrics (host.admin.metrics).

Plug-in point for the UI and metrics: a module with ``register(app: Flask, backend: AdminClient) -> None``,
registered here when it exists. Must not import the registry or the supervisor (import-linter contract).
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from host.admin.client import AdminClient
from host.errors import AdminError
from host.layout import Layout
from host.settings import HostSettings

log = logging.getLogger(__name__)
EXTENSIONS = ("host.admin.ui", "host.admin.metrics")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
# For responses nobody set a policy on (the API's JSON, errors): nothing may load, frame or run.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def admin_origins(settings: HostSettings) -> tuple[frozenset[str], frozenset[str]]:
    """(the Host header values, the Origin header values) of the admin origin: ``admin_bind``'s host:port (on
    a loopback bind also localhost and the other loopback names; on a wildcard bind only those, since the
    machine's other names are unknown: set ``admin_origin``), plus ``admin_origin``."""
    hosts: set[str] = set()
    origins: set[str] = set()
    if settings.admin_bind:
        host, _, port = settings.admin_bind.rpartition(":")
        bare = host.strip("[]")
        try:
            addr = ipaddress.ip_address(bare) if bare else None
        except ValueError:
            addr = None
        if bare in ("", "localhost") or (addr is not None and (addr.is_loopback or addr.is_unspecified)):
            hosts.update(f"{name}:{port}" for name in LOOPBACK_NAMES)
        if bare and not (addr is not None and addr.is_unspecified):
            hosts.add(f"[{bare}]:{port}" if addr is not None and addr.version == 6 else f"{bare.lower()}:{port}")
        origins.update(f"http://{h}" for h in hosts)
    if settings.admin_origin:
        origin = settings.admin_origin.lower().rstrip("/")
        origins.add(origin)
        scheme, _, netloc = origin.partition("://")
        hosts.add(netloc)
        default_port = {"http": "80", "https": "443"}[scheme]
        if ":" not in netloc:  # a client may send the default port, or not
            hosts.add(f"{netloc}:{default_port}")
        elif netloc.endswith(f":{default_port}"):
            hosts.add(netloc.rsplit(":", 1)[0])
    return frozenset(hosts), frozenset(origins)


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    """An RFC 9457 problem-details response (``retry_after`` becomes the Retry-After header)."""
    retry_after = extra.pop("retry_after", None)
    resp = jsonify({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra})
    resp.status_code = status
    resp.mimetype = "application/problem+json"
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="plugin-host admin"'
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


def create_admin_app(settings: HostSettings | None = None, layout: Layout | None = None,
                     backend: AdminClient | None = None) -> Flask:
    """``layout``: the home as the admin web tier reaches it (an fd path after dropping root). ``backend``:
    how the app reaches the supervisor (tests pass a fake)."""
    settings = settings or HostSettings()
    layout = layout or Layout(settings.home_dir)
    backend = backend or AdminClient(layout)
    app = Flask(__name__, static_url_path="/admin/static", static_folder="static", template_folder="templates")
    app.config["MAX_CONTENT_LENGTH"] = settings.admin_max_upload
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["plugin_host_admin"] = backend
    hosts, origins = admin_origins(settings)

    @app.before_request
    def admin_origin_only() -> Response | None:
        host = (request.host or "").lower()
        if host not in hosts:
            return problem(421, "Misdirected Request", "this is the admin listener; it answers only for its own "
                           "origin (HOST_ADMIN_BIND, HOST_ADMIN_ORIGIN)")
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower().rstrip("/") not in origins:
            return problem(403, "Forbidden", "cross-origin requests to the admin listener are refused")
        return None

    @app.after_request
    def harden(resp: Response) -> Response:
        resp.headers.setdefault("Content-Security-Policy", DEFAULT_CSP)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        return resp

    @app.errorhandler(AdminError)
    def admin_error(exc: AdminError) -> Response:
        return problem(exc.status, exc.title, exc.detail, **exc.extra)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        return problem(code, exc.name, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("admin request failed: %s %s", request.method, request.path)
        return problem(500, "Internal Server Error", "the admin app failed; see the host's log")

    from host.admin import api

    api.register(app, backend)
    for name in EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(app, backend)
    return app

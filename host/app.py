"""The web tier's Flask app (factory, no import-time side effects): index, /healthz and the plugin proxy.

Routing: a request whose Host is ``<name>.<plugin domain>`` goes to plugin <name> at the root of its own
origin, whatever its path (host.origins); any other Host is the main host name: the index, /healthz and, in
path mode, ``/plugins/<name>/*``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException

from host import identity, login, origins
from host.access_log import AccessLog
from host.directory import Directory
from host.end_users import EndUsers
from host.front import METHODS, Front, Incoming, PluginProxy, Reply
from host.front import problem as front_problem
from host.headers import Forwarding
from host.hooks.request_filter import RequestFilters, filter_tripped
from host.layout import Layout
from host.observe import Observer
from host.request_metrics import RequestMetrics
from host.websocket import WebSockets, requested
from host.ws_relay import Gate

if TYPE_CHECKING:
    from host.settings import HostSettings

log = logging.getLogger(__name__)


def problem(status: int, title: str, detail: str, retry_after: int | None = None, **extra: Any) -> Response:
    """An RFC 9457 problem-details response (host.front's, as a Flask response)."""
    return as_response(front_problem(status, title, detail, retry_after, **extra))


def as_response(reply: Reply | Response) -> Response:
    """host.front's Reply as a Flask response (a WebSocket opener's Response passes as it is)."""
    if not isinstance(reply, Reply):
        return reply
    resp = Response(reply.body, status=reply.status, direct_passthrough=True)
    resp.headers = Headers(reply.headers)
    return resp


def create_app(settings: HostSettings | None = None, layout: Layout | None = None,
               websocket_gate: Gate | None = None) -> Flask:
    """``layout``: the home as the web tier reaches it (host.webtier passes an fd path, since after dropping
    root it may not be able to walk the home's real path). The app reads the supervisor's routing snapshot
    and talks to its web socket; it never opens the registry nor the root-only control socket."""
    if settings is None:  # here: the web tiers get settings from the supervisor and never import pydantic
        from host.settings import HostSettings

        settings = HostSettings()
    layout = layout or Layout(settings.home_dir)
    directory = Directory(layout.routes)
    forwarding = Forwarding(settings.forwarded_networks)
    end_users = EndUsers(layout.run / identity.SECRET_FILE, forwarding, settings.trusted_user_header)
    domain = settings.origin_domain
    observer = Observer(AccessLog(layout.access_logs, settings.log_max_bytes) if settings.access_log else None,
                        RequestMetrics() if settings.request_metrics else None)
    hook_gate = RequestFilters(layout.hooks, settings.hook_filter_headers, threshold=settings.hook_breaker_failures,
                               cooldown=settings.hook_breaker_cooldown, opened=filter_tripped(layout))
    plugins = PluginProxy(settings, layout, directory, observer, end_users, forwarding, hook_gate)

    app = Flask(__name__, static_folder=None)  # no static files of its own: /static/ may be a plugin's (path_fallback)
    app.config["MAX_CONTENT_LENGTH"] = None
    app.extensions["plugin_host"] = {"settings": settings, "pool": plugins.pool, "directory": directory,
                                     "observer": observer, "proxy": plugins}
    websockets = WebSockets(app, directory, plugins.mark_active, websocket_gate)
    plugins.websocket = websockets.open
    app.register_blueprint(login.blueprint(layout, end_users, forwarding))

    def public_host() -> str:
        """The Host the client used (a configured front proxy's X-Forwarded-Host, else the Host header)."""
        return Incoming(request.environ, forwarding).client()[1]

    @app.before_request
    def plugin_origin() -> Response | None:
        """A request to ``<name>.<domain>`` is the plugin's, every path of it (its /healthz too): the host's
        own pages live on the main host name only. (host.front serves these itself; what reaches Flask is a
        WebSocket handshake.)"""
        label = origins.plugin_label(public_host(), domain)
        if label is None:
            return None
        return as_response(plugins.handle(Incoming(request.environ, forwarding), label,
                                          request.path.removeprefix("/"), prefix=""))

    def referring_plugin() -> str | None:
        """Path mode: the enabled plugin whose page, by the request's Referer, asked for this path of the main
        host name; None when the Referer is no page of a plugin on this same host name."""
        referer = urlsplit(request.headers.get("Referer", ""))
        if referer.scheme not in ("http", "https") or referer.netloc.lower() != public_host().lower():
            return None
        parts = referer.path.split("/", 3)  # "", "plugins", <name>, rest
        if len(parts) < 3 or parts[0] or parts[1] != "plugins" or not origins.valid_label(parts[2]):
            return None
        entry = directory.get(parts[2])
        return entry.name if entry is not None and entry.enabled else None

    @app.before_request
    def path_fallback() -> Response | None:
        """An app unaware of its prefix writes absolute links (``href="/static/app.css"``, ``action="/login"``,
        a script's ``fetch("/api")``). Asked for from one of its pages, such a path of the main host name that
        is no page of the host's (or is ``/``, which a plugin's page means as its own home) is sent under the
        plugin's prefix with a 307 (method and body kept). Only ever by Referer: the same link typed in or
        followed from elsewhere still gets the host's page or 404."""
        if not (settings.path_mode and settings.path_fallback) or request.path.startswith("/plugins/"):
            return None
        rule = request.url_rule
        if rule is not None and rule.rule != "/":
            return None
        name = referring_plugin()
        if name is None or requested(request.environ):
            return None
        raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or ""
        target = raw if raw.startswith("/") and not raw.startswith("//") else request.full_path.removesuffix("?")
        return Response(status=307, headers={"Location": f"/plugins/{name}{target}", "Cache-Control": "no-store",
                                             "Vary": "Referer"})

    @app.get("/")
    def index() -> str:
        status = plugins.supervisor_status() or {}
        states = {n: p["state"] for n, p in status.get("plugins", {}).items()}
        host = public_host()
        links = {p.name: origins.plugin_url(p.name, domain, request.scheme, host) for p in directory.all()
                 } if domain else {}
        enabled = [p for p in directory.all() if p.enabled]
        # Plugins' menu entries: their declared text and paths, escaped by the template, under their own URL.
        nav = [(p.name, title, (links[p.name].rstrip("/") if links else f"/plugins/{p.name}") + path)
               for p in enabled for title, path in p.nav]
        user = end_users.user(request.remote_addr or "", request.headers, request.cookies)
        return render_template("index.html", plugins=enabled, states=states, nav=nav, user=user,
                               links=links, path_mode=settings.path_mode, warning=origins.SHARED_ORIGIN_WARNING)

    @app.get("/healthz")
    def healthz() -> Response:
        """Anonymous: overall status, and per plugin its state, enabled, version and sandbox level. Never a
        pid or a failure reason (which carries the plugin's stderr): `host list` shows those to the operator."""
        status = plugins.supervisor_status()
        body_plugins: dict[str, Any] = {}
        for entry in directory.all():
            live = (status or {}).get("plugins", {}).get(entry.name, {})
            body_plugins[entry.name] = {"version": entry.version, "enabled": entry.enabled,
                                        "state": live.get("state", "unknown"), "sandbox": live.get("sandbox")}
        body = {"status": "ok" if status else "degraded",
                "supervisor": "running" if status else "unreachable", "plugins": body_plugins}
        resp = jsonify(body)
        resp.status_code = 200 if status else 503
        return resp

    def proxy_root(name: str, subpath: str) -> Response:
        """Path mode: ``/plugins/<name>/<subpath>`` on the main host name (host.front serves most of these
        itself; what reaches Flask is a WebSocket handshake or a path with ``//`` in it)."""
        return as_response(plugins.handle(Incoming(request.environ, forwarding), name, subpath,
                                          prefix=f"/plugins/{name}"))

    if settings.path_mode:
        # in this order, url_for(name=...) builds "/plugins/<name>/"
        for rule, defaults in (("/plugins/<name>/<path:subpath>", None), ("/plugins/<name>/", {"subpath": ""}),
                               ("/plugins/<name>", {"subpath": ""})):
            app.add_url_rule(rule, "proxy_root", proxy_root, defaults=defaults, methods=sorted(METHODS),
                             provide_automatic_options=False)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return problem(exc.code or 500, exc.name, exc.description or "")

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem(500, "Internal error", "the host failed to handle this request; see the host log")

    # Plugin requests skip Flask (host.front); the app serves the rest and WebSocket handshakes.
    app.wsgi_app = Front(plugins, app.wsgi_app)  # type: ignore[method-assign]
    return app

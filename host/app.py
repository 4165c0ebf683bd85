"""The web tier's Flask app (factory, no import-time side effects): index, /healthz and the plugin proxy.

Routing: a request whose Host is ``<name>.<plugin domain>`` goes to plugin <name> at the root of its own
origin, whatever its path (host.origins); any other Host is the main host name: the index, /healthz and, in
path mode, ``/plugins/<name>/*``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import ClosingIterator

from host import control, identity, login, origins
from host.access_log import AccessLog
from host.directory import Directory, PluginEntry
from host.end_users import EndUsers
from host.errors import HostError
from host.headers import Forwarding, request_headers, response_headers
from host.hooks.request_filter import RequestFilters, filter_tripped
from host.layout import Layout
from host.observe import Exchange, Observer
from host.proxy import (
    Pool,
    ProxyError,
    Slots,
    Unavailable,
    body_stream,
    escapes_prefix,
    upstream_errors,
    upstream_path,
    upstream_request,
)
from host.request_metrics import RequestMetrics
from host.settings import HostSettings
from host.upstream import UpstreamResponse
from host.websocket import WebSockets, requested
from host.ws_relay import Gate

log = logging.getLogger(__name__)
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


def problem(status: int, title: str, detail: str, retry_after: int | None = None, **extra: Any) -> Response:
    """An RFC 9457 problem-details response."""
    resp = jsonify({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra})
    resp.status_code = status
    resp.mimetype = "application/problem+json"
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


def create_app(settings: HostSettings | None = None, layout: Layout | None = None,
               websocket_gate: Gate | None = None) -> Flask:
    """``layout``: the home as the web tier reaches it (host.webtier passes an fd path, since after dropping
    root it may not be able to walk the home's real path). The app reads the supervisor's routing snapshot
    and talks to its web socket; it never opens the registry nor the root-only control socket."""
    settings = settings or HostSettings()
    layout = layout or Layout(settings.home_dir)
    directory = Directory(layout.routes)
    pool = Pool()
    slots = Slots(settings.inflight_limit, settings.queue_limit)
    touched: dict[str, float] = {}
    forwarding = Forwarding(settings.forwarded_networks)
    end_users = EndUsers(layout.run / identity.SECRET_FILE, forwarding, settings.trusted_user_header)
    domain = settings.origin_domain
    observer = Observer(AccessLog(layout.access_logs, settings.log_max_bytes) if settings.access_log else None,
                        RequestMetrics() if settings.request_metrics else None)

    def mark_active(name: str) -> None:
        """Tell the supervisor that the plugin is in use (scale to zero); at most once a second per plugin."""
        now = time.monotonic()
        if now - touched.get(name, 0.0) < 1.0:
            return
        touched[name] = now
        try:
            control.call(layout.web_socket, "active", timeout=1.0, names=[name])
        except HostError:
            log.debug("cannot mark %s active", name, exc_info=True)

    app = Flask(__name__, static_folder=None)  # no static files of its own: /static/ may be a plugin's (path_fallback)
    app.config["MAX_CONTENT_LENGTH"] = None
    app.extensions["plugin_host"] = {"settings": settings, "pool": pool, "directory": directory, "observer": observer}
    websockets = WebSockets(app, directory, mark_active, websocket_gate)
    app.register_blueprint(login.blueprint(layout, end_users, forwarding))
    hook_gate = RequestFilters(layout.hooks, settings.hook_filter_headers, threshold=settings.hook_breaker_failures,
                               cooldown=settings.hook_breaker_cooldown, opened=filter_tripped(layout))

    def supervisor_status() -> dict[str, Any] | None:
        """The supervisor's public view (state, retry_in, sandbox level per plugin: no pid, no stderr)."""
        try:
            return control.call(layout.web_socket, "status", timeout=2.0)
        except HostError:
            return None

    def public_host() -> str:
        """The Host the client used (a configured front proxy's X-Forwarded-Host, else the Host header)."""
        return forwarding.client(request.remote_addr or "", request.host, list(request.headers.items()))[1]

    @app.before_request
    def plugin_origin() -> Response | None:
        """A request to ``<name>.<domain>`` is the plugin's, every path of it (its /healthz too): the host's
        own pages live on the main host name only."""
        label = origins.plugin_label(public_host(), domain)
        if label is None:
            return None
        return proxy(label, request.path.removeprefix("/"), prefix="")

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
        status = supervisor_status() or {}
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
        status = supervisor_status()
        plugins: dict[str, Any] = {}
        for entry in directory.all():
            live = (status or {}).get("plugins", {}).get(entry.name, {})
            plugins[entry.name] = {"version": entry.version, "enabled": entry.enabled,
                                   "state": live.get("state", "unknown"), "sandbox": live.get("sandbox")}
        body = {"status": "ok" if status else "degraded",
                "supervisor": "running" if status else "unreachable", "plugins": plugins}
        resp = jsonify(body)
        resp.status_code = 200 if status else 503
        return resp

    def proxy_root(name: str, subpath: str) -> Response:
        """Path mode: ``/plugins/<name>/<subpath>`` on the main host name."""
        return proxy(name, subpath, prefix=f"/plugins/{name}")

    if settings.path_mode:
        # in this order, url_for(name=...) builds "/plugins/<name>/"
        for rule, defaults in (("/plugins/<name>/<path:subpath>", None), ("/plugins/<name>/", {"subpath": ""}),
                               ("/plugins/<name>", {"subpath": ""})):
            app.add_url_rule(rule, "proxy_root", proxy_root, defaults=defaults, methods=METHODS,
                             provide_automatic_options=False)

    def proxy(name: str, subpath: str, prefix: str) -> Response:
        """Proxy this request to plugin ``name`` mounted at ``prefix`` ("" = the root of its own origin).
        Every request to an installed plugin is logged and counted when its response ends (host.observe);
        one to a name that is no plugin is not (any client could make up names: files and series)."""
        entry = directory.get(name) if origins.valid_label(name) else None
        if entry is None:
            return problem(404, "Unknown plugin", f"no enabled plugin named {name!r}")
        raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.path
        client = forwarding.client(request.remote_addr or "", request.host, list(request.headers.items()))[0]
        exchange = observer.begin(name, request.method, raw.split("?", 1)[0], client)
        try:
            resp = exchange.watch(proxy_to(entry, name, subpath, prefix, exchange))
        except BaseException:
            exchange.finish(500, 0, aborted=True)
            raise
        return resp

    def proxy_to(entry: PluginEntry, name: str, subpath: str, prefix: str, exchange: Exchange) -> Response:
        if not entry.enabled:
            return problem(404, "Unknown plugin", f"no enabled plugin named {name!r}")
        if escapes_prefix(subpath):
            return problem(400, "Bad path", "path segments '.' and '..' are not allowed")
        refused = hook_gate.gate(request.environ, name, subpath)  # host.hooks: reserved paths, request.before
        if refused is not None:
            return problem(*refused, plugin=name)
        if not prefix and (request.method not in IDEMPOTENT or requested(request.environ)):
            other = origins.sibling(request.headers.get("Origin"), name, domain)
            if other is not None:
                # Same site, so the browser sent this plugin's cookies with it: a cross-plugin request forgery.
                what = ("open a WebSocket to" if requested(request.environ)
                        else f"send {request.method} requests to")
                return problem(403, "Cross-plugin request refused", f"a page of plugin {other!r} may not {what} "
                               f"plugin {name!r}", plugin=name)
        try:
            slots.acquire(name, min(settings.plugin_queue_wait, entry.limits.timeout))
        except ProxyError as exc:
            return problem(exc.status, exc.title, exc.detail, exc.retry_after, plugin=name)
        try:
            return forward(name, subpath, prefix, entry.limits.timeout, entry.limits.max_body,
                           exchange)  # releases when done
        except ProxyError as exc:
            slots.release(name)
            return problem(exc.status, exc.title, exc.detail, exc.retry_after, plugin=name)
        except BaseException:
            slots.release(name)
            raise

    def with_user(headers: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
        """The signed-in end user (host.end_users): X-Plugin-Host-User, and the assertion for users:read."""
        entry = directory.get(name)
        user = end_users.user(request.remote_addr or "", request.headers, request.cookies)
        return end_users.apply(headers, name, user, entry is not None and entry.users_read)

    def forward(name: str, subpath: str, prefix: str, timeout: float, max_body: int, exchange: Exchange
                ) -> Response:
        env = request.environ
        length = request.headers.get("Content-Length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            raise ProxyError(413, "Request body too large", f"the plugin accepts at most {max_body} bytes")
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        has_body = chunked or (length is not None and int(length) > 0)
        client_ip, host = forwarding.client(request.remote_addr or "", request.host, list(request.headers.items()))
        headers = request_headers(
            list(request.headers.items()), prefix=prefix, client_ip=client_ip,
            scheme=request.scheme, host=host, content_length=length if not chunked else None,
        )
        headers = with_user(headers, name)
        path = upstream_path(env.get("RAW_URI") or env.get("REQUEST_URI"), prefix, subpath)
        query = env.get("QUERY_STRING", "")
        url = path + (f"?{query}" if query else "")
        sock = layout.socket(name)
        if requested(env):
            return websockets.open(name, sock, url, headers, prefix, done=lambda: slots.release(name),
                                   wait=wait_until_available, closed=exchange.websocket_closed)
        req = upstream_request(request.method, url, headers,
                               exchange.received(body_stream(request.stream, max_body)) if has_body else None,
                               timeout)
        try:
            with upstream_errors(name, timeout):
                upstream = pool.transport(sock).handle_request(req)
        except Unavailable:
            # Nothing was sent (the connect failed), so the request can go to the instance that comes up.
            wait_until_available(name)
            with upstream_errors(name, timeout):
                upstream = pool.transport(sock).handle_request(req)
        except ProxyError as exc:
            # Reset before any answer: the instance died with our connection still in its listen backlog.
            # A bodiless idempotent request is safe to replay once on the instance that replaces it; the
            # request that crashed the plugin, if replayed and crashing it again, still ends in a 502.
            if exc.status != 502 or has_body or request.method not in IDEMPOTENT:
                raise
            wait_until_available(name)
            with upstream_errors(name, timeout):
                upstream = pool.transport(sock).handle_request(req)
        mark_active(name)
        return stream_response(upstream, name, prefix, timeout)

    def stream_response(upstream: UpstreamResponse, name: str, prefix: str, timeout: float) -> Response:
        def body() -> Iterator[bytes]:
            try:
                with upstream_errors(name, timeout):
                    # Each piece as the socket returned it (up to 64 KiB), never held back to
                    # fill a chunk: a server-sent event or a long-poll answer reaches the client as the plugin
                    # writes it; gunicorn writes each piece at once (TCP_NODELAY, no buffering in gthread).
                    yield from upstream.iter_raw()
            except ProxyError:
                # Headers are gone already; abort the connection so the client sees a truncated body,
                # never a short body passed off as complete.
                log.warning("plugin %s failed mid-response; aborting the client connection", name)
                raise

        def done() -> None:
            upstream.close()
            slots.release(name)
            mark_active(name)

        # The server calls close() however the response ends (complete, aborted, never iterated), so the
        # upstream connection and the plugin's slot are always given back.
        resp = Response(ClosingIterator(body(), done), status=upstream.status_code, direct_passthrough=True)
        public = f"{request.scheme}://{public_host()}"
        resp.headers = Headers(response_headers(upstream.headers, prefix, public=public if prefix else ""))
        return resp

    def wait_until_available(name: str) -> None:
        """The plugin's socket refused us: wait while it (re)starts or wakes from scale-to-zero, or fail
        fast with 503 + Retry-After when it is backing off for long or quarantined."""
        deadline = time.monotonic() + settings.request_wait
        while True:
            remaining = deadline - time.monotonic()
            st = (supervisor_status() or {}).get("plugins", {}).get(name)
            if st is None:
                raise ProxyError(503, "Plugin unavailable", "the supervisor is not running this plugin", 5)
            state = st["state"]
            # Why it failed (its stderr) is the operator's business: `host list`, `host logs`.
            if state == "quarantined":
                raise ProxyError(503, "Plugin quarantined", f"plugin {name!r} is quarantined after repeated "
                                 "failures", 60)
            if state == "backoff" and (st.get("retry_in") or 0) > remaining:
                raise ProxyError(503, "Plugin restarting", f"plugin {name!r} is restarting after a failure",
                                 max(1, math.ceil(st["retry_in"])))
            serving = state in ("running", "degraded")  # degraded: its workers die, but it serves
            if serving and _connectable(layout.socket(name)):
                return
            if remaining <= 0:
                raise ProxyError(503, "Plugin unavailable", f"plugin {name!r} is {state}", 1)
            if serving:
                time.sleep(0.01)  # running, but the socket switch is still in flight
                continue
            # Starting, backing off briefly, or scaled to zero: the supervisor answers once it runs (or
            # gives up). Concurrent callers all wait for the same single start.
            with contextlib.suppress(HostError):
                control.call(layout.web_socket, "wake", name=name, wait=remaining, timeout=remaining + 5)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return problem(exc.code or 500, exc.name, exc.description or "")

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem(500, "Internal error", "the host failed to handle this request; see the host log")

    return app


def _connectable(path: Any) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()

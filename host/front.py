"""The web tier's proxy to plugins, as a plain WSGI callable in front of the host's Flask app.

A request for a plugin (``/plugins/<name>/...`` in path mode, any path of ``<name>.<domain>``) is proxied here
without a Flask request context: issue 12's profile had Flask's context, routing and ``request`` proxies at
~16 % of the web tier's CPU per proxied request. Everything else (the index, /healthz, the login page, the
Referer fallback, a method no route allows, a WebSocket handshake, which needs Flask's request for the relay)
goes to the Flask app, whose routes call the same :class:`PluginProxy`. The rules a proxied request goes
through are in :meth:`PluginProxy.handle` and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from werkzeug.http import HTTP_STATUS_CODES, parse_cookie
from werkzeug.sansio.utils import get_host

from host import control, identity, origins
from host import upstream as upstream_client
from host.directory import Directory, PluginEntry
from host.end_users import EndUsers
from host.errors import HostError
from host.headers import Forwarding, request_headers, response_headers
from host.hooks.request_filter import RequestFilters
from host.layout import Layout
from host.observe import Exchange, Observer
from host.proxy import (
    Pool,
    ProxyError,
    Slots,
    Unavailable,
    body_limit,
    body_stream,
    escapes_prefix,
    upstream_errors,
    upstream_path,
    upstream_request,
)
from host.upstream import SpliceBody, UpstreamResponse
from host.websocket import requested

if TYPE_CHECKING:
    from host.settings import HostSettings

log = logging.getLogger(__name__)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # path mode's routes
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class Reply:
    """A response before any server sees it: status, headers, and a body whose ``close()`` (if any) the
    server calls however the response ends."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Iterable[bytes] = ()


def problem(status: int, title: str, detail: str, retry_after: int | None = None, **extra: Any) -> Reply:
    """An RFC 9457 problem-details response."""
    data = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra},
                      separators=(",", ":"), sort_keys=True).encode() + b"\n"
    headers = [("Content-Type", "application/problem+json"), ("Content-Length", str(len(data)))]
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    return Reply(status, headers, [data])


def status_line(status: int) -> str:
    """The status line werkzeug would write (``404 NOT FOUND``; ``299 UNKNOWN`` for a code it does not know)."""
    return f"{status} {HTTP_STATUS_CODES.get(status, 'unknown').upper()}"


_HEADER_NAMES: dict[str, str] = {}  # environ key -> header name as werkzeug spells it, worked out once per key


def _header_name(bare: str, key: str) -> str:
    name = bare.replace("_", "-").title()
    if len(_HEADER_NAMES) >= 1024:  # clients inventing names only make it start over
        _HEADER_NAMES.clear()
    _HEADER_NAMES[key] = name
    return name


class Incoming:
    """What the proxy reads of one client request, straight from its WSGI environ; each derived value is
    worked out once (issue 12: the Flask path parsed the client's address and Host three times per request)."""

    __slots__ = ("_client", "_forwarding", "_headers", "environ", "method", "peer", "scheme", "splice", "upgrade")

    def __init__(self, environ: dict[str, Any], forwarding: Forwarding) -> None:
        self.environ = environ
        self.method: str = environ["REQUEST_METHOD"]
        self.peer: str = environ.get("REMOTE_ADDR") or ""
        self.scheme: str = environ.get("wsgi.url_scheme", "http")
        self._forwarding = forwarding
        self._headers: list[tuple[str, str]] | None = None
        self._client: tuple[str, str] | None = None
        self.upgrade = requested(environ)  # a WebSocket handshake
        self.splice = False  # the server writes our pieces with host.gunicorn_wire's splicing writer

    def headers(self) -> list[tuple[str, str]]:
        """The request's headers as werkzeug names them (``X-Foo``), in the environ's order."""
        if self._headers is None:
            out = []
            for key, value in self.environ.items():
                if key.startswith("HTTP_"):
                    if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                        name = _HEADER_NAMES.get(key)
                        out.append((name or _header_name(key[5:], key), value))
                elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
                    out.append((key.replace("_", "-").title(), value))
            self._headers = out
        return self._headers

    def changed(self) -> None:
        """The environ's headers were changed (host.hooks' filters add and remove some): read them again."""
        self._headers = None

    def get(self, name: str, default: str = "") -> str:
        """One header's value (what host.end_users reads)."""
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = self.environ.get(key)
        return default if value is None else str(value)

    @property
    def host(self) -> str:
        """The Host header as werkzeug's ``request.host`` gives it (the scheme's default port dropped)."""
        env = self.environ
        port = env.get("SERVER_PORT")
        return get_host(self.scheme, env.get("HTTP_HOST"),
                        (env.get("SERVER_NAME", ""), int(port) if port and port.isdigit() else None))

    def client(self) -> tuple[str, str]:
        """(client address, public Host): a configured front proxy's X-Forwarded-For/-Host, else the peer's."""
        if self._client is None:
            if self._forwarding.trusts(self.peer):
                self._client = self._forwarding.client(self.peer, self.host, self.headers())
            else:
                self._client = (self.peer, self.host)
        return self._client

    @property
    def cookies(self) -> dict[str, str]:
        raw = self.environ.get("HTTP_COOKIE", "")
        return parse_cookie(raw) if identity.USER_COOKIE in raw else {}  # the only cookie the proxy reads

    @property
    def raw_uri(self) -> str:
        env = self.environ
        return env.get("RAW_URI") or env.get("REQUEST_URI") or self.path

    @property
    def path(self) -> str:
        """PATH_INFO decoded as werkzeug's ``request.path`` does (UTF-8, and one leading slash)."""
        return "/" + str(self.environ.get("PATH_INFO") or "").encode("latin-1").decode("utf-8", "replace").lstrip("/")


class PluginProxy:
    """Forwards one request to a plugin, with every rule of the proxy: unknown/disabled plugins, path escapes,
    host.hooks' gate, cross-plugin forgery on plugin origins, the per-plugin in-flight cap and its queue,
    body limits, header hygiene, the end user's identity, waiting for a plugin that is (re)starting or
    scaled to zero, the access log and request series (host.observe)."""

    def __init__(self, settings: HostSettings, layout: Layout, directory: Directory, observer: Observer,
                 end_users: EndUsers, forwarding: Forwarding, hook_gate: RequestFilters) -> None:
        self.settings = settings
        self.layout = layout
        self.directory = directory
        self.observer = observer
        self.end_users = end_users
        self.forwarding = forwarding
        self.hook_gate = hook_gate
        self.domain = settings.origin_domain
        self.pool = Pool()
        self.slots = Slots(settings.inflight_limit, settings.queue_limit)
        self._touched: dict[str, float] = {}
        self._sockets: dict[str, Path] = {}
        self.websocket: Callable[..., Any] | None = None  # host.app: opens a handshake (needs Flask's request)

    def mark_active(self, name: str) -> None:
        """Tell the supervisor that the plugin is in use (scale to zero); at most once a second per plugin."""
        now = time.monotonic()
        if now - self._touched.get(name, 0.0) < 1.0:
            return
        self._touched[name] = now
        try:
            control.call(self.layout.web_socket, "active", timeout=1.0, names=[name])
        except HostError:
            log.debug("cannot mark %s active", name, exc_info=True)

    def socket(self, name: str) -> Path:
        """The plugin's public socket path (a symlink to its live instance's: host.proxy.Pool follows it)."""
        path = self._sockets.get(name)
        if path is None:
            path = self._sockets[name] = self.layout.socket(name)
        return path

    def supervisor_status(self) -> dict[str, Any] | None:
        """The supervisor's public view (state, retry_in, sandbox level per plugin: no pid, no stderr)."""
        try:
            return control.call(self.layout.web_socket, "status", timeout=2.0)
        except HostError:
            return None

    def handle(self, req: Incoming, name: str, subpath: str, prefix: str) -> Any:
        """Proxy ``req`` to plugin ``name`` mounted at ``prefix`` ("" = the root of its own origin): a
        :class:`Reply`, or for a WebSocket handshake what host.app's opener returns. Every request to an
        installed plugin is logged and counted when its response ends (host.observe); one to a name that is
        no plugin is not (any client could make up names: files and series)."""
        entry = self.directory.get(name) if origins.valid_label(name) else None
        if entry is None:
            return problem(404, "Unknown plugin", f"no enabled plugin named {name!r}")
        exchange = self.observer.begin(name, req.method, req.raw_uri.split("?", 1)[0], req.client()[0])
        try:
            reply = self._admit(req, entry, name, subpath, prefix, exchange)
            if isinstance(reply, Reply):
                reply.body = exchange.counted(reply.body, reply.status)
            else:
                exchange.watch(reply)
        except BaseException:
            exchange.finish(500, 0, aborted=True)
            raise
        return reply

    def _admit(self, req: Incoming, entry: PluginEntry, name: str, subpath: str, prefix: str,
               exchange: Exchange) -> Any:
        if not entry.enabled:
            return problem(404, "Unknown plugin", f"no enabled plugin named {name!r}")
        if escapes_prefix(subpath):
            return problem(400, "Bad path", "path segments '.' and '..' are not allowed")
        refused = self.hook_gate.gate(req.environ, name, subpath)  # host.hooks: reserved paths, request.before
        req.changed()
        if refused is not None:
            return problem(*refused, plugin=name)
        upgrade = req.upgrade
        if not prefix and (req.method not in IDEMPOTENT or upgrade):
            other = origins.sibling(req.environ.get("HTTP_ORIGIN"), name, self.domain)
            if other is not None:
                # Same site, so the browser sent this plugin's cookies with it: a cross-plugin request forgery.
                what = "open a WebSocket to" if upgrade else f"send {req.method} requests to"
                return problem(403, "Cross-plugin request refused", f"a page of plugin {other!r} may not {what} "
                               f"plugin {name!r}", plugin=name)
        try:
            self.slots.acquire(name, min(self.settings.plugin_queue_wait, entry.limits.timeout))
        except ProxyError as exc:
            return problem(exc.status, exc.title, exc.detail, exc.retry_after, plugin=name)
        try:
            return self._forward(req, entry, name, subpath, prefix, exchange)  # releases when done
        except ProxyError as exc:
            self.slots.release(name)
            return problem(exc.status, exc.title, exc.detail, exc.retry_after, plugin=name)
        except BaseException:
            self.slots.release(name)
            raise

    def _forward(self, req: Incoming, entry: PluginEntry, name: str, subpath: str, prefix: str,
                 exchange: Exchange) -> Any:
        env = req.environ
        timeout, max_body = entry.limits.timeout, entry.limits.max_body
        length = env.get("CONTENT_LENGTH") or None
        if length is not None and (not length.isdigit() or int(length) > max_body):
            raise ProxyError(413, "Request body too large", body_limit(max_body))
        chunked = "chunked" in env.get("HTTP_TRANSFER_ENCODING", "").lower()
        has_body = chunked or (length is not None and int(length) > 0)
        client_ip, host = req.client()
        headers = request_headers(req.headers(), prefix=prefix, client_ip=client_ip, scheme=req.scheme, host=host,
                                  content_length=length if not chunked else None)
        user = self.end_users.user(req.peer, req, req.cookies)
        headers = self.end_users.apply(headers, name, user, entry.users_read)
        path = upstream_path(env.get("RAW_URI") or env.get("REQUEST_URI"), prefix, subpath)
        query = env.get("QUERY_STRING", "")
        url = path + (f"?{query}" if query else "")
        sock = self.socket(name)
        if req.upgrade:
            assert self.websocket is not None
            return self.websocket(name, sock, url, headers, prefix, done=lambda: self.slots.release(name),
                                  wait=self.wait_until_available, closed=exchange.websocket_closed)
        body = exchange.received(body_stream(env["wsgi.input"], max_body)) if has_body else None
        upstream_req = upstream_request(req.method, url, headers, body, timeout)
        try:
            with upstream_errors(name, timeout):
                upstream = self.pool.transport(sock).handle_request(upstream_req)
        except Unavailable:
            # Nothing was sent (the connect failed), so the request can go to the instance that comes up.
            self.wait_until_available(name)
            with upstream_errors(name, timeout):
                upstream = self.pool.transport(sock).handle_request(upstream_req)
        except ProxyError as exc:
            # Reset before any answer: the instance died with our connection still in its listen backlog.
            # A bodiless idempotent request is safe to replay once on the instance that replaces it; the
            # request that crashed the plugin, if replayed and crashing it again, still ends in a 502.
            if exc.status != 502 or has_body or req.method not in IDEMPOTENT:
                raise
            self.wait_until_available(name)
            with upstream_errors(name, timeout):
                upstream = self.pool.transport(sock).handle_request(upstream_req)
        self.mark_active(name)
        upstream.splice = req.splice
        public = f"{req.scheme}://{host}" if prefix else ""
        return Reply(upstream.status_code, response_headers(upstream.headers, prefix, public=public),
                     _Streamed(self, upstream, name, timeout))

    def wait_until_available(self, name: str) -> None:
        """The plugin's socket refused us: wait while it (re)starts or wakes from scale-to-zero, or fail
        fast with 503 + Retry-After when it is backing off for long or quarantined."""
        deadline = time.monotonic() + self.settings.request_wait
        while True:
            remaining = deadline - time.monotonic()
            st = (self.supervisor_status() or {}).get("plugins", {}).get(name)
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
            if serving and _connectable(self.socket(name)):
                return
            if remaining <= 0:
                raise ProxyError(503, "Plugin unavailable", f"plugin {name!r} is {state}", 1)
            if serving:
                time.sleep(0.01)  # running, but the socket switch is still in flight
                continue
            # Starting, backing off briefly, or scaled to zero: the supervisor answers once it runs (or
            # gives up). Concurrent callers all wait for the same single start.
            with contextlib.suppress(HostError):
                control.call(self.layout.web_socket, "wake", name=name, wait=remaining, timeout=remaining + 5)


class _Streamed:
    """A plugin's response body as the server iterates it: each piece as the socket returned it, never held
    back to fill a chunk (a server-sent event or a long-poll answer reaches the client as the plugin writes it;
    gunicorn writes each piece at once). The server calls ``close()`` however the response ends (complete,
    aborted, never iterated), so the upstream connection and the plugin's slot are always given back."""

    def __init__(self, proxy: PluginProxy, upstream: UpstreamResponse, name: str, timeout: float) -> None:
        self._proxy = proxy
        self._upstream = upstream
        self._name = name
        self._timeout = timeout
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        with self._failing():
            piece: Any
            for piece in self._upstream.iter_raw():
                if type(piece) is SpliceBody:
                    piece.guard = self._failing  # its writer moves it: the plugin's failures end the same way
                yield piece

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        try:
            with upstream_errors(self._name, self._timeout):
                yield
        except ProxyError:
            # Headers are gone already; abort the connection so the client sees a truncated body,
            # never a short body passed off as complete.
            log.warning("plugin %s failed mid-response; aborting the client connection", self._name)
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._upstream.close()
        finally:
            self._proxy.slots.release(self._name)
            self._proxy.mark_active(self._name)


class Front:
    """The web tier's WSGI application: plugin requests to :class:`PluginProxy` directly, the rest to the
    Flask app (``fallback``). Routing is the Flask app's, decided the same way: a Host ``<name>.<domain>``
    is that plugin's whatever the path; in path mode ``/plugins/<name>[/<subpath>]`` with a method the
    proxy's routes allow is plugin ``name``'s. Anything unusual (a WebSocket handshake, ``//`` in the path,
    another method) is left to Flask, which answers exactly as it did."""

    def __init__(self, proxy: PluginProxy, fallback: WSGIApp) -> None:
        self.proxy = proxy
        self.fallback = fallback
        self.path_mode = proxy.settings.path_mode

    def route(self, req: Incoming) -> tuple[str, str, str] | None:
        """(plugin, subpath, prefix) for a request this front serves itself, or None."""
        if req.upgrade:
            return None
        label = origins.plugin_label(req.client()[1], self.proxy.domain)
        if label is not None:
            return label, req.path[1:], ""
        if not self.path_mode or req.method not in METHODS:
            return None
        path = req.path
        if not path.startswith("/plugins/") or "//" in path:
            return None
        name, _, subpath = path[9:].partition("/")
        if not name:
            return None
        return name, subpath, f"/plugins/{name}"

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        req = Incoming(environ, self.proxy.forwarding)
        req.splice = upstream_client.WRITER_SPLICES  # our body goes straight to gunicorn's writer
        target = self.route(req)
        if target is None:
            answer: Iterable[bytes] = self.fallback(environ, start_response)
            return answer
        try:
            reply: Reply = self.proxy.handle(req, *target)  # no WebSocket handshake comes this way
        except Exception:
            log.exception("unhandled error")
            reply = problem(500, "Internal error", "the host failed to handle this request; see the host log")
        start_response(status_line(reply.status), reply.headers)
        return reply.body


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

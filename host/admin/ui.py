"""The admin web UI at ``/admin/``: server-rendered pages, one CSS and one small JS file, a strict CSP.

Log in with an API token → a session the supervisor keeps (the registry's); the browser holds its id and CSRF
token in the host's cookie (see host.admin.guard). Every page and every change is one op on the supervisor's
admin socket with the session id as the credential: the supervisor authenticates it, checks the token's scope
(and a change's CSRF token), performs the op and audits it under the token's name. The UI holds no power of its
own and never opens the registry.

Pages: the plugin table (``/admin/``), a plugin (``/admin/plugins/<name>``: grants and the layer enforcing each,
settings form from the manifest's settings, recent logs, restart history), install by upload with the consent
step (``/admin/install``), the audit log (``/admin/audit``), log in / log out.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from flask import Blueprint, Flask, Response, abort, current_app, g, redirect, render_template, request, url_for
from markupsafe import Markup
from werkzeug.wrappers import Response as BaseResponse

from host.admin.forms import UPLOAD_NAME, UploadDir, form_values
from host.admin.guard import COOKIE_PATH, LoginLimiter, Session, cookie_value, cross_origin, parse_cookie
from host.errors import AdminError
from host.headers import HOST_COOKIE, HOST_TOKEN_PREFIX, Forwarding
from host.settings import HostSettings
from host.terminal import printable

log = logging.getLogger(__name__)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
       "form-action 'self'; base-uri 'none'; object-src 'none'")
MAX_TOKEN = 256
PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
ACTIONS = ("enable", "disable", "restart")
# Lifecycle events that make a plugin's restart history (host.history.LIFECYCLE; that module reads the registry).
LIFECYCLE = frozenset({"installed", "enabled", "disabled", "ready", "restarted", "restart_failed", "crashed",
                       "worker_died", "recovered", "quarantined", "stopped", "scaled_to_zero", "supervisor_error"})
# Messages after a redirect (Post/Redirect/Get): a fixed set, so a link cannot make the page say anything else.
NOTICES = {
    "enable": "enabled", "disable": "disabled: its pages answer 404 now", "restart": "restarted",
    "settings": "settings saved; the plugin restarts with them", "install": "installed", "uninstall": "uninstalled",
    "logout": "You are logged out.", "expired": "Your session has ended; log in again.",
}


class Backend(Protocol):
    """host.admin.client.AdminClient: one op on the supervisor's admin socket; AdminError when refused."""

    def call(self, op: str, credential: str | None, **args: Any) -> dict[str, Any]: ...


class Refused(Exception):
    """A request the UI will not act on (bad CSRF token, another origin, read scope): 403 with ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def create_blueprint(backend: Backend, limiter: LoginLimiter | None = None,
                     forwarding: Forwarding | None = None) -> Blueprint:
    """``forwarding``: which peers are front proxies whose X-Forwarded-For names the client (for the login limit;
    else every client behind a proxy would share one)."""
    bp = Blueprint("admin_ui", __name__, url_prefix="/admin", template_folder="templates",
                   static_folder="static", static_url_path="/static")
    limiter = limiter or LoginLimiter()
    forwarding = forwarding or Forwarding()

    def client_address() -> str:
        peer = request.remote_addr or ""
        return forwarding.client(peer, request.host, list(request.headers.items()))[0] or "unknown"

    # -- session, CSRF and origin ----------------------------------------------------------------------

    def current() -> Session | None:
        """The logged-in session (asked of the supervisor once per request), or None."""
        if "admin_session" not in g:
            g.admin_session = None
            parsed = parse_cookie(request.cookies.get(HOST_COOKIE))
            if parsed is not None:
                try:
                    who = backend.call("whoami", parsed[0])
                except AdminError as exc:
                    if exc.status != 401:
                        raise
                else:
                    g.admin_session = Session(parsed[0], parsed[1], str(who.get("token")), str(who.get("scope")))
        return g.admin_session  # type: ignore[no-any-return]

    def own_origin() -> str:
        return f"{request.scheme}://{request.host}"

    def check_origin() -> None:
        why = cross_origin(request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"),
                           request.headers.get("Referer"), own_origin())
        if why is not None:
            raise Refused(why)

    def require(change: bool = False) -> Session:
        sess = current()
        if sess is None:
            if request.method == "POST":
                raise Refused("not logged in (or the session has ended): log in again")
            abort(redirect(url_for("admin_ui.login", next=request.full_path.removesuffix("?"))))
        if request.method == "POST":
            check_origin()
            sent = request.form.get("csrf", "")
            if not sent or not hmac.compare_digest(sent.encode(), sess.csrf.encode()):
                raise Refused("missing or wrong CSRF token (reload the page and try again)")
        if change and not sess.can_change:
            raise Refused(f"the token {sess.name!r} has the read scope: it cannot change anything")
        return sess

    def op(sess: Session, what: str, /, **args: Any) -> dict[str, Any]:
        """An op as the logged-in token (a change carries the CSRF token); an ended session → log in again."""
        if request.method == "POST":
            args["csrf"] = sess.csrf
        try:
            return backend.call(what, sess.sid, **args)
        except AdminError as exc:
            if exc.status == 401:
                abort(ended("expired"))
            raise

    def optional(sess: Session, what: str, /, **args: Any) -> dict[str, Any]:
        """A part of a page it can do without (its logs, say) when that op fails."""
        try:
            return op(sess, what, **args)
        except AdminError as exc:
            if exc.status in (401, 503):
                raise
            log.info("admin UI: %s failed: %s", what, exc)
            return {}

    def ended(done: str) -> BaseResponse:
        resp = redirect(url_for("admin_ui.login", done=done))
        resp.delete_cookie(HOST_COOKIE, path=COOKIE_PATH, secure=request.is_secure, httponly=True, samesite="Strict")
        return resp

    def page(template: str, status: int = 200, **ctx: Any) -> tuple[str, int]:
        ctx.setdefault("session", g.get("admin_session"))
        return render_template(f"admin/{template}", **ctx), status

    @bp.errorhandler(Refused)
    def refused(exc: Refused) -> tuple[str, int]:
        log.warning("admin UI refused %s %s from %s: %s", request.method, request.path, client_address(),
                    exc.reason)
        return page("error.html", 403, title="Refused", detail=exc.reason)

    @bp.errorhandler(AdminError)
    def failed(exc: AdminError) -> tuple[str, int, dict[str, str]]:
        """The supervisor refused or failed (or does not answer: 503): a page, not the API's JSON problem."""
        retry = exc.extra.get("retry_after")
        body, status = page("error.html", exc.status, title=exc.title, detail=exc.detail)
        return body, status, ({"Retry-After": str(retry)} if retry is not None else {})

    @bp.after_request
    def headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "same-origin"  # the Referer fallback of the origin check needs it
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        resp.headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        if not request.path.startswith("/admin/static/"):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    def notice() -> str | None:
        text = NOTICES.get(request.args.get("done", ""))
        plugin = request.args.get("plugin", "")
        return f"{plugin}: {text}" if text and PLUGIN_NAME.fullmatch(plugin) else text

    # -- log in / log out ------------------------------------------------------------------------------

    @bp.get("/login")
    def login() -> tuple[str, int] | BaseResponse:
        if current() is not None:
            return redirect(url_for("admin_ui.plugins"))
        return page("login.html", notice=notice(), next=_safe_next())

    @bp.post("/login")
    def login_post() -> tuple[str, int] | tuple[str, int, dict[str, str]] | BaseResponse:
        check_origin()  # login CSRF: another page must not log this browser in as someone else
        client = client_address()
        wait = limiter.retry_after(client)
        if wait:
            body, status = page("login.html", 429, next=_safe_next(),
                                error=f"Too many failed logins from {client}; try again in {wait} s.")
            return body, status, {"Retry-After": str(wait)}
        token = request.form.get("token", "").strip()
        error = "That token is not valid (unknown, revoked or mistyped)."
        reply: dict[str, Any] = {}
        if token.startswith(HOST_TOKEN_PREFIX) and len(token) <= MAX_TOKEN:
            try:
                reply = backend.call("login", token, client=client)
            except AdminError as exc:
                if exc.status not in (401, 429):
                    raise
                if exc.status == 429:
                    error = f"Too many failed logins from {client}; wait a minute."
        else:
            log.warning("admin UI: failed login from %s (not a %s token)", client, HOST_TOKEN_PREFIX)
        if not reply.get("session") or not reply.get("csrf"):
            limiter.failed(client)
            return page("login.html", 401, next=_safe_next(), error=error)
        resp = redirect(_safe_next() or url_for("admin_ui.plugins"))
        resp.set_cookie(HOST_COOKIE, cookie_value(str(reply["session"]), str(reply["csrf"])),
                        max_age=int(float(reply.get("ttl") or 3600)), path=COOKIE_PATH, secure=request.is_secure,
                        httponly=True, samesite="Strict")
        return resp

    @bp.post("/logout")
    def logout() -> BaseResponse:
        sess = require()
        try:
            backend.call("logout", sess.sid)
        except AdminError:
            log.debug("logout: the session was gone already", exc_info=True)
        return ended("logout")

    # -- plugins ---------------------------------------------------------------------------------------

    @bp.get("/")
    def plugins() -> tuple[str, int]:
        sess = require()
        return page("plugins.html", plugins=op(sess, "plugins").get("plugins", []), notice=notice())

    @bp.post("/plugins/<name>/<action>")
    def act(name: str, action: str) -> BaseResponse | tuple[str, int]:
        sess = require(change=True)
        if action not in ACTIONS or not PLUGIN_NAME.fullmatch(name):
            abort(404)
        op(sess, action, name=name)
        if request.form.get("back") == "plugin":
            return redirect(url_for("admin_ui.plugin", name=name, done=action, plugin=name))
        return redirect(url_for("admin_ui.plugins", done=action, plugin=name))

    @bp.get("/plugins/<name>")
    def plugin(name: str) -> tuple[str, int]:
        sess = require()
        if not PLUGIN_NAME.fullmatch(name):
            abort(404)
        return plugin_page(sess, name)

    def plugin_page(sess: Session, name: str, error: str | None = None, status: int = 200,
                    entered: Mapping[str, str] | None = None) -> tuple[str, int]:
        detail = op(sess, "plugin", name=name).get("plugin", {})
        settings = optional(sess, "settings", name=name).get("settings", [])
        logs = optional(sess, "logs", name=name, n=60).get("lines", [])
        events = optional(sess, "audit", plugin=name, n=300).get("events", [])
        history = [e for e in events if e.get("kind") in LIFECYCLE][:20]
        return page("plugin.html", status, p=detail, settings=settings, logs=logs, history=history,
                    notice=notice(), error=error, entered=entered or {})

    @bp.post("/plugins/<name>/settings")
    def settings(name: str) -> BaseResponse | tuple[str, int]:
        sess = require(change=True)
        if not PLUGIN_NAME.fullmatch(name):
            abort(404)
        rows = op(sess, "settings", name=name).get("settings", [])
        try:
            values = form_values(rows, request.form)
        except ValueError as exc:
            return plugin_page(sess, name, error=str(exc), status=422, entered=request.form)
        if values:
            try:
                op(sess, "put_settings", name=name, values=values)
            except AdminError as exc:
                if exc.status != 422:
                    raise
                return plugin_page(sess, name, error=exc.detail, status=422, entered=request.form)
        return redirect(url_for("admin_ui.plugin", name=name, done="settings", plugin=name))

    @bp.post("/plugins/<name>/uninstall")
    def uninstall(name: str) -> BaseResponse:
        sess = require(change=True)
        if not PLUGIN_NAME.fullmatch(name):
            abort(404)
        op(sess, "uninstall", name=name)
        return redirect(url_for("admin_ui.plugins", done="uninstall", plugin=name))

    # -- install by upload -----------------------------------------------------------------------------

    def uploads() -> UploadDir:
        return UploadDir(Path(current_app.config.get("ADMIN_UPLOADS") or _uploads_dir(backend)))

    def install_form(sess: Session, error: str | None = None, status: int = 200) -> tuple[str, int]:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return page("install.html", status, session=sess, error=error, max_mb=limit >> 20 if limit else None)

    @bp.get("/install")
    def install() -> tuple[str, int]:
        return install_form(require(change=True))

    @bp.post("/install")
    def install_preview() -> tuple[str, int]:
        """Step 1: stage the archive and show what its manifest asks for. Nothing is installed yet."""
        sess = require(change=True)
        archive = request.files.get("archive")
        if archive is None or not archive.filename:
            return install_form(sess, "Choose a plugin archive (.zip, .tar.gz, .tgz or .tar).", 422)
        store = uploads()
        store.sweep()
        try:
            upload = store.stage(archive.stream, archive.filename)
        except ValueError as exc:
            return install_form(sess, str(exc), 422)
        try:
            preview = op(sess, "preview", upload=upload)
        except AdminError as exc:
            store.discard(upload)
            if exc.status in (401, 503):
                raise
            return install_form(sess, exc.detail, exc.status)
        return page("consent.html", preview=preview, upload=upload, filename=os.path.basename(archive.filename),
                    grant=json.dumps(preview.get("permissions", {}), sort_keys=True))

    @bp.post("/install/confirm")
    def install_confirm() -> BaseResponse | tuple[str, int]:
        """Step 2: install the staged archive granting what step 1 showed, no more: the supervisor refuses
        (naming the difference) an archive that asks for more than this grant."""
        sess = require(change=True)
        upload = request.form.get("upload", "")
        if not UPLOAD_NAME.fullmatch(upload):
            raise Refused("no such upload: upload the archive again")
        store = uploads()
        try:
            if request.form.get("consent") != "yes":
                return install_form(sess, "Nothing was installed: the permissions were not granted.", 422)
            try:
                grant = json.loads(request.form.get("grant", ""))
            except ValueError:
                grant = None
            if not isinstance(grant, dict):
                raise Refused("the consent form was altered: upload the archive again")
            try:
                result = op(sess, "install", upload=upload, grant=grant)
            except AdminError as exc:
                if exc.status in (401, 503):
                    raise
                excess = exc.extra.get("excess")
                lines = [exc.detail, *excess] if isinstance(excess, list) else [exc.detail]
                return install_form(sess, "\n".join(str(line) for line in lines), exc.status)
        finally:
            store.discard(upload)
        name = str((result.get("plugin") or {}).get("name") or "")
        if PLUGIN_NAME.fullmatch(name):
            return redirect(url_for("admin_ui.plugin", name=name, done="install", plugin=name))
        return redirect(url_for("admin_ui.plugins", done="install"))

    # -- audit log -------------------------------------------------------------------------------------

    @bp.get("/audit")
    def audit() -> tuple[str, int]:
        sess = require()
        plugin = request.args.get("plugin", "")
        plugin = plugin if PLUGIN_NAME.fullmatch(plugin) else ""
        n = request.args.get("n", "")
        limit = min(max(int(n), 1), 1000) if n.isdigit() else 200
        events = op(sess, "audit", n=limit, **({"plugin": plugin} if plugin else {})).get("events", [])
        return page("audit.html", events=events, plugin=plugin, n=limit)

    @bp.app_template_filter("when")
    def when(ts: Any) -> str:
        if isinstance(ts, int | float):
            return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
        return str(ts or "").replace("T", " ")[:19]

    @bp.app_template_filter("shown")
    def shown(value: Any) -> str:
        """An audit detail value as text: strings as they are, anything else as JSON (not Python's repr)."""
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)

    @bp.app_template_global("state_class")
    def state_class(state: str | None, enabled: bool = True) -> str:
        if not enabled:
            return "off"
        return {"running": "ok", "starting": "busy", "backoff": "warn", "degraded": "warn", "scaled_to_zero": "idle",
                "stopped": "idle", "stopping": "busy", "quarantined": "bad", "failed": "bad", "disabled": "off"}.get(
                    str(state or "").lower().replace(" ", "_").replace("-", "_"), "idle")

    return bp


def _safe_next() -> str | None:
    """Where to go after logging in: a path of the admin UI only (no open redirect)."""
    target = request.values.get("next", "")
    if target.startswith("/admin/") and not target.startswith("/admin//") and "\\" not in target:
        return target
    return None


def _uploads_dir(backend: Backend) -> Path:
    layout = getattr(backend, "layout", None)  # AdminClient's: the home as the admin web tier reaches it
    if layout is None:
        raise AdminError(503, "Service Unavailable", "no upload directory configured (ADMIN_UPLOADS)")
    return Path(layout.uploads)


def defused(value: Any) -> Any:
    """Every ``{{ value }}`` the pages print: plugin-chosen text (descriptions, log lines, errors, audit details)
    without control characters or bidirectional overrides, which could reorder what the operator reads (as in
    the terminal: host.terminal). Markup (a macro's output) was built from values that passed here already."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return printable(value, multiline=True)
    return value


def register(app: Flask, backend: Backend, limiter: LoginLimiter | None = None) -> None:
    """Mount the UI on the admin app: ``create_admin_app`` calls this with its backend (AdminClient). The front
    proxies come from the same HOST_* environment the admin web tier built its settings from."""
    if app.jinja_env.finalize is None:  # the admin app renders only the UI's templates
        app.jinja_env.finalize = defused
    forwarding = Forwarding(HostSettings().forwarded_networks)
    app.register_blueprint(create_blueprint(backend, limiter, forwarding))

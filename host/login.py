"""The host's own login page for end users (``/_host/login``, ``/_host/logout``) on the host's origin.

The supervisor checks the password (web socket op ``user_login``: the web tier never reads the registry);
the web tier then sets the signed session cookie (host.identity) that host.end_users reads on every
proxied request. Not the admin UI's login, which lives on the admin listener and takes admin tokens.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, redirect, render_template, request

from host import control, identity
from host.end_users import USER_NAME, EndUsers
from host.errors import HostError
from host.headers import Forwarding
from host.layout import Layout

log = logging.getLogger(__name__)


def _safe_next(target: str | None) -> str:
    """Only a path on this origin: never "//elsewhere" or "/\\elsewhere" (an open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or any(c < " " for c in target):
        return "/"
    return target


def blueprint(layout: Layout, end_users: EndUsers, forwarding: Forwarding) -> Blueprint:
    bp = Blueprint("host_login", __name__)

    @bp.get("/_host/login")
    def form() -> str:
        return render_template("login.html", next=_safe_next(request.args.get("next")), error=None,
                               user=end_users.user(request.remote_addr or "", request.headers, request.cookies))

    @bp.post("/_host/login")
    def login() -> Any:
        name, password = request.form.get("name", ""), request.form.get("password", "")
        target = _safe_next(request.form.get("next"))
        client = forwarding.client(request.remote_addr or "", request.host, list(request.headers.items()))[0]
        secret = end_users.secret
        ok = False
        if secret is not None and USER_NAME.match(name) and password:
            try:
                ok = bool(control.call(layout.web_socket, "user_login", timeout=10.0, name=name, password=password,
                                       client=client).get("ok"))
            except HostError:
                log.warning("cannot reach the supervisor to check a login", exc_info=True)
        if not ok or secret is None:
            return render_template("login.html", next=target, error="Wrong name or password.", user=None), 401
        resp = redirect(target, code=303)
        resp.set_cookie(identity.USER_COOKIE, identity.session_cookie(secret, name), max_age=identity.SESSION_TTL,
                        path="/", httponly=True, samesite="Lax", secure=request.scheme == "https")
        return resp

    @bp.post("/_host/logout")
    def logout() -> Any:
        resp = redirect("/", code=303)
        resp.delete_cookie(identity.USER_COOKIE, path="/", httponly=True, samesite="Lax")
        return resp

    return bp

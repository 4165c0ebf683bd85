"""The current user, as the host tells the plugin.

``X-Plugin-Host-User`` carries the signed-in user's name (the host always removes a client's own copy).
Plugins granted ``users:read`` also get ``X-Plugin-Host-Identity``: a JWT (HS256, ``aud`` = the plugin,
60 s) signed with a key only this plugin and the host know (PLUGIN_HOST_USER_KEY), which :func:`verify`
checks; hand it on to code that cannot see the request's headers, and check it there.

    from plugin_sdk.user import current_user
    name = current_user(flask.request.headers)      # None: nobody is signed in
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["ASSERTION_HEADER", "USER_HEADER", "InvalidAssertion", "current_user", "verify"]

USER_HEADER = "X-Plugin-Host-User"
ASSERTION_HEADER = "X-Plugin-Host-Identity"
ISSUER = "plugin-host"
LEEWAY = 5  # seconds of clock skew tolerated on exp and iat


class InvalidAssertion(Exception):
    """The assertion is malformed, forged, meant for another plugin or expired."""


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify(token: str, key: str | None = None, audience: str | None = None, now: float | None = None
           ) -> dict[str, Any]:
    """The claims of a user assertion (``sub`` is the user) if the host signed it for this plugin and it is
    still valid; InvalidAssertion otherwise. ``key``/``audience`` default to PLUGIN_HOST_USER_KEY and
    PLUGIN_NAME."""
    key = key or os.environ.get("PLUGIN_HOST_USER_KEY")
    audience = audience or os.environ.get("PLUGIN_NAME")
    if not key or not audience:
        raise InvalidAssertion("no PLUGIN_HOST_USER_KEY: the plugin is not granted users:read")
    parts = token.split(".") if isinstance(token, str) and len(token) < 4096 else []
    if len(parts) != 3:
        raise InvalidAssertion("not a JWT")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        sig = _unb64(parts[2])
    except ValueError as exc:
        raise InvalidAssertion("not a JWT") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256":  # never "none", never another algorithm
        raise InvalidAssertion("not an HS256 JWT")
    good = hmac.new(key.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(sig, good):
        raise InvalidAssertion("bad signature")
    now = time.time() if now is None else now
    if not isinstance(claims, dict) or claims.get("iss") != ISSUER or claims.get("aud") != audience:
        raise InvalidAssertion("not issued by the host for this plugin")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int) or not isinstance(iat, int) or exp + LEEWAY < now or iat - LEEWAY > now:
        raise InvalidAssertion("expired")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise InvalidAssertion("no user")
    return claims


def current_user(headers: Mapping[str, str], *, verified: bool = False) -> str | None:
    """The signed-in user of this request, or None. ``verified``: believe the signed assertion only (for a
    plugin granted users:read), raising InvalidAssertion when it is missing or bad."""
    if verified:
        token = headers.get(ASSERTION_HEADER)
        if not token:
            raise InvalidAssertion(f"no {ASSERTION_HEADER} header")
        return str(verify(token)["sub"])
    return headers.get(USER_HEADER) or None

"""Who the end user is, as the host tells plugins: host sessions (a signed cookie), the user assertion for
plugins granted ``users:read``, and the host's own users' password hashes. Pure functions; no Flask.

Both the cookie and the assertion are HMAC-SHA256 over a JSON payload, checked without a registry query, so
the proxy's hot path stays a few microseconds. A plugin's assertion key is derived from the host secret and
its name (``plugin_key``): it can verify assertions meant for it, never make one another plugin accepts.
The assertion is a JWT (HS256) with ``iss`` "plugin-host", ``aud`` the plugin's name, ``sub`` the user and a
60 s lifetime, so any JWT library can check it too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

ISSUER = "plugin-host"
ASSERTION_TTL = 60
SESSION_TTL = 12 * 3600
USER_COOKIE = "plugin_host_user"  # never forwarded to plugins (host.headers)
USER_HEADER = "X-Plugin-Host-User"
ASSERTION_HEADER = "X-Plugin-Host-Identity"
SECRET_FILE = "_identity.key"  # in run/: root:<web gid> 0640
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def plugin_key(secret: bytes, plugin: str) -> str:
    """The key (hex) plugin ``plugin`` verifies its user assertions with (PLUGIN_HOST_USER_KEY)."""
    return hmac.new(secret, b"user-assertion\0" + plugin.encode(), hashlib.sha256).hexdigest()


def assertion(secret: bytes, plugin: str, user: str, now: float | None = None) -> str:
    """A short-lived signed statement "``user`` is signed in", for plugin ``plugin`` only."""
    now = int(time.time() if now is None else now)
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    claims = _b64(json.dumps({"iss": ISSUER, "aud": plugin, "sub": user, "iat": now, "exp": now + ASSERTION_TTL},
                             separators=(",", ":")).encode())
    key = plugin_key(secret, plugin).encode()
    sig = hmac.new(key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(sig)}"


def session_cookie(secret: bytes, user: str, now: float | None = None) -> str:
    """The value of the host's user session cookie (for the host origin only)."""
    payload = _b64(json.dumps({"u": user, "exp": int((time.time() if now is None else now) + SESSION_TTL)}).encode())
    sig = hmac.new(secret, b"session\0" + payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(sig)}"


def session_user(secret: bytes, cookie: str | None, now: float | None = None) -> str | None:
    """The user a session cookie names, if its signature is good and it has not expired."""
    if not cookie or len(cookie) > 1024 or "." not in cookie:
        return None
    payload, _, sig = cookie.partition(".")
    good = hmac.new(secret, b"session\0" + payload.encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(_unb64(sig), good):
            return None
        data = json.loads(_unb64(payload))
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("u"), str) or not isinstance(data.get("exp"), int):
        return None
    return data["u"] if data["exp"] > (time.time() if now is None else now) else None


def session_expiry(cookie: str) -> float:
    """The expiry a (verified) session cookie states."""
    try:
        return float(json.loads(_unb64(cookie.partition(".")[0]))["exp"])
    except (ValueError, KeyError, TypeError):
        return 0.0


def load_or_create_secret(path: Path, gid: int | None) -> bytes:
    """The host secret (32 random bytes), kept across restarts so sessions survive them."""
    try:
        data = path.read_bytes()
        if len(data) == 32:
            return data
    except FileNotFoundError:
        pass
    data = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    if gid is not None:
        os.chown(tmp, 0, gid)
        os.chmod(tmp, 0o640)
    tmp.replace(path)
    return data


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, salt, digest = stored.split("$")
        return kind == "scrypt" and hmac.compare_digest(
            hashlib.scrypt(password.encode(), salt=_unb64(salt), **_SCRYPT), _unb64(digest))
    except ValueError:
        return False

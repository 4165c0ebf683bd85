"""What keeps the admin UI's browser session the operator's own: the session cookie, the origin check on every
change, and the failed-login limiter. Pure functions and small classes; no Flask request state.

The cookie (``plugin_host_session``, which the proxy never forwards to a plugin) holds ``<session id>.<CSRF
token>``: HttpOnly (no script reads it, so a page cannot learn the CSRF token from it), SameSite=Strict,
host-only (no Domain), Path=/admin/. Pages put the CSRF token into every form; a POST's form token must equal
the cookie's, and the supervisor checks it once more against the session it keeps (a forged cookie gains
nothing). SameSite=Strict alone would not do: a plugin served by path on the same host name but another port
(``127.0.0.1:8000`` vs the admin's ``127.0.0.1:8001``) is the *same site*, and its forms would carry the
cookie. So a change must also come from the admin's own origin (Origin / Sec-Fetch-Site / Referer).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

COOKIE_PATH = "/admin/"
MAX_COOKIE = 512
_PART = re.compile(r"^[A-Za-z0-9_-]{16,256}$")  # secrets.token_urlsafe output


@dataclass(frozen=True)
class Session:
    sid: str
    csrf: str
    name: str  # the token's name: who the audit log says acted
    scope: str  # "admin" or "read"

    @property
    def can_change(self) -> bool:
        return self.scope == "admin"


def cookie_value(sid: str, csrf: str) -> str:
    return f"{sid}.{csrf}"


def parse_cookie(value: str | None) -> tuple[str, str] | None:
    """(session id, CSRF token) from the cookie, or None when it is no cookie of ours."""
    if not value or len(value) > MAX_COOKIE:
        return None
    sid, sep, csrf = value.partition(".")
    if not sep or not _PART.fullmatch(sid) or not _PART.fullmatch(csrf):
        return None
    return sid, csrf


def cross_origin(origin: str | None, fetch_site: str | None, referer: str | None, own: str) -> str | None:
    """Why a state-changing request is not from the admin's own pages, or None when it is.

    ``own``: the origin the request was made to (``http://127.0.0.1:8001``). Browsers send Origin with every
    POST (``null`` from sandboxed frames and after some redirects) and Sec-Fetch-Site; a client sending neither
    is no browser a forged page could drive, and still needs the CSRF token."""
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"request from another {'site' if fetch_site == 'cross-site' else 'origin'} ({fetch_site})"
    if origin is not None:
        return None if origin.lower().rstrip("/") == own.lower() else f"request from another origin ({origin[:100]})"
    if referer:
        parts = urlsplit(referer)
        if f"{parts.scheme}://{parts.netloc}".lower() != own.lower():
            return "request from another origin (by its Referer)"
    return None


@dataclass
class LoginLimiter:
    """Failed logins per client address in a sliding window. The admin web tier is one process, so this is the
    whole limit there; the supervisor keeps its own count (in the registry) and audits each failure. A refused
    attempt never reaches the supervisor: a password-guessing loop costs it nothing. ``clock`` for tests."""

    limit: int = 5
    window: float = 60.0
    clock: Callable[[], float] = time.monotonic
    failures: dict[str, list[float]] = field(default_factory=dict)

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again; 0 = now."""
        now = self.clock()
        recent = [t for t in self.failures.get(client, []) if now - t < self.window]
        if recent:
            self.failures[client] = recent
        else:
            self.failures.pop(client, None)
        if len(recent) < self.limit:
            return 0
        return max(1, int(recent[0] + self.window - now + 0.999))

    def failed(self, client: str) -> None:
        self.failures.setdefault(client, []).append(self.clock())
        if len(self.failures) > 10_000:  # bounded memory under a spray of addresses: forget the oldest
            del self.failures[next(iter(self.failures))]

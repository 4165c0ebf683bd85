"""Who the end user is, in the web tier: a trusted front proxy's SSO header or the host's own session
cookie, and the identity headers a plugin gets (host.identity signs them). No registry access: the secret is
read once from run/_identity.key (written by the supervisor), so the proxy's hot path costs one HMAC.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from host import identity
from host.headers import Forwarding

log = logging.getLogger(__name__)
# A user name as the host passes it on: printable ASCII without separators a header or a log would mangle.
USER_NAME = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")


class _Headers(Protocol):
    def get(self, key: str, default: str) -> str: ...


class EndUsers:
    def __init__(self, secret_path: Path, forwarding: Forwarding, trusted_header: str = "") -> None:
        self.secret_path = secret_path
        self.forwarding = forwarding
        self.trusted_header = trusted_header.lower()
        self._secret: bytes | None = None
        # Checked cookies and minted assertions, so a busy user's requests cost a dict lookup, not an HMAC:
        # cookie -> (user, expiry); (plugin, user) -> (assertion, minted at), reused for half its lifetime.
        self._sessions: dict[str, tuple[str, float]] = {}
        self._assertions: dict[tuple[str, str], tuple[str, float]] = {}

    @property
    def secret(self) -> bytes | None:
        if self._secret is None:
            try:
                data = self.secret_path.read_bytes()
            except OSError:
                return None  # no supervisor has written it (a bare test app): nobody is signed in
            self._secret = data if len(data) == 32 else None
        return self._secret

    def user(self, peer: str, headers: _Headers, cookies: Mapping[str, str]) -> str | None:
        """The signed-in user: the trusted header, only when ``peer`` is a configured front proxy; else
        the host's session cookie. None: anonymous."""
        claimed = headers.get(self.trusted_header, "").strip() if self.trusted_header else ""
        if claimed and self.forwarding.trusts(peer):  # parse the peer only when it claims someone
            return claimed if USER_NAME.match(claimed) else None
        cookie = cookies.get(identity.USER_COOKIE)
        secret = self.secret
        if not cookie or secret is None:
            return None
        now = time.time()
        known = self._sessions.get(cookie)
        if known is not None and known[1] > now:
            return known[0]
        user = identity.session_user(secret, cookie, now)
        if user is not None:
            _bounded(self._sessions)[cookie] = (user, min(now + 60, identity.session_expiry(cookie)))
        return user

    def apply(self, out: list[tuple[str, str]], plugin: str, user: str | None, users_read: bool
              ) -> list[tuple[str, str]]:
        """``out`` (host.headers.request_headers, which already dropped client copies of the identity headers)
        without the trusted SSO header, plus X-Plugin-Host-User and, for ``users_read``, the assertion."""
        if self.trusted_header:
            out = [(k, v) for k, v in out if k.lower() != self.trusted_header]
        if user is None:
            return out
        out.append((identity.USER_HEADER, user))
        secret = self.secret
        if users_read and secret is not None:
            now = time.time()
            minted = self._assertions.get((plugin, user))
            if minted is None or now - minted[1] > identity.ASSERTION_TTL / 2:
                minted = (identity.assertion(secret, plugin, user, now), now)
                _bounded(self._assertions)[(plugin, user)] = minted
            out.append((identity.ASSERTION_HEADER, minted[0]))
        return out


def _bounded(cache: dict[Any, Any], size: int = 4096) -> dict[Any, Any]:
    """``cache``, emptied first when full (a burst of new users costs their HMACs again, never memory)."""
    if len(cache) >= size:
        cache.clear()
    return cache

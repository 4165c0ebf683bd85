"""The host's own end users (``host user add|list|remove``): names and scrypt password hashes in the registry
(table ``users``). Who may use the host's login page; plugins learn the name (host.end_users), never more."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from host import identity
from host.registry import Registry

MIN_PASSWORD = 8
LOGIN_FAILURES = 5  # per client address and minute; the next attempt is refused without checking


@dataclass(frozen=True)
class User:
    name: str
    created: float


def check_name(name: str) -> None:
    from host.end_users import USER_NAME

    if not USER_NAME.match(name):
        raise ValueError(f"bad user name {name[:64]!r}: 1-128 of letters, digits, '.', '_', '@', '+', '-'")


def add(registry: Registry, name: str, password: str, who: str | None = None) -> None:
    """Add user ``name`` (or set a new password). ValueError for a bad name or a password under 8 characters."""
    check_name(name)
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password has at least {MIN_PASSWORD} characters")
    digest = identity.hash_password(password)
    with registry.transaction() as db:
        db.execute("INSERT INTO users (name, hash, created) VALUES (?, ?, ?) "
                   "ON CONFLICT(name) DO UPDATE SET hash = excluded.hash", (name, digest, time.time()))
    registry.record(None, "user_added", who=who, name=name)


def remove(registry: Registry, name: str, who: str | None = None) -> bool:
    with registry.transaction() as db:
        gone = db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0
    if gone:
        registry.record(None, "user_removed", who=who, name=name)
    return gone


def all_users(registry: Registry) -> list[User]:
    rows = registry.connection().execute("SELECT name, created FROM users ORDER BY name").fetchall()
    return [User(str(r[0]), float(r[1])) for r in rows]


def login(registry: Registry, name: str, password: str, client: str) -> bool:
    """Whether ``password`` is user ``name``'s; failures are counted per client and audited, and a client
    over LOGIN_FAILURES in a minute is refused without a check (so guessing costs a minute per 5 tries)."""
    if registry.login_failures(f"user:{client}") >= LOGIN_FAILURES:
        return False
    row = registry.connection().execute("SELECT hash FROM users WHERE name = ?", (name,)).fetchone()
    # an unknown name costs the same scrypt as a known one: timing does not tell which names exist
    ok = identity.check_password(password, str(row[0]) if row else _dummy())
    if ok and row is not None:
        return True
    registry.record_login_failure(f"user:{client}")
    registry.record(None, "user_login_failed", name=name[:128], client=client)
    return False


@functools.cache
def _dummy() -> str:
    """Hashed on first use, not at import: every `host` command imports this module (~0.1 s of scrypt)."""
    return identity.hash_password("not a password of anyone's")

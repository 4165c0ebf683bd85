"""End-user identity: who the proxy says the user is, the signed assertion plugins verify with plugin_sdk.user
(forgeries rejected), the host's session cookie, its own users' passwords and the login page."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from host import identity, users
from host.end_users import EndUsers
from host.headers import Forwarding, request_headers
from host.login import _safe_next
from host.registry import Registry
from host.runtime.plugin_sdk.user import InvalidAssertion, current_user, verify

SECRET = b"s" * 32
NOW = 1_700_000_000.0
NONE_HEADER = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_genuine_assertion_verifies() -> None:
    token = identity.assertion(SECRET, "notes", "alice", now=NOW)
    claims = verify(token, identity.plugin_key(SECRET, "notes"), "notes", now=NOW + 30)
    assert (claims["sub"], claims["aud"], claims["iss"], claims["exp"] - claims["iat"]) == ("alice", "notes",
                                                                                          "plugin-host", 60)


def forged_claims(token: str, **changes: object) -> str:
    head, claims, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(claims + "=="))
    return f"{head}.{b64(json.dumps({**data, **changes}).encode())}.{sig}"


@pytest.mark.parametrize(("forge", "error"), [
    (lambda t: forged_claims(t, sub="admin"), "bad signature"),
    (lambda t: forged_claims(t, exp=NOW + 10**6), "bad signature"),
    # signed with another plugin's key (a plugin can make assertions for itself only)
    (lambda t: identity.assertion(SECRET, "other", "alice", now=NOW), "bad signature"),
    # alg "none", unsigned
    (lambda t: NONE_HEADER + "." + t.split(".")[1] + ".", "not an HS256 JWT"),
    (lambda t: "garbage", "not a JWT"),
    (lambda t: t.rsplit(".", 1)[0] + "." + b64(b"x" * 32), "bad signature"),
])
def test_the_sdk_rejects_a_forged_assertion(forge: object, error: str) -> None:
    token = identity.assertion(SECRET, "notes", "alice", now=NOW)
    with pytest.raises(InvalidAssertion, match=error):
        verify(forge(token), identity.plugin_key(SECRET, "notes"), "notes", now=NOW)  # type: ignore[operator]


def test_an_assertion_for_another_plugin_or_expired_is_rejected() -> None:
    # "other" hands its own (genuine) assertion to "notes": wrong key for notes
    theirs = identity.assertion(SECRET, "other", "alice", now=NOW)
    with pytest.raises(InvalidAssertion, match="bad signature"):
        verify(theirs, identity.plugin_key(SECRET, "notes"), "notes", now=NOW)
    # the right key but checked as another audience
    with pytest.raises(InvalidAssertion, match="not issued by the host for this plugin"):
        verify(theirs, identity.plugin_key(SECRET, "other"), "notes", now=NOW)
    with pytest.raises(InvalidAssertion, match="expired"):
        verify(theirs, identity.plugin_key(SECRET, "other"), "other", now=NOW + 66)


def test_verify_needs_the_key_of_users_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLUGIN_HOST_USER_KEY", raising=False)
    with pytest.raises(InvalidAssertion, match="not granted users:read"):
        verify(identity.assertion(SECRET, "notes", "alice"))
    assert current_user({"X-Plugin-Host-User": "alice"}) == "alice"
    with pytest.raises(InvalidAssertion, match="no X-Plugin-Host-Identity"):
        current_user({"X-Plugin-Host-User": "alice"}, verified=True)


def test_session_cookie() -> None:
    cookie = identity.session_cookie(SECRET, "alice", now=NOW)
    assert identity.session_user(SECRET, cookie, now=NOW + 60) == "alice"
    assert identity.session_user(SECRET, cookie, now=NOW + identity.SESSION_TTL + 1) is None
    assert identity.session_user(b"t" * 32, cookie, now=NOW) is None
    _, sig = cookie.split(".")
    forged = b64(json.dumps({"u": "admin", "exp": int(NOW) + 100}).encode())
    assert identity.session_user(SECRET, f"{forged}.{sig}", now=NOW) is None
    assert identity.session_user(SECRET, "x.y", now=NOW) is None


def test_the_sso_header_is_believed_from_configured_proxies_only(tmp_path: Path) -> None:
    import ipaddress

    (tmp_path / identity.SECRET_FILE).write_bytes(SECRET)
    eu = EndUsers(tmp_path / identity.SECRET_FILE, Forwarding((ipaddress.ip_network("10.0.0.1/32"),)),
                  "X-Forwarded-User")
    assert eu.user("10.0.0.1", {"x-forwarded-user": "alice"}, {}) == "alice"
    assert eu.user("10.0.0.2", {"x-forwarded-user": "alice"}, {}) is None
    assert eu.user("10.0.0.1", {"x-forwarded-user": "al\nice"}, {}) is None  # not a name we pass on
    cookie = identity.session_cookie(SECRET, "bob")
    assert eu.user("10.0.0.2", {}, {identity.USER_COOKIE: cookie}) == "bob"


def test_client_copies_of_the_identity_headers_are_stripped_and_the_hosts_set(tmp_path: Path) -> None:
    (tmp_path / identity.SECRET_FILE).write_bytes(SECRET)
    eu = EndUsers(tmp_path / identity.SECRET_FILE, Forwarding(), "X-Forwarded-User")
    incoming = [("X-Plugin-Host-User", "admin"), ("x-plugin-host-identity", "forged"), ("X-Forwarded-User", "root"),
                ("Cookie", f"a=1; {identity.USER_COOKIE}=secret")]
    out = request_headers(incoming, prefix="", client_ip="1.2.3.4", scheme="http", host="h", content_length=None)
    assert eu.apply(out, "notes", None, True) == [("Cookie", "a=1"), ("Host", "h"), ("X-Forwarded-For", "1.2.3.4"),
                                                  ("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "h")]
    signed = dict(eu.apply(out, "notes", "alice", True))
    assert signed["X-Plugin-Host-User"] == "alice"
    assert verify(signed["X-Plugin-Host-Identity"], identity.plugin_key(SECRET, "notes"), "notes")["sub"] == "alice"
    assert "X-Plugin-Host-Identity" not in dict(eu.apply(out, "notes", "alice", False))  # no users:read


def test_host_users_and_login_failures(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    with pytest.raises(ValueError, match="at least 8"):
        users.add(registry, "alice", "short")
    users.add(registry, "alice", "correct horse")
    stored = registry.connection().execute("SELECT hash FROM users").fetchone()[0]
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert users.login(registry, "alice", "correct horse", "1.2.3.4")
    assert not users.login(registry, "alice", "wrong", "1.2.3.4")
    assert not users.login(registry, "nobody", "correct horse", "1.2.3.4")
    for _ in range(3):
        users.login(registry, "alice", "wrong", "1.2.3.4")
    assert not users.login(registry, "alice", "correct horse", "1.2.3.4")  # 5 failures in a minute: refused
    assert users.login(registry, "alice", "correct horse", "5.6.7.8")
    assert users.remove(registry, "alice") and not users.login(registry, "alice", "correct horse", "5.6.7.8")


@pytest.mark.parametrize(("target", "safe"), [
    ("/plugins/notes/", "/plugins/notes/"), ("//evil.example/", "/"), ("/\\evil.example", "/"),
    ("https://evil.example/", "/"), (None, "/"), ("/x\r\nSet-Cookie: a=b", "/"),
])
def test_login_redirects_only_to_this_origin(target: str | None, safe: str) -> None:
    assert _safe_next(target) == safe


def test_checked_sessions_and_minted_assertions_are_reused_not_trusted_blindly(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / identity.SECRET_FILE).write_bytes(SECRET)
    eu = EndUsers(tmp_path / identity.SECRET_FILE, Forwarding())
    now = [NOW]
    monkeypatch.setattr("host.end_users.time.time", lambda: now[0])
    cookie = identity.session_cookie(SECRET, "bob", now=NOW)
    assert eu.user("1.2.3.4", {}, {identity.USER_COOKIE: cookie}) == "bob"
    assert eu.user("1.2.3.4", {}, {identity.USER_COOKIE: cookie + "x"}) is None  # not the cached one
    first = dict(eu.apply([], "notes", "bob", True))["X-Plugin-Host-Identity"]
    now[0] += 29
    assert dict(eu.apply([], "notes", "bob", True))["X-Plugin-Host-Identity"] == first  # still 31 s to live
    now[0] += 2
    fresh = dict(eu.apply([], "notes", "bob", True))["X-Plugin-Host-Identity"]
    assert fresh != first and verify(fresh, identity.plugin_key(SECRET, "notes"), "notes", now=now[0] + 59)
    now[0] = NOW + identity.SESSION_TTL + 1
    assert eu.user("1.2.3.4", {}, {identity.USER_COOKIE: cookie}) is None  # the cache never outlives the cookie

"""Header hygiene at the proxy: what of a client's request reaches a plugin, what of a plugin's response
reaches the client, and who the client is. Pure functions of header lists; no sockets, no Flask.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from host.identity import USER_COOKIE  # the host's end-user session: never forwarded to plugins either

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Headers only the host may set; client-sent copies are dropped before the host sets its own.
HOST_SET = frozenset({
    "expect",  # the web tier already answered 100-continue; the plugin gets the body straight away
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix", "x-forwarded-port",
    # Scheme headers the plugin's gunicorn would believe too (it trusts every peer of its Unix socket).
    "x-forwarded-ssl", "x-forwarded-protocol", "x-forwarded-scheme", "x-url-scheme", "front-end-https",
    "forwarded", "x-real-ip", "x-plugin-host-user", "x-plugin-host-identity", "host", "content-length",
})
# Response headers whose effect reaches beyond the plugin's prefix on the shared origin: a service worker
# scoped to "/", wiping every plugin's cookies/storage, HSTS or alternative services for the whole host.
# On an origin of its own (prefix "") these act on that origin only and pass, except SITE_WIDE.
ORIGIN_WIDE = frozenset({"service-worker-allowed", "clear-site-data", "strict-transport-security", "alt-svc",
                         "public-key-pins", "public-key-pins-report-only"})
# Clear-Site-Data: "cookies" clears the cookies of the whole registrable domain (the parent of every plugin
# origin, and the host's), whatever origin sends it.
SITE_WIDE = frozenset({"clear-site-data"})
# Instructions to a front proxy (nginx, Apache, lighttpd, LiteSpeed) that an operator may put before the host:
# serve a file from its disk, redirect internally to a location clients cannot reach, purge its cache.
# Only the front proxy should ever read them; a plugin's copy is dropped. X-Accel-Buffering stays: it only
# turns off nginx's buffering of this one response (what a streaming or server-sent-events plugin needs),
# which a plugin could as well get by streaming slowly.
FRONT_PROXY_PREFIXES = ("x-accel-", "x-sendfile", "x-lighttpd-send-", "x-litespeed-")
FRONT_PROXY = frozenset({"x-reproxy-url"})
FRONT_PROXY_ALLOWED = frozenset({"x-accel-buffering"})
HOST_COOKIE = "plugin_host_session"  # the admin UI's session cookie: never forwarded to plugins
HOST_TOKEN_PREFIX = "phk_"  # admin API tokens: an Authorization carrying one is never forwarded
# Control characters other than HTAB: invalid in any field value (RFC 9110 5.5); browsers ignore a Set-Cookie
# with one (RFC 6265bis 5.6).
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a field name (RFC 9110 5.6.2)
MAX_COOKIE_ATTR = 1024  # RFC 6265bis 5.6: browsers ignore an attribute whose value is longer

log = logging.getLogger(__name__)


class ResponseHead(Protocol):
    """A response's fields as the plugin sent them (host.upstream.RawHeaders, or an ``httpx.Headers``)."""

    @property
    def raw(self) -> Sequence[tuple[bytes, bytes]]: ...

    def get(self, key: str, default: str = ...) -> str | None: ...

    def __contains__(self, key: object) -> bool: ...


# A Host value as a front proxy may forward it: a name or IPv4 address, or a bracketed IPv6 address, and a port.
_FORWARDED_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


@dataclass(frozen=True)
class Forwarding:
    """Who the client is, as the web tier tells plugins: the peer's own address and Host, unless the peer is
    a configured front proxy (``HostSettings.forwarded_allow_ips``), whose X-Forwarded-For and -Host are
    then believed. The scheme is gunicorn's business: the web tier gives it the same list and only
    X-Forwarded-Proto as the scheme header, and gunicorn sets ``wsgi.url_scheme`` (it never rewrites
    REMOTE_ADDR from X-Forwarded-For, since 19.0, so the client address is worked out here)."""

    proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def trusts(self, peer: str) -> bool:
        """Whether ``peer`` is a front proxy. A Unix-socket peer has no address; gunicorn believes its
        scheme header unconditionally, so it is believed here too, but only once some proxy is configured
        (with none, the web tier gives gunicorn no scheme header to believe)."""
        if not self.proxies:
            return False
        ip = _ip(peer)
        if ip is None:
            return not peer
        return any(ip in net for net in self.proxies)

    def client(self, peer: str, host: str, incoming: list[tuple[str, str]]) -> tuple[str, str]:
        """(client address, host) for the request that ``peer`` sent with Host ``host`` and headers ``incoming``.

        From a front proxy the client is the last X-Forwarded-For hop that is not a front proxy itself: each
        proxy appends the address it saw, so hops left of the first untrusted one are whatever the client
        wrote. A hop that is not an address ends the walk at the last proxy. The host is the last
        X-Forwarded-Host entry (the nearest proxy's), if it looks like a host."""
        if not self.trusts(peer):
            return peer, host
        client = peer
        for hop in reversed(_joined(incoming, "x-forwarded-for").split(",")):
            hop = hop.strip()
            if _ip(hop) is None:
                break
            client = hop
            if not self.trusts(hop):
                break
        forwarded_host = _joined(incoming, "x-forwarded-host").split(",")[-1].strip()
        if _FORWARDED_HOST.fullmatch(forwarded_host):
            host = forwarded_host
        return client, host


def _joined(headers: list[tuple[str, str]], name: str) -> str:
    """All values of header ``name`` (lower case) as one comma-separated list, in the order sent."""
    return ",".join(v for k, v in headers if k.lower() == name)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def request_headers(incoming: list[tuple[str, str]], *, prefix: str, client_ip: str, scheme: str,
                    host: str, content_length: str | None) -> list[tuple[str, str]]:
    """Headers to send to the plugin: no hop-by-hop, no spoofed identity, no host credentials.

    ``prefix`` is where the plugin is mounted: ``/plugins/<name>`` (path mode; sent as X-Forwarded-Prefix,
    which the plugin runtime makes SCRIPT_NAME), or "" at the root of its own origin (no X-Forwarded-Prefix:
    SCRIPT_NAME is empty). ``host`` (the public Host, e.g. ``notes.localhost:8000``) goes as Host and
    X-Forwarded-Host, so the plugin builds its own public URLs."""
    named_by_connection = {
        token.strip().lower() for k, v in incoming if k.lower() == "connection" for token in v.split(",")
    }
    out: list[tuple[str, str]] = []
    for k, v in incoming:
        lk = k.lower()
        if _hop_by_hop(lk) or lk in HOST_SET or lk in named_by_connection:
            continue
        if lk == "authorization" and HOST_TOKEN_PREFIX in v:
            continue
        if lk == "cookie":
            v = _strip_cookie(_strip_cookie(v, HOST_COOKIE), USER_COOKIE)
            if not v:
                continue
        out.append((k, v))
    out += [
        ("Host", host),
        ("X-Forwarded-For", client_ip),
        ("X-Forwarded-Proto", scheme),
        ("X-Forwarded-Host", host),
    ]
    if prefix:
        out.append(("X-Forwarded-Prefix", prefix))
    if content_length is not None:
        out.append(("Content-Length", content_length))
    return out


def response_headers(upstream: ResponseHead, prefix: str, public: str = "") -> list[tuple[str, str]]:
    """Headers to send the client from a plugin's response.

    Taken as the plugin sent the bytes (latin-1, as WSGI servers write them back), not as httpx decodes them
    (UTF-8 when it can, which the web tier's gunicorn then could not encode: a 500). h11 already refuses CR,
    LF, NUL and non-token names (the plugin gets a 502); what it lets through and the web tier's gunicorn
    would refuse with a 500 (other control characters) is dropped here. A Content-Length beside a
    Transfer-Encoding goes (RFC 9112 6.3: the body was framed by the chunks, which are gone by now).
    ``prefix`` "" is a plugin on an origin of its own: see :func:`scope_cookie`; only SITE_WIDE headers go.
    In path mode a ``Location`` outside the prefix is moved under it (:func:`prefixed_location`); ``public``
    is the origin the client used (``http://127.0.0.1:8000``), whose absolute URLs are moved the same way.
    """
    rules = _RULES[bool(prefix)]
    connection = upstream.get("connection", "") or ""
    named_by_connection = {t.strip().lower() for t in connection.split(",")} if connection else set()
    chunked = "transfer-encoding" in upstream
    out: list[tuple[str, str]] = []
    for raw_name, raw_value in upstream.raw:
        rule = rules.get(raw_name)
        if rule is None:
            rule = _name_rule(raw_name, bool(prefix))
        lk, verdict = rule
        if verdict == _DROP or lk in named_by_connection or (chunked and lk == "content-length"):
            continue
        v = raw_value.decode("latin-1")
        if verdict == _BAD_NAME or (not v.isprintable() and _CTL.search(v)):
            log.warning("dropped response header %r from the plugin at %s: invalid name or control character",
                        lk, prefix)
            continue
        if lk == "set-cookie":
            scoped = scope_cookie(v, prefix)
            if scoped is None:
                continue
            v = scoped
        elif lk == "location" and prefix:
            v = prefixed_location(v, prefix, public)
        out.append((lk, v))
    return out


_KEEP, _DROP, _BAD_NAME = 0, 1, 2
# Per mode (path prefix or own origin): a response header's name as sent -> (lower-case name, verdict). Worked
# out once per name instead of per response; a plugin inventing names only makes it start over.
_RULES: dict[bool, dict[bytes, tuple[str, int]]] = {True: {}, False: {}}
_RULES_MAX = 1024


def _name_rule(raw_name: bytes, path_mode: bool) -> tuple[str, int]:
    lk = raw_name.decode("latin-1").lower()
    widening = ORIGIN_WIDE if path_mode else SITE_WIDE
    if _hop_by_hop(lk) or lk in widening or _front_proxy_instruction(lk):
        rule = (lk, _DROP)
    else:
        rule = (lk, _KEEP if _TOKEN.fullmatch(lk) else _BAD_NAME)
    rules = _RULES[path_mode]
    if len(rules) >= _RULES_MAX:
        rules.clear()
    rules[raw_name] = rule
    return rule


def prefixed_location(location: str, prefix: str, public: str = "") -> str:
    """A plugin's redirect target as the client must follow it in path mode.

    A plugin told its prefix (SCRIPT_NAME) that builds its URLs with ``url_for`` already redirects under it; an
    app unaware of any prefix (``redirect("/login")``, a hand-written ``Location: /``) would send the browser
    to the host's root. Like nginx's ``proxy_redirect`` and Apache's ``ProxyPassReverse``, such a target is
    moved under the prefix: a path starting with "/" (not "//", a network-path reference to another host),
    or an absolute URL on the origin the client used. Anything else (another site, a relative path, a target
    under the prefix already) is left alone."""
    target = location.strip()
    rest: str | None = None
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        rest, base = target, ""
    elif public and target.lower().startswith(public.lower()) and target[len(public):len(public) + 1] in ("/", "?",
                                                                                                       "#", ""):
        rest, base = target[len(public):] or "/", target[:len(public)]
    if rest is None or rest == prefix or rest.startswith((prefix + "/", prefix + "?", prefix + "#")):
        return location
    if not rest.startswith("/"):
        rest = "/" + rest
    return base + prefix + rest


def _hop_by_hop(name: str) -> bool:
    # "Proxy" too: as HTTP_PROXY in a CGI-style environment it would pick the plugin's outbound proxy (httpoxy).
    return name in HOP_BY_HOP or name == "proxy" or name.startswith("proxy-")


def _front_proxy_instruction(name: str) -> bool:
    return name not in FRONT_PROXY_ALLOWED and (name in FRONT_PROXY or name.startswith(FRONT_PROXY_PREFIXES))


def scope_cookie(header: str, prefix: str) -> str | None:
    """Confine a plugin's ``Set-Cookie`` to its own prefix, or None when it must be dropped.

    Parsed the way browsers parse it (RFC 6265bis 5.6), so no spelling slips past: split on ';', the first
    piece (name=value) is kept as sent; each attribute is split on its first '=', both sides stripped and the
    name lower-cased, so ``Domain =x``, ``domain= x`` and ``  DOMAIN=x`` are all the Domain attribute.
    Every Domain is dropped (the cookie stays host-only). Every Path is dropped and exactly one is set: the
    plugin's (the last one, as browsers take the last) if it is under ``prefix``, else ``prefix`` + it.
    Other attributes are kept verbatim.

    Dropped outright: a cookie with a control character (browsers ignore it, and how a front proxy would
    read it is anyone's guess), the host's own session cookie (a plugin must not plant or shadow it), and a
    ``__Host-`` cookie, which browsers accept only with ``Path=/`` and so can never be honoured under a
    path prefix. A ``__Secure-`` cookie is kept as is: that prefix demands only the Secure attribute and an
    https page, which the browser checks itself (over plain http it discards the cookie).

    ``prefix`` "": the plugin has an origin of its own. Every Domain is dropped all the same (a cookie for
    the parent domain would reach every sibling plugin, and the host); its Path and everything else are
    kept as sent, ``__Host-`` cookies included (host-only with ``Path=/`` is exactly what they demand).
    """
    if _CTL.search(header):
        log.warning("dropped a Set-Cookie with a control character from the plugin at %s", prefix)
        return None
    pair, *attributes = header.split(";")
    name = pair.split("=", 1)[0].strip() if "=" in pair else ""
    if _cookie_identity(name) in (HOST_COOKIE, USER_COOKIE):
        log.warning("dropped a Set-Cookie for the host's own cookie %r from the plugin at %s", name, prefix)
        return None
    if not prefix:
        own = [av.strip() for av in attributes if av.strip() and av.partition("=")[0].strip().lower() != "domain"]
        return "; ".join([pair.rstrip(), *own])
    if name.lower().startswith("__host-"):
        log.warning("dropped __Host- cookie %r from the plugin at %s: it requires Path=/, which a plugin under "
                    "a path prefix cannot have", name, prefix)
        return None
    path: str | None = None
    kept: list[str] = []
    for av in attributes:
        attr, _, value = av.partition("=")
        attr = attr.strip().lower()
        if attr == "path":
            path = value.strip()
        elif attr != "domain" and av.strip():
            kept.append(av.strip())
    return "; ".join([pair.rstrip(), *kept, f"Path={_scoped_path(path, prefix)}"])


def _scoped_path(path: str | None, prefix: str) -> str:
    """The Path a plugin's cookie gets: its own if under ``prefix``, else under it. A Path that browsers
    would ignore (empty, relative or over 1024 octets) would let them fall back to the request's directory,
    which for ``/plugins/<name>`` itself is ``/plugins``, shared by every plugin: such a Path becomes the
    plugin's root."""
    if not path or not path.startswith("/"):
        path = "/"
    if not (path == prefix or path.startswith(prefix + "/")):
        path = prefix + path
    return path if len(path) <= MAX_COOKIE_ATTR else prefix + "/"  # latin-1: one character per octet


def _cookie_identity(name: str) -> str:
    """A cookie name without the ``__Host-``/``__Secure-`` prefix, case-folded: what a shadowing cookie matches."""
    lower = name.lower()
    for p in ("__host-", "__secure-"):
        lower = lower.removeprefix(p)
    return lower


def _strip_cookie(header: str, name: str) -> str:
    parts = [p.strip() for p in header.split(";")]
    return "; ".join(p for p in parts if p and p.split("=", 1)[0].strip() != name)

"""One browser origin per plugin: which plugin a request's Host names, and each plugin's public URL.

Origin mode (``HOST_PLUGIN_DOMAIN``): ``<name>.<domain>[:port]`` is plugin ``<name>`` at the root of an origin
of its own, so its pages cannot read another plugin's pages or cookies, and absolute links (``href="/Home"``)
work unchanged. Every other Host is the main host name, where the host's own pages and path mode
(``/plugins/<name>/``, one origin shared by all plugins and the host) live. Pure functions; no Flask, no sockets.
"""

from __future__ import annotations

import ipaddress
import re

# A DNS name (labels of letters, digits and inner hyphens), as an operator writes it, without a trailing dot.
DOMAIN = re.compile(r"(?=.{1,200}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
# Plugin names as the manifest allows them (manifests.Manifest.name): a DNS label, so it can be a subdomain.
LABEL = re.compile(r"[a-z][a-z0-9-]{0,31}")
LOCAL = "localhost"  # *.localhost is loopback in browsers and curl with no DNS set-up (RFC 6761)
SHARED_ORIGIN_WARNING = ("Plugins reached by path (/plugins/<name>/) share one browser origin with each other and "
                         "with this host: there, any plugin's JavaScript can read every other plugin's pages and "
                         "act with the user's cookies.")


def default_domain(bind: str) -> str:
    """The plugin domain when the operator set none: ``localhost`` for a loopback bind (the quick start gets
    one origin per plugin with no DNS set-up), else none (origin mode needs a wildcard DNS name and, in
    production, a wildcard certificate: the operator's to choose)."""
    host = bind.rpartition(":")[0].strip("[]")
    if host == LOCAL:
        return LOCAL
    try:
        return LOCAL if ipaddress.ip_address(host).is_loopback else ""
    except ValueError:
        return ""


def split_host(host: str) -> tuple[str, str]:
    """(name, ":port" or "") of a Host value, the name lower-cased without a trailing dot."""
    if host.startswith("["):  # an IPv6 literal never names a plugin
        end = host.find("]")
        return host[: end + 1].lower(), host[end + 1:]
    name, sep, port = host.partition(":")
    return name.lower().removesuffix("."), sep + port


def plugin_label(host: str, domain: str) -> str | None:
    """The plugin a request to ``host`` is for, or None when ``host`` is the main host name.

    ``<label>.<domain>`` names a plugin whatever ``<label>`` is: a label that is no plugin's name (or has a
    dot, or is not a valid name) is returned as is, so the caller answers 404 instead of falling back to the
    host's own pages on what looks like a plugin's origin."""
    if not domain:
        return None
    name, _ = split_host(host)
    suffix = "." + domain
    if not name.endswith(suffix) or name == suffix:
        return None
    return name[: -len(suffix)]


def valid_label(label: str) -> bool:
    return LABEL.fullmatch(label) is not None


def plugin_url(name: str, domain: str, scheme: str, main_host: str) -> str:
    """The public URL of plugin ``name``'s origin, seen from a request to ``main_host`` (its port is kept:
    the plugin origins are served by the same listener)."""
    _, port = split_host(main_host)
    return f"{scheme}://{name}.{domain}{port}/"


def sibling(origin: str | None, name: str, domain: str) -> str | None:
    """The other plugin whose origin an ``Origin`` header names, when a request to plugin ``name`` comes from
    a page of a sibling ``<other>.<domain>``; None for its own origin, the main host name, another site,
    ``null`` or no header.

    Plugin origins are distinct origins but one *site* (same registrable domain): the browser sends a
    plugin's SameSite=Lax and even Strict cookies along with a form POST or a WebSocket handshake that a
    sibling plugin's page starts, which no CORS rule stops. The proxy refuses those (see host.app)."""
    if not origin or not domain or "://" not in origin:
        return None
    label = plugin_label(origin.split("://", 1)[1].split("/", 1)[0], domain)
    return label if label is not None and label != name else None


def public_urls(name: str, bind: str, domain: str, path_mode: bool) -> list[str]:
    """Where plugin ``name`` is reached on a host listening on ``bind`` (its own origin first)."""
    main = bind.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]")  # noqa: S104 - a wildcard: say loopback
    urls = [plugin_url(name, domain, "http", main)] if domain else []
    return urls + ([f"http://{main}/plugins/{name}/"] if path_mode else [])

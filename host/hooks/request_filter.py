"""The ``request.before`` filter point, as the web tier runs it on each proxied request (host.app calls
:meth:`RequestFilters.before` in one place). With no filter published, a request costs one ``stat`` of
run/hooks.json and an empty tuple: no registry, no socket.

A filter sees the request's method, path, query, headers and client address, never the body; it may reject
(the client gets its status and reason as problem details) or add headers, only ``X-Filter-*`` and the names in
HOST_HOOK_FILTER_HEADERS (any other is dropped with a warning). Whenever a filter runs for a request, client
copies of those headers are removed first, so the plugin behind can trust them. A plugin's own filters never
run on requests to itself. Must not import Flask.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from host import control
from host.errors import HostError
from host.hooks import reserved
from host.hooks.filters import Breaker, Caller, Verdict, call, run_chain
from host.hooks.table import FilterRef, FilterTable
from host.layout import Layout

log = logging.getLogger(__name__)
POINT = "request.before"
FILTER_HEADER_PREFIX = "x-filter-"
_VALUE = re.compile(r"^[\x20-\x7e]{0,1024}$")


def _environ_key(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


class RequestFilters:
    def __init__(self, table_path: Path, extra_headers: str = "", *, threshold: int = 5, cooldown: float = 30.0,
                 opened: Callable[[FilterRef, str], None] | None = None, caller: Caller = call) -> None:
        self.table = FilterTable(table_path)
        self.allowed = frozenset(h.strip().lower() for h in extra_headers.split(",") if h.strip())
        self.breaker = Breaker(threshold, cooldown, opened)
        self.caller = caller

    def may_set(self, name: str) -> bool:
        low = name.lower()
        return low.startswith(FILTER_HEADER_PREFIX) or low in self.allowed

    def gate(self, environ: dict[str, Any], plugin: str, subpath: str) -> tuple[int, str, str] | None:
        """Everything the hooks check on a proxied request: (status, title, detail) to refuse it with, or None
        to forward it (maybe with headers a filter added)."""
        if reserved(subpath) or reserved(str(environ.get("RAW_URI") or environ.get("PATH_INFO") or "")
                                         .split("?", 1)[0]):
            return 404, "Not found", "this path is reserved for the host's hook calls"
        verdict = self.before(environ, plugin)
        if verdict is None:
            return None
        return verdict.status, "Refused by a filter", f"{verdict.by}: {verdict.reason}"

    def before(self, environ: dict[str, Any], plugin: str) -> Verdict | None:
        """Run the chain for a request to ``plugin`` (a WSGI environ); the rejection, or None to go on (with
        the filters' headers added to ``environ``)."""
        refs = self.table.at(POINT)
        if not refs:
            return None
        refs = tuple(r for r in refs if r.plugin != plugin)
        if not refs:
            return None
        for key in [k for k in environ if k.startswith("HTTP_X_FILTER_")
                    or (k.startswith("HTTP_") and k[5:].replace("_", "-").lower() in self.allowed)]:
            del environ[key]
        headers = {k[5:].replace("_", "-").title(): str(v) for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = str(environ["CONTENT_TYPE"])
        data = {"plugin": plugin, "method": environ.get("REQUEST_METHOD", ""),
                "path": str(environ.get("RAW_URI") or environ.get("PATH_INFO", "")).split("?", 1)[0],
                "query": environ.get("QUERY_STRING", ""), "client": environ.get("REMOTE_ADDR", ""),
                "headers": headers}
        verdict = run_chain(refs, POINT, data, self.breaker, self.caller)
        if not verdict.allowed:
            return verdict
        for name, value in verdict.headers.items():
            if self.may_set(name) and _VALUE.match(value) and re.fullmatch(r"[A-Za-z0-9-]{1,64}", name):
                environ[_environ_key(name)] = value
            else:
                log.warning("request.before: dropped header %r a filter set: not on the allow-list "
                            "(X-Filter-*, HOST_HOOK_FILTER_HEADERS) or not printable", name[:64])
        return None


def filter_tripped(layout: Layout) -> Callable[[FilterRef, str], None]:
    """Tell the supervisor that a filter's circuit opened (it audits and counts it): the web tier has no
    registry of its own. Best effort: the web tier has logged it already."""

    def tell(ref: FilterRef, why: str) -> None:
        try:
            control.call(layout.web_socket, "filter_tripped", timeout=1.0, plugin=ref.plugin, filter=ref.name,
                         reason=why[:200])
        except HostError:
            log.debug("cannot report the open circuit of %s", ref.key, exc_info=True)
    return tell

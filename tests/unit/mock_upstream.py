"""A stand-in for host.upstream.SocketPool in unit tests: hands the proxied request to an httpx-style handler
(``httpx.Request -> httpx.Response``), whose response has what the proxy reads of an upstream answer."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from host.upstream import UpstreamRequest


class MockUpstream:
    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handler = handler

    def handle_request(self, req: UpstreamRequest) -> httpx.Response:
        body = b"".join(req.body) if req.body is not None else None
        return self.handler(httpx.Request(req.method, "http://plugin" + req.target, headers=req.headers,
                                          content=body))

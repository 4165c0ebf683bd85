"""The proxy passes each piece of a plugin's response on before it asks the plugin for the next one (no
socket: the plugin is an httpx-style handler whose body is a generator, the client Flask's test client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx

from host import routes
from host.app import create_app
from host.registry import PluginRecord
from host.settings import HostSettings
from tests.unit.mock_upstream import MockUpstream


def test_each_piece_reaches_the_client_before_the_plugin_is_asked_for_the_next(tmp_path: Path) -> None:
    received: list[bytes] = []
    asked: list[int] = []

    def events() -> Iterator[bytes]:
        for n in range(3):
            asked.append(n)
            # An SSE plugin sends event n+1 only once the client has seen event n: the proxy must not ask for
            # more before it passed on what it has (iter_raw(64 KiB) did, to fill a chunk).
            assert received == [f"data: {i}\n\n".encode() for i in range(n)], f"asked for event {n} too early"
            yield f"data: {n}\n\n".encode()

    def plugin(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, stream=_Stream(events()))

    (tmp_path / "run").mkdir()
    record = PluginRecord("sse", "1.0", "inst", {"name": "sse"}, True, 1, 0.0, 0.0)
    routes.publish(tmp_path / "run" / "routes.json", routes.snapshot([record]), None)
    app = create_app(HostSettings(home=tmp_path))
    app.extensions["plugin_host"]["pool"].transport = lambda sock: MockUpstream(plugin)
    resp = app.test_client().get("/plugins/sse/events", buffered=False)
    try:
        for piece in resp.response:
            received.append(piece)
    finally:
        resp.close()
    assert received == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"] and asked == [0, 1, 2]


class _Stream(httpx.SyncByteStream):
    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        return self.pieces

"""WebSockets through the proxy, end to end: a flask-sock plugin behind a real host, a raw RFC 6455 client."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from host.ws_relay import Gate
from tests.integration import ws_client
from tests.integration.harness import FIXTURES, ServedHost, served_plugins
from tests.integration.ws_client import BINARY, TEXT

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

PREFIX = "/plugins/websocket"
LIMIT = 4  # the fixture's max_websockets
IDLE = 3.0  # its websocket_idle_seconds


@pytest.fixture(scope="module")
def served() -> Iterator[ServedHost]:
    # Two web workers (the cap must hold across them) of two threads each: fewer threads than the cap, so a
    # WebSocket that held a thread would starve everything else.
    env = {"HOST_WEB_WORKERS": "2", "HOST_WEB_THREADS": "2", "HOST_STOP_GRACE": "1"}
    with served_plugins(FIXTURES / "websocket", FIXTURES / "echo", wait=("websocket", "echo"), env=env) as host:
        yield host


def open_ws(host: ServedHost, path: str, headers: dict[str, str] | None = None) -> ws_client.WebSocket:
    answer = ws_client.connect(("127.0.0.1", host.port), PREFIX + path, headers)
    assert answer.status == 101 and answer.ws is not None, (answer.status, answer.body)
    return answer.ws


def open_when_free(host: ServedHost, path: str) -> ws_client.WebSocket:
    """Open one once the sockets of earlier tests are let go (the relay releases a slot as the plugin closes)."""
    deadline = time.monotonic() + 5
    while True:
        answer = ws_client.connect(("127.0.0.1", host.port), PREFIX + path)
        if answer.status == 101 and answer.ws is not None:
            return answer.ws
        assert answer.status == 503 and time.monotonic() < deadline, (answer.status, answer.body)
        time.sleep(0.1)


def test_echo_round_trip_text_and_binary(served: ServedHost) -> None:
    ws = open_ws(served, "/echo")
    ws.send("héllo")
    assert ws.recv() == (TEXT, "héllo".encode())
    blob = os.urandom(300 * 1024)  # several relay chunks and TCP segments each way
    ws.send(blob)
    assert ws.recv() == (BINARY, blob)
    for i in range(50):
        ws.send(f"m{i}")
    assert [ws.recv_text() for _ in range(50)] == [f"m{i}" for i in range(50)]
    assert ws.close()


def test_what_the_plugin_sends_right_behind_its_101_arrives(served: ServedHost) -> None:
    ws = open_ws(served, "/hello")
    assert ws.recv_text().startswith("hello from ")
    ws.send("after")
    assert ws.recv_text() == "after"
    ws.close()


def test_close_handshake_goes_both_ways_then_the_connection_ends(served: ServedHost) -> None:
    ws = open_ws(served, "/bye")
    ws.send("now")
    op, payload = ws.recv()
    assert (op, payload) == (ws_client.CLOSE, struct.pack("!H", 1000) + b"bye now")  # the plugin's close frame
    ws.send(payload[:2], ws_client.CLOSE)  # the client's answer
    assert ws.wait_eof(10)  # and the host ended the TCP connection after the plugin did


def test_handshake_gets_header_hygiene_and_the_websocket_headers(served: ServedHost) -> None:
    ws = open_ws(served, "/handshake?q=1", headers={
        "Cookie": "plugin_host_session=admin-secret; theme=dark",
        "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Prefix": "/elsewhere", "Proxy-Authorization": "Basic eA==",
        "Sec-WebSocket-Protocol": "chat",
    })
    seen = json.loads(ws.recv_text())
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["cookie"] == "theme=dark"  # the host's own session cookie never reaches a plugin
    assert headers["x-forwarded-for"] == "127.0.0.1"  # the host says who the client is, not the client
    assert headers["x-forwarded-prefix"] == PREFIX and seen["script_root"] == PREFIX
    assert "proxy-authorization" not in headers
    assert headers["upgrade"] == "websocket" and headers["connection"].lower() == "upgrade"
    assert headers["sec-websocket-version"] == "13" and "sec-websocket-key" in headers
    assert headers["sec-websocket-protocol"] == "chat"
    assert seen["path"] == "/handshake?q=1"
    ws.send("bye")
    ws.wait_eof(10)


def test_echo_on_the_plugins_own_origin(served: ServedHost) -> None:
    """Origin mode (a loopback bind defaults to <name>.localhost): the plugin at the root of its origin."""
    origin = f"websocket.localhost:{served.port}"
    answer = ws_client.connect(("127.0.0.1", served.port), "/handshake", host=origin)
    assert answer.status == 101 and answer.ws is not None, (answer.status, answer.body)
    seen = json.loads(answer.ws.recv_text())
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["host"] == origin and seen["script_root"] == "" and "x-forwarded-prefix" not in headers
    answer.ws.send("bye")
    answer.ws.wait_eof(10)
    echo = ws_client.connect(("127.0.0.1", served.port), "/echo", host=origin).ws
    assert echo is not None
    echo.send("on my own origin")
    assert echo.recv_text() == "on my own origin"
    echo.close()


# In a page: open a WebSocket to `url`, echo a text and a binary message, close; or the error that stopped it.
ECHO_IN_BROWSER = """async (url) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const opened = await new Promise((ok) => { ws.onopen = () => ok(true); ws.onclose = () => ok(false); });
    if (!opened) return {error: "the WebSocket did not open"};
    const next = () => new Promise((ok) => { ws.onmessage = (e) => ok(e.data); });
    ws.send("héllo from a browser");
    const text = await next();
    ws.send(new Uint8Array([0, 1, 2, 255]));
    const binary = Array.from(new Uint8Array(await next()));
    const closed = new Promise((ok) => { ws.onclose = (e) => ok(e.code); });
    ws.close(1000);
    return {text, binary, code: await closed};
}"""


@pytest.mark.parametrize("mode", ["origin", "path"])
def test_echo_in_the_browser(served: ServedHost, browser_context: BrowserContext, mode: str) -> None:
    """Chromium, on a page of the plugin, opens a WebSocket back to it through the host."""
    page = browser_context.new_page()
    if mode == "origin":
        page.goto(served.origin("websocket") + "/pid")
        url = f"ws://websocket.localhost:{served.port}/echo"
    else:
        page.goto(served.url + PREFIX + "/pid")
        url = f"ws://127.0.0.1:{served.port}{PREFIX}/echo"
    deadline = time.monotonic() + 10
    got = page.evaluate(ECHO_IN_BROWSER, url)
    while "error" in got and time.monotonic() < deadline:  # the cap of 4: earlier tests' sockets let go late
        time.sleep(0.2)
        got = page.evaluate(ECHO_IN_BROWSER, url)
    # The close code is left out: whether the plugin's server answers the close frame before it drops the
    # connection (1000) or not (1006) is flask-sock's race, not the host's.
    assert (got["text"], got["binary"]) == ("héllo from a browser", [0, 1, 2, 255])


def test_cant_open_a_websocket_to_another_plugin_from_its_page(served: ServedHost,
                                                               browser_context: BrowserContext) -> None:
    """Plugin origins are one site: a handshake from echo's page would carry websocket's cookies, and no CORS
    rule applies to WebSockets. The host refuses a handshake whose Origin is a sibling plugin's."""
    page = browser_context.new_page()
    page.goto(served.origin("echo") + "/")
    assert page.evaluate(ECHO_IN_BROWSER, f"ws://websocket.localhost:{served.port}/echo") == {
        "error": "the WebSocket did not open"}
    answer = ws_client.connect(("127.0.0.1", served.port), "/echo", {"Origin": served.origin("echo")},
                               host=f"websocket.localhost:{served.port}")
    assert answer.status == 403 and answer.ws is None
    assert json.loads(answer.body)["detail"] == "a page of plugin 'echo' may not open a WebSocket to plugin 'websocket'"


def test_a_refused_upgrade_comes_back_as_the_plugins_ordinary_answer(served: ServedHost) -> None:
    answer = ws_client.connect(("127.0.0.1", served.port), PREFIX + "/denied")
    assert answer.status == 403
    assert json.loads(answer.body) == {"error": "no WebSockets here"}


def test_cant_open_more_websockets_than_the_manifest_allows(served: ServedHost) -> None:
    held = [open_when_free(served, "/echo") for _ in range(LIMIT)]
    try:
        over = ws_client.connect(("127.0.0.1", served.port), PREFIX + "/echo")
        assert over.status == 503
        assert over.headers["content-type"] == "application/problem+json"
        assert json.loads(over.body)["title"] == "Too many WebSockets"
        assert over.headers["retry-after"] == "5"
        # Every held socket still works, and closing one frees a slot.
        for i, ws in enumerate(held):
            ws.send(f"still {i}")
            assert ws.recv_text() == f"still {i}"
        held.pop().close()
        held.append(open_when_free(served, "/echo"))
    finally:
        for ws in held:
            ws.close()


def test_open_websockets_hold_no_web_tier_thread(served: ServedHost) -> None:
    """Two threads per web worker, four WebSockets open and idle: ordinary requests are still served."""
    held = [open_when_free(served, "/echo") for _ in range(LIMIT)]
    try:
        for _ in range(10):
            r = httpx.get(served.url + PREFIX + "/pid", timeout=5)
            assert r.status_code == 200 and r.json()["pid"] > 0
        assert served.get("/healthz").status_code == 200
    finally:
        for ws in held:
            ws.close()


def test_idle_websocket_is_closed_and_a_talking_one_is_not(served: ServedHost) -> None:
    talking, idle = open_when_free(served, "/echo"), open_when_free(served, "/echo")
    start = time.monotonic()
    for i in range(int(IDLE * 2 / 0.5)):  # twice the idle limit, a message every half second
        talking.send(f"t{i}")
        assert talking.recv_text() == f"t{i}"
        time.sleep(0.5)
    assert idle.wait_eof(timeout=5)  # ended by the host, some time after IDLE seconds of silence
    assert time.monotonic() - start >= IDLE
    talking.send("still here")
    assert talking.recv_text() == "still here"
    talking.close()


def talk_until_closed(ws: ws_client.WebSocket, seconds: float) -> bool:
    """Keep talking (so the idle limit is not what closes it); whether the connection ended meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ws.send("ping")
            ws.recv(timeout=0.5)
        except TimeoutError:
            continue
        except (ws_client.Closed, ConnectionError):
            return True
        time.sleep(0.2)
    return False


def test_plugin_restart_closes_the_client_connection(served: ServedHost) -> None:
    ws = open_when_free(served, "/hello")
    first = ws.recv_text()
    restart = threading.Thread(target=served.cli, args=("restart", "websocket"), daemon=True)
    restart.start()
    ended = talk_until_closed(ws, 30)
    restart.join(60)
    assert ended, "the client connection outlived the plugin instance behind it"
    second = open_when_free(served, "/hello")
    assert second.recv_text() != first  # the new instance answers
    second.close()


def test_disabling_the_plugin_closes_the_client_connection(served: ServedHost) -> None:
    ws = open_when_free(served, "/echo")
    try:
        assert served.cli("disable", "websocket").returncode == 0
        assert talk_until_closed(ws, 30)
        assert ws_client.connect(("127.0.0.1", served.port), PREFIX + "/echo").status == 404
    finally:
        served.cli("enable", "websocket")
        served.wait_state("websocket", "running")


def test_scale_to_zero_leaves_a_plugin_with_an_open_websocket_running(served: ServedHost) -> None:
    """Messages on an open WebSocket are no requests the supervisor sees; the relay reports the plugin in use."""
    # Above the relay's report interval (1 s), as any real idle timeout is.
    assert served.cli("config", "websocket", "--idle-timeout", "2.5").returncode == 0
    try:
        ws = open_when_free(served, "/echo")
        # Past a probe interval (when the supervisor reads the new idle timeout) and the idle timeout after it.
        assert not talk_until_closed(ws, 9), "the plugin was stopped under an open WebSocket"
        assert served.plugin("websocket")["state"] == "running"
        ws.close()
        served.wait_state("websocket", "stopped", timeout=15)  # with none open, it does scale to zero
        again = open_when_free(served, "/echo")  # and a handshake wakes it
        again.send("awake")
        assert again.recv_text() == "awake"
        again.close()
    finally:
        served.cli("config", "websocket", "--reset")


def test_cant_open_more_slots_than_the_cap_from_another_process() -> None:
    """The cap is one per plugin across web worker processes: slots a forked process holds are taken here,
    and come back when that process dies."""
    gate = Gate()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other worker: take two slots, say so, hold them until told to go
        try:
            tickets = [gate.acquire("p", 3), gate.acquire("p", 3)]
            os.write(w, b"1" if all(tickets) else b"0")
            time.sleep(30)
        finally:
            os._exit(0)
    try:
        assert os.read(r, 1) == b"1"
        mine = gate.acquire("p", 3)
        assert mine is not None
        assert gate.acquire("p", 3) is None  # 2 held there + 1 here = 3
        assert gate.acquire("q", 3) is not None  # another plugin has its own slots
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    assert [gate.acquire("p", 3) is not None for _ in range(3)] == [True, True, False]

"""WebSockets through the proxy: the Upgrade handshake forwarded to the plugin's socket, the client's connection
taken over from gunicorn after the plugin's 101, and both handed to the relay (host.ws_relay).

Works in every routing mode: the app calls :meth:`WebSockets.open` from its proxy path with the target and
headers it built for an ordinary request. Header hygiene is host.headers' (hop-by-hop, identity, cookies),
less the Upgrade/Connection pair and the Sec-WebSocket-* headers, which the handshake needs.

How a connection leaves gunicorn's gthread worker: the client socket is ``environ["gunicorn.socket"]``. We
keep a duplicate of its descriptor and point gunicorn's own descriptor at a dead socket pair, then end the
response by raising StopIteration (gunicorn's signal that the response is over and nothing more is written,
the one flask-sock uses). gunicorn then closes what it believes is the connection: the dead pair. The worker
thread is free at once; the relay thread carries the bytes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import h11
from flask import Flask, Response, current_app, request
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException
from werkzeug.routing.exceptions import WebsocketMismatch
from werkzeug.wsgi import ClosingIterator

from host.directory import Directory
from host.headers import response_headers
from host.proxy import CHUNK, Limits, ProxyError, Unavailable, timed_out
from host.upstream import RawHeaders
from host.ws_relay import Gate, Link, Relay, Ticket

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 5.0


def requested(environ: dict[str, Any]) -> bool:
    """Whether this request is a WebSocket handshake (RFC 6455 4.1: GET, Connection: upgrade, Upgrade: websocket)."""
    connection = {t.strip().lower() for t in environ.get("HTTP_CONNECTION", "").split(",")}
    return (environ.get("REQUEST_METHOD") == "GET" and "upgrade" in connection
            and environ.get("HTTP_UPGRADE", "").strip().lower() == "websocket")


def handshake_headers(sanitized: list[tuple[str, str]], incoming: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers of the handshake the plugin gets: ``sanitized`` (host.headers.request_headers of the client's
    ``incoming``), the client's Sec-WebSocket-* headers (even where its Connection header named them), and
    the Upgrade/Connection pair, which request_headers strips as hop-by-hop."""
    have = {k.lower() for k, _ in sanitized}
    ws = [(k, v) for k, v in incoming if k.lower().startswith("sec-websocket-") and k.lower() not in have]
    return [*sanitized, *ws, ("Connection", "Upgrade"), ("Upgrade", "websocket")]


class _HandedOver(Response):
    """The response of a request whose connection the relay now owns: gunicorn must write nothing."""

    handed_over = True  # host.observe: the exchange ends when the relay closes the link

    def __call__(self, environ: Any, start_response: Any) -> NoReturn:
        raise StopIteration


class WebSockets:
    """Accepts WebSocket handshakes for the app's proxy. ``gate``: the cross-worker cap (host.webtier creates it
    before gunicorn forks; without one, this process has its own). ``keep_active``: the app's "plugin in use"."""

    def __init__(self, app: Flask, directory: Directory, keep_active: Callable[[str], None],
                 gate: Gate | None = None) -> None:
        self.directory = directory
        self.keep_active = keep_active
        self._gate = gate
        self.relay = Relay(keep_active)
        app.before_request(_route_as_http)

    def open(self, name: str, sock: Path, target: str, headers: list[tuple[str, str]], prefix: str, *,
             done: Callable[[], None], wait: Callable[[str], None],
             closed: Callable[[int, int], None] | None = None) -> Response:
        """Forward this request's handshake to plugin ``name`` at ``sock`` (``target``: path and query as the
        plugin sees them; ``headers``: request_headers of this request; ``prefix``: where it is mounted). A 101
        hands the connection to the relay; any other answer goes back as an ordinary response. ``done`` gives
        back the request's proxy slot: called once the handshake is over (101) or the response is. ``wait``:
        the app's wait for a plugin that is (re)starting. ``closed(received, sent)``: called by the relay
        when a WebSocket it took over closes, with the bytes it relayed from and to the client. Raises
        ProxyError before any answer."""
        if request.content_length or request.headers.get("Transfer-Encoding"):
            raise ProxyError(400, "Bad WebSocket handshake", "a WebSocket handshake carries no body")
        entry = self.directory.get(name)
        limits = entry.limits if entry else Limits(timeout=30.0, max_body=0)
        if limits.max_websockets == 0:
            raise ProxyError(403, "WebSockets not allowed", f"plugin {name!r} accepts no WebSockets (its manifest "
                             "sets permissions.requests.max_websockets = 0)")
        client = request.environ.get("gunicorn.socket")
        if type(client) is not socket.socket:  # another server, or TLS inside gunicorn (an SSLSocket)
            raise ProxyError(501, "WebSockets unavailable", "this server cannot hand a connection to the relay")
        if not self.relay.has_room():
            raise ProxyError(503, "Server busy", "this web worker relays as many WebSockets as it has file "
                             "descriptors for", 5)
        if self._gate is None:
            self._gate = Gate()
        ticket = self._gate.acquire(name, limits.max_websockets)
        if ticket is None:
            raise ProxyError(503, "Too many WebSockets", f"plugin {name!r} has {limits.max_websockets} WebSockets "
                             "open already (its manifest's permissions.requests.max_websockets)", 5)
        head = handshake_headers(headers, list(request.headers.items()))
        try:
            upstream, conn, answer = _exchange(name, sock, target, head, limits.timeout, wait)
        except BaseException:
            ticket.release()
            raise
        try:
            self.keep_active(name)
            if isinstance(answer, h11.InformationalResponse):
                return self._hand_over(name, client, upstream, conn, answer, prefix, limits, ticket, done,
                                       closed)
            ticket.release()
            return _ordinary(name, upstream, conn, answer, prefix, limits.timeout, done)
        except BaseException:
            ticket.release()
            upstream.close()
            raise

    def _hand_over(self, name: str, client: socket.socket, upstream: socket.socket, conn: h11.Connection,
                   answer: h11.InformationalResponse, prefix: str, limits: Limits, ticket: Ticket,
                   done: Callable[[], None], closed: Callable[[int, int], None] | None) -> Response:
        lines = ["HTTP/1.1 101 Switching Protocols"]
        lines += [f"{k}: {v}" for k, v in response_headers(_sent_headers(answer), prefix)]
        lines += ["Connection: Upgrade", "Upgrade: websocket", "", ""]
        trailing, _ = conn.trailing_data  # what the plugin sent right behind its 101 (a greeting, say)
        mine = client.dup()
        # gunicorn keeps its socket object and will close it: point its descriptor at a dead socket pair.
        dead, peer = socket.socketpair()
        with dead, peer:
            os.dup2(dead.fileno(), client.fileno(), inheritable=False)
        self.relay.add(Link(name, mine, upstream, idle=limits.websocket_idle, ticket=ticket,
                            to_client="\r\n".join(lines).encode("latin-1") + trailing, closed=closed))
        done()
        return _HandedOver()


def _route_as_http() -> None:
    """werkzeug routes a handshake only to rules marked ``websocket=True`` and answers 400 (WebsocketMismatch)
    on the host's ordinary ones: route it like any request, so the proxy sees it (registered before_request)."""
    if not isinstance(request.routing_exception, WebsocketMismatch):
        return
    adapter = current_app.create_url_adapter(request)
    assert adapter is not None
    try:
        rule, args = adapter.match(websocket=False, return_rule=True)
    except HTTPException as exc:
        request.routing_exception = exc
        return
    request.url_rule, request.view_args, request.routing_exception = rule, dict(args), None


def _sent_headers(event: h11.InformationalResponse | h11.Response) -> RawHeaders:
    """The answer's headers as sent (names not lower-cased), in the form host.headers filters."""
    return RawHeaders(event.headers.raw_items())


class _NoAnswer(Exception):
    """The plugin's socket closed before a byte of answer: the instance died with us in its listen backlog."""


def _exchange(name: str, path: Path, target: str, headers: list[tuple[str, str]], timeout: float,
              wait: Callable[[str], None]) -> tuple[socket.socket, h11.Connection, Any]:
    """Send the handshake to the plugin and read its answer's head: (socket, h11 state, 101 or Response).
    A plugin that is not accepting, or whose instance went away before answering (the handshake has no
    body and changes nothing, so it can be sent again), is waited for once, as ordinary requests are."""
    for attempt in (1, 2):
        try:
            sock = _connect(name, path)
        except Unavailable:
            if attempt == 2:
                raise
            wait(name)
            continue
        try:
            conn, answer = _read_answer(name, sock, target, headers, timeout)
            return sock, conn, answer
        except _NoAnswer as exc:
            sock.close()
            if attempt == 2:
                raise ProxyError(502, "Bad gateway", f"plugin {name!r} closed the connection") from exc
            wait(name)
        except BaseException:
            sock.close()
            raise
    raise AssertionError("unreachable")


def _connect(name: str, path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(str(path))  # the public socket is a symlink to the live instance's: followed here
    except OSError as exc:
        sock.close()
        raise Unavailable(f"plugin {name!r} is not accepting connections") from exc
    return sock


def _read_answer(name: str, sock: socket.socket, target: str, headers: list[tuple[str, str]],
                 timeout: float) -> tuple[h11.Connection, h11.InformationalResponse | h11.Response]:
    conn = h11.Connection(h11.CLIENT)
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    deadline = time.monotonic() + timeout
    got = False
    try:
        sock.sendall(conn.send(h11.Request(method="GET", target=target.encode("latin-1"), headers=raw))
                     + (conn.send(h11.EndOfMessage()) or b""))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(CHUNK)
                if not data and not got:
                    raise _NoAnswer
                got = True
                conn.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                continue  # 100 Continue, 103 Early Hints: the answer is still to come
            if isinstance(event, h11.InformationalResponse):
                if _sent_headers(event).get("upgrade").lower() != "websocket":
                    raise ProxyError(502, "Bad gateway", f"plugin {name!r} switched to a protocol other than "
                                     "WebSocket")
                return conn, event
            if isinstance(event, h11.Response):
                return conn, event
            raise ProxyError(502, "Bad gateway", f"plugin {name!r} closed the connection or answered garbage")
    except TimeoutError as exc:
        raise ProxyError(504, "Plugin timed out", timed_out(name, timeout)) from exc
    except ConnectionResetError as exc:
        if not got:
            raise _NoAnswer from exc
        raise ProxyError(502, "Bad gateway", f"plugin {name!r} closed the connection") from exc
    except (h11.RemoteProtocolError, h11.LocalProtocolError, OSError) as exc:
        raise ProxyError(502, "Bad gateway", f"plugin {name!r} closed the connection or answered garbage") from exc


def _ordinary(name: str, sock: socket.socket, conn: h11.Connection, answer: h11.Response, prefix: str,
              timeout: float, done: Callable[[], None]) -> Response:
    """The plugin refused the upgrade: its answer, streamed back like any response."""

    def body() -> Iterator[bytes]:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                sock.settimeout(timeout)
                try:
                    conn.receive_data(sock.recv(CHUNK))
                except (OSError, h11.RemoteProtocolError):
                    log.warning("plugin %s failed mid-response; aborting the client connection", name)
                    raise
                continue
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise ProxyError(502, "Bad gateway", f"plugin {name!r} answered garbage")

    resp = Response(ClosingIterator(body(), [sock.close, done]), status=answer.status_code, direct_passthrough=True)
    resp.headers = Headers(response_headers(_sent_headers(answer), prefix))
    return resp

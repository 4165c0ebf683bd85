"""The proxy's HTTP/1.1 client to plugin sockets: the standard library's ``http.client`` over Unix sockets, with
a keep-alive pool per socket, and nothing else (no cookie jar, no default headers, no redirects).

On the hot path httpx cost ~3x the CPU of ``http.client`` per request (URL parsing, request and response
models, h11 events; issue 12's profile), for features the proxy does not use. ``http.client`` still parses
what the (untrusted) plugin sends: status line, at most 100 header lines of at most 64 KiB, chunked or
length-delimited or close-delimited bodies. Requests carry exactly the caller's headers: no Host,
Accept-Encoding or User-Agent of our own.

Failures raise :class:`UpstreamError` subclasses, which host.proxy.upstream_errors maps to HTTP statuses.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

CHUNK = 64 * 1024
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
IDLE_PER_SOCKET = 32  # idle keep-alive connections kept per plugin socket (more are closed when given back)


class UpstreamError(Exception):
    """The exchange with the plugin failed."""


class ConnectFailed(UpstreamError):
    """Nothing accepts on the socket (starting, restarting, stopped): nothing was sent."""


class UpstreamTimeout(UpstreamError):
    """The plugin did not answer (or send the next piece) within the request's timeout."""


class BadUpstream(UpstreamError):
    """The plugin closed the connection early or answered something that is not HTTP/1.1."""


class RequestRefused(UpstreamError):
    """The request itself cannot be written (a header name or value, method or target that is not legal)."""


@dataclass
class UpstreamRequest:
    method: str
    target: str  # path and query, as the plugin must see them
    headers: list[tuple[bytes, bytes]]
    body: Iterator[bytes] | None
    timeout: float


def ascii_target(target: str) -> str:
    """The request target for the request line: WSGI gives the raw bytes as latin-1, so any byte over 0x7f
    (a client's raw UTF-8) is percent-encoded, as a browser would have done (httpx's URL did the same)."""
    if target.isascii():
        return target
    return "".join(c if ord(c) < 0x80 else f"%{ord(c):02X}" for c in target)


class _Connection(http.client.HTTPConnection):
    def __init__(self, path: str, connect_timeout: float) -> None:
        super().__init__("plugin", timeout=connect_timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        self.sock = sock

    def stale(self) -> bool:
        """An idle keep-alive connection the plugin has closed (or sent stray bytes on) reads as readable."""
        if self.sock is None:
            return True
        try:
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True


class UpstreamResponse:
    """What the proxy needs of an answer: status, headers as sent (latin-1), the body piece by piece."""

    def __init__(self, pool: SocketPool, conn: _Connection, resp: http.client.HTTPResponse) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._resp = resp
        self.status_code = resp.status
        # http.client decoded the header block as latin-1: back to the bytes the plugin sent
        self.headers = httpx.Headers([(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.msg.items()])
        self._done = False

    def iter_raw(self) -> Iterator[bytes]:
        """Each piece as the socket returned it (up to 64 KiB), never held back to fill a chunk."""
        while True:
            try:
                data = self._resp.read1(CHUNK)
            except TimeoutError as exc:
                raise UpstreamTimeout("the plugin stopped sending its answer") from exc
            except (http.client.HTTPException, OSError, ValueError) as exc:
                raise BadUpstream(f"{type(exc).__name__}: {exc}") from exc
            if not data:
                self._done = True
                return
            yield data

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and not self._resp.will_close and conn.sock is not None:
            self._resp.close()
            self._pool.give_back(conn)
        else:
            self._resp.close()
            conn.close()  # an answer not read to its end leaves the connection in an unknown state


class SocketPool:
    """Idle keep-alive connections to one socket path (one plugin instance)."""

    def __init__(self, path: str, connect_timeout: float = 5.0) -> None:
        self.path = path
        self.connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def _take(self) -> _Connection | None:
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            if not conn.stale():
                return conn
            conn.close()

    def give_back(self, conn: _Connection) -> None:
        with self._lock:
            if len(self._idle) < IDLE_PER_SOCKET:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def handle_request(self, req: UpstreamRequest) -> UpstreamResponse:
        reused = self._take()
        if reused is not None:
            try:
                return self._exchange(reused, req)
            except BadUpstream:
                # The plugin closed a kept-alive connection as we wrote on it (gunicorn's keep-alive timeout):
                # nothing reached the app, so a bodiless idempotent request goes again on a new connection.
                if req.body is not None or req.method not in IDEMPOTENT:
                    raise
        conn = _Connection(self.path, self.connect_timeout)
        conn.connect()
        return self._exchange(conn, req)

    def _exchange(self, conn: _Connection, req: UpstreamRequest) -> UpstreamResponse:
        try:
            assert conn.sock is not None
            conn.sock.settimeout(req.timeout)
            try:
                conn.putrequest(req.method, ascii_target(req.target), skip_host=True, skip_accept_encoding=True)
                for name, value in req.headers:
                    conn.putheader(name, value)
            except (ValueError, UnicodeError, http.client.InvalidURL) as exc:
                raise RequestRefused(str(exc)) from exc
            if req.body is not None and not any(n.lower() == b"content-length" for n, _ in req.headers):
                conn.putheader(b"Transfer-Encoding", b"chunked")
                conn.endheaders(req.body, encode_chunked=True)
            else:
                conn.endheaders(req.body)
            resp = conn.getresponse()
        except UpstreamError:
            conn.close()
            raise
        except TimeoutError as exc:
            conn.close()
            raise UpstreamTimeout("the plugin did not answer in time") from exc
        except (http.client.HTTPException, OSError) as exc:
            conn.close()
            raise BadUpstream(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            conn.close()  # the request body failed (too large, malformed): the exchange is half-written
            raise
        return UpstreamResponse(self, conn, resp)

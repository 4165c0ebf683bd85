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
import re
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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


_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FOLD = re.compile(r"\r?\n[ \t]+")


class _HeadReader:
    """The response's buffered reader, checking each line of a response head as http.client reads it, as
    strictly as h11 did: a field name must be a token with no space before its colon, and a line may hold no
    NUL and no bare CR (CR or LF inside a header could split it into one the plugin may not send). A bare LF
    ends a line, and folded lines are unfolded later (:func:`_items`). The head of an informational answer
    (1xx) is followed by another head; past the final one it only passes reads on."""

    def __init__(self, fp: Any) -> None:
        self._fp = fp
        self.head = True
        self._status_line = True
        self._informational = False

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self._fp.readline(limit)
        if self.head:
            self._check(line)
        return line

    def _check(self, line: bytes) -> None:
        content = line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith(b"\n") else line
        if b"\r" in content or b"\0" in content:
            raise BadUpstream("a CR or NUL inside a line of the response head")
        if self._status_line:
            self._status_line = False
            code = content.split(None, 2)[1:2]
            self._informational = bool(code) and code[0].startswith(b"1")
            return
        if not content:  # the blank line that ends a head
            if self._informational:
                self._status_line = True
            else:
                self.head = False
            return
        if content[:1] in (b" ", b"\t"):
            return  # an obs-fold continuation line
        name, colon, _ = content.partition(b":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise BadUpstream(f"not a header line: {content[:80]!r}")

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._fp, attr)


class _CheckedResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = _HeadReader(self.fp)  # type: ignore[assignment]


def _items(msg: http.client.HTTPMessage) -> list[tuple[bytes, bytes]]:
    """The head's fields as the plugin sent them (http.client decoded them as latin-1), folded lines joined
    with one space as h11 did."""
    return [(k.encode("latin-1"), _FOLD.sub(" ", v).encode("latin-1")) for k, v in msg.items()]


class _Connection(http.client.HTTPConnection):
    response_class = _CheckedResponse

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
        self.headers = httpx.Headers(_items(resp.msg))
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
            resp = _final(conn, resp, req.method)
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


def _final(conn: _Connection, resp: http.client.HTTPResponse, method: str) -> http.client.HTTPResponse:
    """The final answer after any informational ones (103 Early Hints ...), which http.client skips only for
    100: left in place, the real answer would stay in the socket and be read as the NEXT request's answer,
    another client's. Read from the same buffered reader (it may hold the final answer's bytes already)."""
    for _ in range(16):
        if not 100 <= resp.status < 200:
            return resp
        if resp.status == 101:
            raise BadUpstream("101 Switching Protocols to a request that asked for no upgrade")
        nxt = _CheckedResponse(conn.sock, method=method)
        nxt.fp.close()
        nxt.fp, resp.fp = resp.fp, None  # type: ignore[assignment]
        nxt.begin()
        resp = nxt
    raise BadUpstream("more than 16 informational answers")

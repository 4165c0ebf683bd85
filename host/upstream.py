"""The proxy's HTTP/1.1 client to plugin sockets: a small client of our own over Unix sockets, with a keep-alive
pool per socket, and nothing else (no cookie jar, no default headers, no redirects).

On the hot path httpx cost ~3x the CPU of ``http.client`` per request (URL parsing, request and response
models, h11 events; issue 12's profile), and ``http.client`` itself spent most of its time in ``email.parser``
building a message object of the response head. This client writes a request head in one piece and reads the
answer from one buffer: the head split into lines, checked as strictly as h11 did, the body framed by
Content-Length, chunked coding or the end of the connection (RFC 9112 6.3). What it parses comes from an
untrusted plugin: a status line, at most 100 header lines, a head of at most 64 KiB, chunk sizes in hex of at
most 16 digits. Requests carry exactly the caller's headers: no Host, Accept-Encoding or User-Agent of our own.

Failures raise :class:`UpstreamError` subclasses, which host.proxy.upstream_errors maps to HTTP statuses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

CHUNK = 256 * 1024  # the most one socket read returns: a 1 MiB answer crosses in a few pieces, not 16
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
IDLE_PER_SOCKET = 32  # idle keep-alive connections kept per plugin socket (more are closed when given back)
MAX_HEAD = 64 * 1024  # a response head (status line and fields) longer than this is garbage
MAX_FIELDS = 100
MAX_INFORMATIONAL = 16
SMALL_WRITE = 16 * 1024  # a body piece up to this size is framed (copied) and written in one go
# Set by host.gunicorn_wire.install(splice=True): this process's server writes responses with a writer that
# takes a SpliceBody (host.front then lets Content-Length answers be spliced).
WRITER_SPLICES = False
HEAD_READ = 16 * 1024  # reads while looking for a head's end: a large body after it is left to be spliced
SPLICE_MIN = 64 * 1024  # a body of at least this much still to come is spliced (SpliceBody), where asked
PIPE_SIZE = 256 * 1024  # the splice pipe's capacity: as much as one read takes (CHUNK)
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
_SPLICE_IN = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_SPLICE_OUT = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_SPLICE_MORE = os.SPLICE_F_MORE


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


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET_BAD = re.compile(r"[\x00-\x20\x7f]")  # no space or control character in a request target
_FOLD = re.compile(rb"\r?\n[ \t]+")
_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: (.*))?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;.*)?")


class RawHeaders:
    """A response head's fields in order, names and values as the bytes the plugin sent; what host.headers
    reads of them (``raw``, ``get``, ``in``) and nothing more."""

    __slots__ = ("_names", "raw")

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self.raw = list(raw)
        self._names = [k.lower() for k, _ in self.raw]

    def get(self, name: str, default: str = "") -> str:
        """All values of ``name`` joined with ", " (latin-1), or ``default``."""
        key = name.lower().encode("latin-1")
        if key not in self._names:
            return default
        if self._names.count(key) == 1:
            return self.raw[self._names.index(key)][1].decode("latin-1")
        return ", ".join(v.decode("latin-1") for k, (_, v) in zip(self._names, self.raw, strict=True) if k == key)

    def __contains__(self, name: object) -> bool:
        return str(name).lower().encode("latin-1") in self._names


def request_head(method: str, target: str, headers: list[tuple[bytes, bytes]], chunked: bool) -> bytes:
    """The request line and fields, or RequestRefused for anything that could end a line or split the
    request (a space or control character in the target, a name that is no token, CR, LF or NUL in a value)."""
    target = ascii_target(target)
    if not _TOKEN.fullmatch(method.encode("latin-1", "replace")) or _TARGET_BAD.search(target) or not target:
        raise RequestRefused(f"cannot send the request line {method!r} {target[:80]!r}")
    lines = [f"{method} {target} HTTP/1.1".encode("ascii")]
    for name, value in headers:
        if (name not in _NAMES_SEEN and not _seen_token(name)) or b"\r" in value or b"\n" in value or b"\0" in value:
            raise RequestRefused(f"cannot send the header {name[:80]!r}")
        lines.append(name + b": " + value)
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


class _Connection:
    """One connection to a plugin socket and what has been read from it but not yet used."""

    def __init__(self, path: str, connect_timeout: float) -> None:
        self.path = path
        self.timeout = connect_timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
        self.sock = sock

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def stale(self) -> bool:
        """An idle keep-alive connection the plugin has closed (or sent stray bytes on) reads as readable."""
        if self.sock is None or self.buf:
            return True
        try:
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def recv(self, size: int = CHUNK) -> bytes:
        """What the socket has now (waits for at least one byte, takes at most ``size``), b"" at its end."""
        assert self.sock is not None
        return self.sock.recv(size)

    def gather(self, find: Callable[[bytearray, int], int], size: int, too_long: str, first: bool = False) -> int:
        """Read until ``find(buffer, where the new piece starts)`` is >= 0 and return it; the buffer becomes
        :attr:`buf`. For a head or line arriving in pieces (a plugin may trickle it a byte at a time): gathered
        in a bytearray and each new piece searched once, not the whole buffer copied and searched again per
        read (quadratic: 4.7 s of the shared web worker's CPU for a 60 KiB head sent byte by byte). ``first``:
        nothing of the answer came before (an end of stream now means no answer at all)."""
        acc = bytearray(self.buf)
        found = -1
        while found < 0:
            if len(acc) > MAX_HEAD:
                raise BadUpstream(too_long)
            data = self.recv(size)
            if not data:
                raise BadUpstream("the plugin closed the connection before its answer was complete"
                                  if acc or not first else "the plugin closed the connection without answering")
            start = len(acc)
            acc += data
            found = find(acc, start)
        self.buf = bytes(acc)
        return found

    def fill(self) -> None:
        data = self.recv()
        if not data:
            raise BadUpstream("the plugin closed the connection before its answer was complete")
        self.buf += data

    def read_head(self) -> tuple[int, int, list[tuple[bytes, bytes]]]:
        """(minor version, status, fields) of the next response head; the buffer keeps what follows it."""
        cut = _head_end(self.buf)
        if cut < 0:  # a blank line may straddle two pieces: each search starts two bytes back
            cut = self.gather(lambda acc, start: _head_end(acc, max(0, start - 2)), HEAD_READ,
                              "the response head is longer than 64 KiB", first=True)
        if cut > MAX_HEAD:
            raise BadUpstream("the response head is longer than 64 KiB")
        head, self.buf = self.buf[:cut], self.buf[cut:]
        if b"\0" in head or b"\r" in head.replace(b"\r\n", b""):
            raise BadUpstream("a CR or NUL inside a line of the response head")
        lines = head.split(b"\n")
        lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines[:-2]]  # the last two: "" "" (blank line)
        status = _STATUS.fullmatch(lines[0]) if lines else None
        if status is None:
            raise BadUpstream(f"not an HTTP/1.x status line: {lines[0][:80] if lines else b''!r}")
        if len(lines) - 1 > MAX_FIELDS:
            raise BadUpstream(f"more than {MAX_FIELDS} header lines")
        fields: list[tuple[bytes, bytes]] = []
        for ln in lines[1:]:
            if ln[:1] in (b" ", b"\t"):  # obs-fold: joined to the previous field with one space, as h11 did
                if not fields:
                    raise BadUpstream("a continuation line before any header line")
                name, value = fields[-1]
                fields[-1] = (name, (value + b" " + ln.strip(b" \t")).strip(b" \t"))
                continue
            name, colon, value = ln.partition(b":")
            if not colon or (name not in _NAMES_SEEN and not _seen_token(name)):
                raise BadUpstream(f"not a header line: {ln[:80]!r}")
            fields.append((name, value.strip(b" \t")))
        return int(status.group(1)), int(status.group(2)), fields


_NAMES_SEEN: set[bytes] = set()  # field names (of requests and answers) found to be tokens: checked once


def _seen_token(name: bytes) -> bool:
    if not _TOKEN.fullmatch(name):
        return False
    if len(_NAMES_SEEN) >= 1024:  # a plugin inventing names only makes it start over
        _NAMES_SEEN.clear()
    _NAMES_SEEN.add(name)
    return True


def _head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Where the head in ``buf`` ends (just past its blank line, CRLF or bare LF), or -1. ``start``: none ends
    before it (what came before was searched already)."""
    # Only as far as a head may reach, and a bare-LF end only before the CRLF one: the buffer may hold a
    # read's worth of body after the head (256 KiB), which scanning end to end cost 11 % of a 1 MiB GET.
    crlf = buf.find(b"\n\r\n", start, MAX_HEAD + 3)
    lf = buf.find(b"\n\n", start, crlf + 2 if crlf >= 0 else MAX_HEAD + 2)
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


class UpstreamResponse:
    """What the proxy needs of an answer: status, headers as sent (latin-1), the body piece by piece."""

    def __init__(self, pool: SocketPool, conn: _Connection, status: int, headers: RawHeaders, framing: str,
                 length: int, keep_alive: bool) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status_code = status
        self.headers = headers
        self._framing = framing  # "none", "length", "chunked", "close"
        self._left = length  # bytes of the body (length) or of the current chunk (chunked) still to come
        self._keep_alive = keep_alive
        self._done = framing == "none" or (framing == "length" and length == 0)
        # The consumer writes pieces with host.gunicorn_wire's writer, which moves a SpliceBody socket to
        # socket in the kernel: the body of a Content-Length answer then comes as one SpliceBody.
        self.splice = False

    def iter_raw(self) -> Iterator[bytes]:
        """Each piece as the socket returned it (up to 256 KiB), never held back to fill a chunk."""
        conn = self._conn
        if conn is None or self._done:
            return
        try:
            if self._framing == "chunked":
                yield from self._chunks(conn)
            else:
                yield from self._plain(conn)
        except TimeoutError as exc:
            raise UpstreamTimeout("the plugin stopped sending its answer") from exc
        except OSError as exc:
            raise BadUpstream(f"{type(exc).__name__}: {exc}") from exc
        self._done = True

    def _take(self, conn: _Connection, limit: int) -> bytes:
        """Up to ``limit`` body bytes: the buffered ones first, else one read from the socket."""
        if conn.buf:
            data, conn.buf = conn.buf[:limit], conn.buf[limit:]
            return data
        data = conn.recv()
        if len(data) > limit:
            data, conn.buf = data[:limit], data[limit:]
        return data

    def _plain(self, conn: _Connection) -> Iterator[bytes]:
        if self._framing == "close":
            while True:
                data = self._take(conn, CHUNK)
                if not data:
                    return
                yield data
        while self._left > 0:
            if self.splice and not conn.buf and self._left >= SPLICE_MIN and conn.sock is not None:
                body = SpliceBody(conn, self._left)
                yield body  # type: ignore[misc]  # the writer that asked for it knows what to do with it
                if body.moved != body.length:  # the writer failed, or fell back to pieces and failed
                    raise BadUpstream("the answer's body was not moved to its end")
                self._left = 0
                return
            data = self._take(conn, self._left)
            if not data:
                raise BadUpstream("the plugin closed the connection before the end of its answer")
            self._left -= len(data)
            yield data

    def _line(self, conn: _Connection) -> bytes:
        i = conn.buf.find(b"\n")
        if i < 0:
            i = conn.gather(lambda acc, start: acc.find(b"\n", start), CHUNK,
                            "a chunk-size or trailer line longer than 64 KiB")
        line, conn.buf = conn.buf[:i], conn.buf[i + 1:]
        return line[:-1] if line.endswith(b"\r") else line

    def _chunks(self, conn: _Connection) -> Iterator[bytes]:
        while True:
            size = _CHUNK_SIZE.fullmatch(self._line(conn))
            if size is None:
                raise BadUpstream("a malformed chunk size in the plugin's answer")
            left = int(size.group(1), 16)
            if left == 0:
                break
            while left > 0:
                data = self._take(conn, left)
                if not data:
                    raise BadUpstream("the plugin closed the connection inside a chunk")
                left -= len(data)
                yield data
            if self._line(conn):
                raise BadUpstream("a chunk not followed by CRLF")
        for _ in range(MAX_FIELDS + 1):  # trailer fields, dropped (the client's chunked framing is gunicorn's)
            if not self._line(conn):
                return
        raise BadUpstream("too many trailer lines")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._keep_alive and conn.sock is not None and not conn.buf:
            self._pool.give_back(conn)
        else:
            conn.close()  # an answer not read to its end leaves the connection in an unknown state


class SpliceBody:
    """The rest of a Content-Length body, ``length`` bytes still on the plugin's socket, for a writer that can
    move it to the client's socket in the kernel (``splice(2)`` through a pipe: neither copy into Python, nor
    a read and a write per 256 KiB). :meth:`move_to` does it with gevent's waits; :meth:`pieces` gives the
    bytes instead, for a writer that cannot (chunked framing to the client, TLS, a HEAD answer).
    ``guard``: a context manager factory the consumer wraps the moving in (host.front turns the plugin's
    failures into the proxy's errors there, as for pieces it reads itself)."""

    def __init__(self, conn: _Connection, length: int) -> None:
        self._conn = conn
        self.length = length
        self.moved = 0
        self.guard: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext

    def __len__(self) -> int:
        return self.length

    def pieces(self) -> Iterator[bytes]:
        sock = self._conn.sock
        assert sock is not None
        with self.guard():
            while self.moved < self.length:
                try:
                    data = sock.recv(min(self.length - self.moved, CHUNK))
                except TimeoutError as exc:
                    raise UpstreamTimeout("the plugin stopped sending its answer") from exc
                except OSError as exc:
                    raise BadUpstream(f"{type(exc).__name__}: {exc}") from exc
                if not data:
                    raise BadUpstream("the plugin closed the connection before the end of its answer")
                self.moved += len(data)
                yield data

    def move_to(self, out: socket.socket) -> None:
        """Splice the body into ``out``; the plugin's failures raise UpstreamError (in ``guard``), the
        client's OSError."""
        from gevent.socket import wait_read, wait_write  # only the gevent web tier splices

        src = self._conn.sock
        assert src is not None
        fd_in, fd_out = src.fileno(), out.fileno()
        timeout_in, timeout_out = src.gettimeout(), out.gettimeout()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):  # over the user's pipe allowance: the default size will do
                fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
            cap = fcntl.fcntl(w, F_GETPIPE_SZ)
            with self.guard():
                left = self.length - self.moved
                while left > 0:
                    try:
                        n = os.splice(fd_in, w, min(left, cap), flags=_SPLICE_IN)
                    except BlockingIOError:
                        try:
                            wait_read(fd_in, timeout=timeout_in, timeout_exc=UpstreamTimeout(
                                "the plugin stopped sending its answer"))
                        except OSError as exc:  # the fd went away under the wait
                            raise BadUpstream(f"{type(exc).__name__}: {exc}") from exc
                        continue
                    except OSError as exc:
                        raise BadUpstream(f"{type(exc).__name__}: {exc}") from exc
                    if n == 0:
                        raise BadUpstream("the plugin closed the connection before the end of its answer")
                    left -= n
                    while n > 0:  # the client's side: its errors are OSError, as sendall's were
                        try:
                            m = os.splice(r, fd_out, n, flags=_SPLICE_OUT | (_SPLICE_MORE if left else 0))
                        except BlockingIOError:
                            wait_write(fd_out, timeout=timeout_out)
                            continue
                        n -= m
                        self.moved += m
        finally:
            os.close(r)
            os.close(w)


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
        chunked = req.body is not None and not any(n.lower() == b"content-length" for n, _ in req.headers)
        head = request_head(req.method, req.target, req.headers, chunked)
        reused = self._take()
        if reused is not None:
            try:
                return self._exchange(reused, req, head, chunked)
            except BadUpstream:
                # The plugin closed a kept-alive connection as we wrote on it (gunicorn's keep-alive timeout):
                # nothing reached the app, so a bodiless idempotent request goes again on a new connection.
                if req.body is not None or req.method not in IDEMPOTENT:
                    raise
        conn = _Connection(self.path, self.connect_timeout)
        conn.connect()
        return self._exchange(conn, req, head, chunked)

    def _exchange(self, conn: _Connection, req: UpstreamRequest, head: bytes, chunked: bool) -> UpstreamResponse:
        try:
            sock = conn.sock
            assert sock is not None
            sock.settimeout(req.timeout)
            if req.body is None:
                sock.sendall(head)
            else:
                _send_body(sock, head, req.body, chunked)
            return self._answer(conn, req.method)
        except UpstreamError:
            conn.close()
            raise
        except TimeoutError as exc:
            conn.close()
            raise UpstreamTimeout("the plugin did not answer in time") from exc
        except OSError as exc:
            conn.close()
            raise BadUpstream(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            conn.close()  # the request body failed (too large, malformed): the exchange is half-written
            raise

    def _answer(self, conn: _Connection, method: str) -> UpstreamResponse:
        """The final answer after any informational ones (103 Early Hints ...), which are skipped: left in
        place, the real answer would stay in the socket and be read as the NEXT request's answer, another
        client's."""
        for _ in range(MAX_INFORMATIONAL):
            minor, status, fields = conn.read_head()
            if status == 101:
                raise BadUpstream("101 Switching Protocols to a request that asked for no upgrade")
            if not 100 <= status < 200:
                break
        else:
            raise BadUpstream(f"more than {MAX_INFORMATIONAL} informational answers")
        headers = RawHeaders(fields)
        connection = {t.strip().lower() for t in headers.get("connection").split(",")}
        keep_alive = "close" not in connection and (minor == 1 or "keep-alive" in connection)
        if method == "HEAD" or status in (204, 304):
            return UpstreamResponse(self, conn, status, headers, "none", 0, keep_alive)
        encodings = [t.strip().lower() for t in headers.get("transfer-encoding").split(",") if t.strip()]
        if encodings:
            if encodings[-1] == "chunked":
                return UpstreamResponse(self, conn, status, headers, "chunked", 0, keep_alive)
            return UpstreamResponse(self, conn, status, headers, "close", 0, False)  # RFC 9112 6.3 (4)
        lengths = {v.strip() for k, v in headers.raw if k.lower() == b"content-length"} if "content-length" in \
            headers else set()
        if lengths:
            values = {x.strip() for v in lengths for x in v.split(b",")}
            if len(values) != 1 or not next(iter(values)).isdigit() or len(next(iter(values))) > 18:
                raise BadUpstream(f"an invalid Content-Length: {b', '.join(sorted(lengths))[:80]!r}")
            return UpstreamResponse(self, conn, status, headers, "length", int(next(iter(values))), keep_alive)
        return UpstreamResponse(self, conn, status, headers, "close", 0, False)


def _send_body(sock: socket.socket, head: bytes, body: Iterator[bytes], chunked: bool) -> None:
    """The head and the body after it, chunk-coded when its length is unknown. Each piece is written as it
    comes (a slow upload streams through); a small one goes in one write with its framing (and the head),
    a large one is not copied into a framed buffer."""
    pending = head
    for piece in body:
        if not piece:
            continue
        if len(piece) <= SMALL_WRITE:
            sock.sendall(pending + (b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece))
        else:
            if chunked:
                pending += b"%x\r\n" % len(piece)
            if pending:
                sock.sendall(pending)
            sock.sendall(piece)
            if chunked:
                sock.sendall(b"\r\n")
        pending = b""
    if pending or chunked:
        sock.sendall(pending + (b"0\r\n\r\n" if chunked else b""))

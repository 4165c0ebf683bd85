"""Reverse proxy from the web tier to plugin sockets: streaming both ways, pooled per socket, and every upstream
error mapped to an HTTP status in ONE place (:func:`upstream_errors`). What headers cross is host.headers' job.

Routes by socket path only; must not import the supervisor.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from host.upstream import (
    BadUpstream,
    ConnectFailed,
    RequestRefused,
    SocketPool,
    UpstreamRequest,
    UpstreamTimeout,
)

CHUNK = 64 * 1024
# Request bodies are read in pieces this large: gunicorn's body reader copies what is left of its buffer on
# every read, so reading a 16 MiB upload 64 KiB at a time was quadratic (1 MiB reads: 1.44x faster, issue 12).
BODY_CHUNK = 1024 * 1024


class ProxyError(Exception):
    """A request could not be proxied; ``status`` is what the client gets."""

    def __init__(self, status: int, title: str, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.retry_after = retry_after


class Unavailable(ProxyError):
    """Nothing accepts on the plugin's socket (starting, restarting, stopped)."""

    def __init__(self, detail: str) -> None:
        super().__init__(503, "Plugin unavailable", detail, retry_after=1)


class BodyTooLarge(Exception):
    pass


class BadRequestBody(Exception):
    """The client's request body could not be read: broken chunked framing (gunicorn's parser raises
    InvalidChunkSize, ChunkMissingTerminator, InvalidChunkExtension... from ``wsgi.input``) or a body cut
    short. Raised while the upstream client writes the body, so it surfaces from ``handle_request`` as itself."""


@dataclass(frozen=True)
class Limits:
    timeout: float
    max_body: int
    max_websockets: int = 16
    websocket_idle: float = 300.0


def body_limit(max_body: int) -> str:
    """What a 413 says: the limit, and the manifest field that raises it (the operator reads it from the
    client's error or the access log; the plugin's users cannot change it)."""
    size = f"{max_body // (1 << 20)} MiB" if max_body and max_body % (1 << 20) == 0 else f"{max_body} bytes"
    return f"the plugin accepts request bodies of at most {size} (its manifest's permissions.requests.max_body_mb)"


def timed_out(plugin: str, timeout: float) -> str:
    """What a 504 says, naming the manifest field that raises the limit."""
    return (f"plugin {plugin!r} did not answer within {timeout:g}s "
            "(its manifest's permissions.requests.timeout_seconds)")


@contextmanager
def upstream_errors(plugin: str, timeout: float) -> Iterator[None]:
    """Translate the upstream client's exceptions (host.upstream) into ProxyError at this one boundary."""
    try:
        yield
    except BodyTooLarge as exc:
        raise ProxyError(413, "Request body too large", str(exc)) from exc
    except BadRequestBody as exc:
        raise ProxyError(400, "Malformed request body", str(exc)) from exc
    except ConnectFailed as exc:
        raise Unavailable(f"plugin {plugin!r} is not accepting connections") from exc
    except UpstreamTimeout as exc:
        raise ProxyError(504, "Plugin timed out", timed_out(plugin, timeout)) from exc
    except (BadUpstream, RequestRefused) as exc:
        raise ProxyError(502, "Bad gateway", f"plugin {plugin!r} closed the connection or answered garbage") from exc


class Slots:
    """Caps the requests in flight to each plugin in this web-tier process, and queues a burst beyond the cap
    instead of refusing it.

    ``limit`` requests to one plugin run at once; up to ``queue`` more wait, first come first served, each
    until its deadline. A released slot is handed straight to the oldest waiter (a request arriving at that
    moment cannot overtake the queue). :meth:`acquire` fails only when the queue is full or the wait ran
    out: it raises ProxyError, so the client gets 503 + Retry-After. So a hung plugin holds at most
    ``limit + queue`` of the web tier's requests, and every other plugin keeps being served.
    """

    def __init__(self, limit: int, queue: int = 0) -> None:
        self.limit = limit
        self.queue = queue
        self._used: dict[str, int] = {}
        self._waiting: dict[str, collections.deque[_Waiter]] = {}
        self._lock = threading.Lock()

    def acquire(self, name: str, wait: float = 0.0) -> None:
        """Take one of the plugin's slots, waiting in line up to ``wait`` seconds; raises ProxyError(503)."""
        with self._lock:
            n = self._used.get(name, 0)
            line = self._waiting.get(name)
            if n < self.limit and not line:
                self._used[name] = n + 1
                return
            if wait <= 0 or self.queue <= 0 or (line is not None and len(line) >= self.queue):
                raise ProxyError(503, "Plugin busy", f"plugin {name!r} has {self.limit} requests in flight and "
                                 f"{self.queue} waiting already", 1)
            me = _Waiter()
            self._waiting.setdefault(name, collections.deque()).append(me)
        me.event.wait(wait)
        with self._lock:
            if me.granted:
                return
            line = self._waiting[name]
            line.remove(me)
            if not line:
                del self._waiting[name]
        raise ProxyError(503, "Plugin busy", f"plugin {name!r} did not free a slot within {wait:g}s "
                         f"({self.limit} requests in flight)", 1)

    def release(self, name: str) -> None:
        with self._lock:
            line = self._waiting.get(name)
            if line:
                me = line.popleft()  # the slot passes to the oldest waiter: in use stays as it is
                if not line:
                    del self._waiting[name]
                me.granted = True
                me.event.set()
                return
            self._used[name] -= 1

    def waiting(self, name: str) -> int:
        with self._lock:
            return len(self._waiting.get(name, ()))


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.granted = False


class Pool:
    """One keep-alive pool (host.upstream.SocketPool) per plugin instance, and nothing else: no cookie jar
    (an httpx client stored one user's ``Set-Cookie`` and replayed it on other users' requests), no default
    headers, auth or redirect handling. Each request carries exactly the headers :func:`request_headers`
    built from its own client's request.

    The plugin's public socket is a symlink (in a root-only dir) to its live instance's socket; the pool
    follows it on every request, so after a zero-downtime restart new requests reach the new instance at
    once. The old pool's idle connections are closed; responses still streaming from the draining instance
    hold their own connections, which close when those responses end.
    """

    def __init__(self) -> None:
        self._pools: dict[Path, tuple[str, SocketPool]] = {}
        self._lock = threading.Lock()

    def transport(self, public: Path) -> SocketPool:
        try:
            link = os.readlink(public)  # relative to the public socket's directory
        except OSError:
            link = ""  # not running: the connect fails and the caller waits or answers 503
        entry = self._pools.get(public)
        if entry is not None and entry[0] == link:
            return entry[1]
        with self._lock:
            entry = self._pools.get(public)
            if entry is not None and entry[0] == link:
                return entry[1]
            if entry is not None:
                entry[1].close()
            pool = SocketPool(str(public.parent / link) if link else str(public))
            self._pools[public] = (link, pool)
        return pool

    def close(self) -> None:
        with self._lock:
            for _, p in self._pools.values():
                p.close()
            self._pools.clear()


def upstream_request(method: str, target: str, headers: list[tuple[str, str]], body: Iterator[bytes] | None,
                     timeout: float) -> UpstreamRequest:
    """A request for one plugin socket built from this client's request alone (no shared defaults)."""
    # WSGI header strings are the bytes as sent, decoded as latin-1 (PEP 3333); encoded back the same way,
    # not as ASCII (which failed with a 500 on any obs-text byte from a client).
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return UpstreamRequest(method, target, raw, body, timeout)


def upstream_path(raw_uri: str | None, prefix: str, subpath: str) -> str:
    """The path the plugin sees (``/<path>``), percent-encoding preserved from the client's request line."""
    if raw_uri:
        raw_path = raw_uri.split("?", 1)[0]
        if raw_path.startswith(prefix + "/") or raw_path == prefix:
            rest = raw_path[len(prefix):] or "/"
            return rest
    return "/" + quote(subpath, safe="/:@!$&'()*+,;=-._~")


def escapes_prefix(subpath: str) -> bool:
    """True when a decoded path has a '.' or '..' segment (it could climb out of the plugin's prefix)."""
    segments = subpath.replace("\\", "/").split("/")
    return any(s in ("..", ".") for s in segments) or "\x00" in subpath


def body_stream(stream: object, max_body: int) -> Iterator[bytes]:
    """Read the client's body in chunks, failing once it exceeds ``max_body`` or cannot be read."""
    read = getattr(stream, "read")  # noqa: B009 - a wsgi.input or werkzeug stream
    total = 0
    while True:
        try:
            chunk = read(min(BODY_CHUNK, max_body + 1))
        except Exception as exc:  # whatever the server's body parser or socket raises: the client's doing
            raise BadRequestBody(f"the request body is malformed or ended early ({type(exc).__name__})") from exc
        if not chunk:
            return
        total += len(chunk)
        if total > max_body:
            raise BodyTooLarge(body_limit(max_body))
        yield chunk

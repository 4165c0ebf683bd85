"""What the proxy records of each exchange with a plugin: the access log line and the request series.

An exchange ends when its response's last byte has been handed to the client, when the response is cut
short (the client went away, the plugin failed mid-body), or, for a WebSocket, when the relay closes it;
only then is it logged and counted, with the bytes that actually went each way. A response body counts a
piece as sent once the server asks for the next one (or the body ends): a piece the server failed to write
to a departed client is not counted.

No Flask import: the app hands in the request's facts and the Response to watch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from host.access_log import AccessLog, Entry
from host.request_metrics import RequestMetrics

log = logging.getLogger(__name__)
NO_BODY = frozenset({204, 304})
R = TypeVar("R")


class Observer:
    """``access``/``metrics``: None switches that record off (HOST_ACCESS_LOG=false, no metrics)."""

    def __init__(self, access: AccessLog | None, metrics: RequestMetrics | None) -> None:
        self.access = access
        self.metrics = metrics
        self._warned = False

    def begin(self, plugin: str, method: str, path: str, client: str) -> Exchange:
        if self.metrics is not None:
            self.metrics.begin(plugin)
        return Exchange(self, plugin, method, path, client)

    def record(self, entry: Entry) -> None:
        if self.metrics is not None:
            self.metrics.end(entry.plugin, entry.status, entry.duration, entry.bytes_in, entry.bytes_out,
                             entry.aborted)
        if self.access is not None:
            try:
                self.access.write(entry)
            except OSError as exc:
                if not self._warned:  # once per worker: a full disk must not flood the error log
                    self._warned = True
                    log.error("cannot write the access log in %s: %s", self.access.dir, exc)


class Exchange:
    """One request to a plugin, from its arrival until :meth:`finish` (called exactly once)."""

    def __init__(self, observer: Observer, plugin: str, method: str, path: str, client: str) -> None:
        self._observer = observer
        self.plugin = plugin
        self.method = method
        self.path = path
        self.client = client
        self.wall = time.time()
        self._t0 = time.perf_counter()
        self.bytes_in = 0
        self._done = False
        self._lock = threading.Lock()

    def received(self, body: Iterator[bytes]) -> Iterator[bytes]:
        """The request body, counted as it is read."""
        for chunk in body:
            self.bytes_in += len(chunk)
            yield chunk

    def watch(self, resp: R) -> R:
        """Finish this exchange when ``resp``'s body has been sent or given up (the server closes it). A
        response whose connection the WebSocket relay took over (``handed_over``) finishes when the relay
        calls :meth:`websocket_closed`."""
        if getattr(resp, "handed_over", False):
            return resp
        target: Any = resp  # a werkzeug Response
        target.response = self.counted(target.response, target.status_code)
        return resp

    def counted(self, body: Iterable[bytes], status: int) -> Iterable[bytes]:
        """``body`` of a response with ``status``, counted as the server takes it; the exchange finishes
        when the server closes it."""
        return _Counted(body, self, status)

    def websocket_closed(self, received: int, sent: int) -> None:
        self.bytes_in += received
        self.finish(101, sent, aborted=False, websocket=True)

    def finish(self, status: int, bytes_out: int, *, aborted: bool, websocket: bool = False) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        entry = Entry(time=self.wall, client=self.client, method=self.method, path=self.path, status=status,
                      bytes_in=self.bytes_in, bytes_out=bytes_out, duration=time.perf_counter() - self._t0,
                      plugin=self.plugin, aborted=aborted, websocket=websocket)
        try:
            self._observer.record(entry)
        except Exception:  # recording must never cost the client its response
            log.exception("cannot record a request to %s", self.plugin)


class _Counted:
    """A response body that counts what the server took from it and finishes the exchange on close()."""

    def __init__(self, inner: Iterable[bytes], exchange: Exchange, status: int) -> None:
        self._inner = inner
        self._it: Iterator[bytes] | None = None
        self._exchange = exchange
        self._status = status
        self._sent = 0
        self._pending = 0  # the piece handed out last: sent once the server comes back for more
        self._ended = False
        self._failed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._it is None:
            self._it = iter(self._inner)
        self._sent += self._pending
        self._pending = 0
        try:
            chunk = next(self._it)
        except StopIteration:
            self._ended = True
            raise
        except BaseException:
            self._failed = True
            raise
        self._pending = len(chunk)
        return chunk

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            # Never iterated: a HEAD request or a bodiless status (werkzeug sends no body) is complete.
            bodiless = self._it is None and (self._exchange.method == "HEAD" or self._status in NO_BODY
                                             or self._status < 200)
            aborted = self._failed or not (self._ended or bodiless)
            self._exchange.finish(self._status, self._sent, aborted=aborted)

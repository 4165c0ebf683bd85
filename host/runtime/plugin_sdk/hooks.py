"""Event handlers and filters for a plugin, served on ``/.well-known/plugin-host/`` of its own socket (a path
the host's public proxy refuses, so only the host reaches it), each call verified as the host signed it.

    from plugin_sdk import hooks

    @hooks.on("notes.note.created")          # or "notes.*"; the manifest subscribes, this handles
    def created(event):                       # the CloudEvent as a dict; raise to have it retried
        ...

    @hooks.filter("waf")                      # [[hooks.filters]] name = "waf"
    def waf(call):                            # {"point": "request.before", "data": {"method", "path", ...}}
        if call["data"]["path"].startswith("/admin"):
            return hooks.reject(403, "no admin pages here")
        return hooks.allow(headers={"X-Waf": "checked"})

Works the same from a plain Flask app and a seed-style ``PluginBase`` (the host's WSGI wrapper routes the
prefix here whenever a handler is registered). Verification (Standard Webhooks): ``webhook-signature`` must be
``v1,<base64 HMAC-SHA256("<webhook-id>.<webhook-timestamp>.<body>")>`` under PLUGIN_HOST_WEBHOOK_SECRET
(replaced at every start), the timestamp within ±300 s, else 401. An event id already handled is answered
200 without calling the handler again (the host delivers at least once, so retries and replays repeat ids):
the ids live in ``$PLUGIN_DATA_DIR/.plugin_sdk_hooks.db``, so that holds across restarts and workers.
An event type with no handler is answered 410, which unsubscribes the plugin from it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

PREFIX = "/.well-known/plugin-host/"
SECRET_ENV = "PLUGIN_HOST_WEBHOOK_SECRET"
TOLERANCE = 300
MAX_BODY = 1024 * 1024
KEEP_SEEN = 7 * 86400  # seconds an event id is remembered (the host gives up after well under an hour)

EventHandler = Callable[[dict[str, Any]], Any]
FilterHandler = Callable[[dict[str, Any]], Any]


class Unsubscribe(Exception):
    """Raise from an event handler: answered 410, the host stops sending this event type."""


class RetryLater(Exception):
    """Raise from an event handler: answered 429 with Retry-After, the host tries again no sooner."""

    def __init__(self, seconds: int = 60) -> None:
        super().__init__(f"retry in {seconds}s")
        self.seconds = max(1, int(seconds))


class InvalidSignature(Exception):
    """The call was not signed by the host with the current secret, or is outside the time tolerance."""


def allow(headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A filter's verdict: go on (``headers``: to add to the request, from the host's allow-list)."""
    return {"action": "allow", "headers": dict(headers or {})}


def reject(status: int = 403, reason: str = "rejected by a filter") -> dict[str, Any]:
    """A filter's verdict: stop here; the client (or the installer) gets ``status`` and ``reason``."""
    return {"action": "reject", "status": int(status), "reason": str(reason)}


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None,
           tolerance: int = TOLERANCE) -> str:
    """The message id of a correctly signed, timely call; InvalidSignature otherwise. ``headers``: lower-case
    names."""
    msg_id, ts, sigs = (headers.get(h, "") for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (secret and msg_id and ts and sigs):
        raise InvalidSignature("missing webhook headers or no secret")
    try:
        stamp = int(ts)
    except ValueError:
        raise InvalidSignature("bad webhook-timestamp") from None
    if abs((time.time() if now is None else now) - stamp) > tolerance:
        raise InvalidSignature("webhook-timestamp outside the tolerance")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        raise InvalidSignature("malformed secret") from None
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
    for sig in sigs.split():
        version, _, value = sig.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return msg_id
    raise InvalidSignature("no matching signature")


def _matches(pattern: str, kind: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return kind.startswith(pattern[:-1])
    return pattern == kind


class _Seen:
    """Event ids already handled, in SQLite (shared by the plugin's workers, kept across restarts)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._mem: dict[str, float] = {}
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection | None:
        if self.path is None:
            return None
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, ts REAL NOT NULL)")
            self._local.db = db
        return db

    def __contains__(self, msg_id: str) -> bool:
        db = self._db()
        if db is None:
            return msg_id in self._mem
        return db.execute("SELECT 1 FROM seen WHERE id = ?", (msg_id,)).fetchone() is not None

    def add(self, msg_id: str) -> None:
        now = time.time()
        db = self._db()
        if db is None:
            self._mem[msg_id] = now
            return
        db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (msg_id, now))
        if hash(msg_id) % 256 == 0:
            db.execute("DELETE FROM seen WHERE ts < ?", (now - KEEP_SEEN,))


class Hooks:
    """A set of handlers; the module-level :data:`HOOKS` is the one the host's WSGI wrapper serves."""

    def __init__(self, secret: str | None = None, seen_path: str | None = None) -> None:
        self._secret = secret
        self._seen_path = seen_path
        self._seen: _Seen | None = None
        self.events: list[tuple[str, EventHandler]] = []
        self.filters: dict[str, FilterHandler] = {}

    def on(self, pattern: str) -> Callable[[EventHandler], EventHandler]:
        """Decorator: call the function with each event whose type matches ``pattern``."""
        def register(fn: EventHandler) -> EventHandler:
            self.events.append((pattern, fn))
            return fn
        return register

    def filter(self, name: str) -> Callable[[FilterHandler], FilterHandler]:
        """Decorator: the function is filter ``name`` of the manifest's ``[[hooks.filters]]``."""
        def register(fn: FilterHandler) -> FilterHandler:
            self.filters[name] = fn
            return fn
        return register

    def __bool__(self) -> bool:
        return bool(self.events or self.filters)

    @property
    def secret(self) -> str:
        return self._secret if self._secret is not None else os.environ.get(SECRET_ENV, "")

    @property
    def seen(self) -> _Seen:
        if self._seen is None:
            data = os.environ.get("PLUGIN_DATA_DIR")
            path = self._seen_path or (os.path.join(data, ".plugin_sdk_hooks.db") if data else None)
            self._seen = _Seen(path)
        return self._seen

    # -- WSGI ----------------------------------------------------------------------------------------------

    def wsgi(self, app: Any) -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
        """``app`` with this object answering under :data:`PREFIX` (the host's wrapper does this already)."""
        def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            if self and environ.get("PATH_INFO", "").startswith(PREFIX):
                return self.handle(environ, start_response)
            return app(environ, start_response)  # type: ignore[no-any-return]
        return wrapped

    def handle(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        status, body, extra = self._answer(environ)
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                                *extra])
        return [data]

    def _answer(self, environ: dict[str, Any]) -> tuple[str, dict[str, Any], list[tuple[str, str]]]:
        if environ.get("REQUEST_METHOD") != "POST":
            return "405 Method Not Allowed", {"error": "POST only"}, [("Allow", "POST")]
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            return "413 Content Too Large", {"error": "body too large"}, []
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {k: environ.get("HTTP_" + k.upper().replace("-", "_"), "")
                   for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
        try:
            msg_id = verify(self.secret, headers, body)
            payload = json.loads(body)
        except InvalidSignature as exc:
            return "401 Unauthorized", {"error": f"invalid signature: {exc}"}, []
        except ValueError:
            return "400 Bad Request", {"error": "body is not JSON"}, []
        path = environ.get("PATH_INFO", "")[len(PREFIX):]
        if path == "events":
            return self._event(msg_id, payload)
        if path.startswith("filters/"):
            fn = self.filters.get(path.removeprefix("filters/"))
            if fn is None:
                return "404 Not Found", {"error": "no such filter"}, []
            try:
                verdict = fn(payload)
            except Exception:
                traceback.print_exc()  # the plugin's stderr: `host logs`
                return "500 Internal Server Error", {"error": "the filter failed"}, []
            return "200 OK", verdict if isinstance(verdict, dict) else allow(), []
        return "404 Not Found", {"error": "unknown hook path"}, []

    def _event(self, msg_id: str, event: dict[str, Any]) -> tuple[str, dict[str, Any], list[tuple[str, str]]]:
        kind = str(event.get("type", ""))
        handlers = [fn for pattern, fn in self.events if _matches(pattern, kind)]
        if not handlers:
            return "410 Gone", {"error": f"no handler for {kind}"}, []
        if msg_id in self.seen:
            return "200 OK", {"duplicate": True}, []
        try:
            for fn in handlers:
                fn(event)
        except Unsubscribe:
            return "410 Gone", {"unsubscribed": kind}, []
        except RetryLater as exc:
            return "429 Too Many Requests", {"retry_after": exc.seconds}, [("Retry-After", str(exc.seconds))]
        except Exception:
            traceback.print_exc()
            return "500 Internal Server Error", {"error": "the handler failed; the host will retry"}, []
        self.seen.add(msg_id)
        return "200 OK", {"handled": len(handlers)}, []


HOOKS = Hooks()
on = HOOKS.on
filter = HOOKS.filter
wsgi = HOOKS.wsgi

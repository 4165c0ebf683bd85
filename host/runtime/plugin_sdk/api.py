"""The host-API client: ``HostApi()`` reads PLUGIN_HOST_API (the socket) and PLUGIN_HOST_API_TOKEN.

    from plugin_sdk.api import HostApi
    api = HostApi()
    api.kv_set("greeting", b"hello", expire_in=3600)
    api.kv_get("greeting")                      # b"hello", or None
    api.kv_compare_and_set("n", b"1", b"2")     # True only if "n" still held b"1"
    api.emit("notes.note.created", {"id": 7})   # needs events:emit:notes.note.created

Every call needs its permission in the manifest's ``[permissions] host_api``; without it the host answers
403 and this raises :class:`HostApiError` whose ``problem["permission"]`` names the one missing.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
from typing import Any
from urllib.parse import quote, urlencode

__all__ = ["HostApi", "HostApiError"]


class HostApiError(Exception):
    """The host refused or failed a call: ``status`` and the RFC 9457 ``problem`` it answered."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("host-api", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class HostApi:
    def __init__(self, socket_path: str | None = None, token: str | None = None, timeout: float = 10.0) -> None:
        path = socket_path or os.environ.get("PLUGIN_HOST_API")
        secret = token or os.environ.get("PLUGIN_HOST_API_TOKEN")
        if not path or not secret:
            raise RuntimeError("no host API: PLUGIN_HOST_API is set only for plugins whose manifest asks for "
                               "[permissions] host_api")
        self.socket_path, self._token, self.timeout = path, secret, timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """One call: (status, parsed JSON or None). HostApiError for any status >= 400."""
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Authorization": f"Bearer {self._token}"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        parsed = json.loads(raw) if raw else None
        if resp.status >= 400:
            raise HostApiError(resp.status, parsed if isinstance(parsed, dict) else {"status": resp.status})
        return resp.status, parsed

    # -- KV store -------------------------------------------------------------------------------------------

    @staticmethod
    def _key(key: str) -> str:
        return "/v1/kv/" + quote(key, safe="")

    def kv_get(self, key: str) -> bytes | None:
        try:
            _, reply = self.call("GET", self._key(key))
        except HostApiError as exc:
            if exc.status == 404 and exc.problem.get("title") == "No such key":
                return None
            raise
        return base64.b64decode(reply["value"])

    def kv_set(self, key: str, value: bytes | None, expire_in: float = 0) -> None:
        """Set (``value`` None deletes); ``expire_in`` seconds from now, 0 = never."""
        self._put(key, {"value": _enc(value), "expire_in_seconds": expire_in})

    def kv_compare_and_set(self, key: str, old: bytes | None, new: bytes | None, expire_in: float = 0) -> bool:
        """Set ``key`` to ``new`` only if it holds ``old`` (None: only if it does not exist); ``new`` None
        deletes it. Whether it was set."""
        return self._put(key, {"value": _enc(new), "old_value": _enc(old), "atomic": True,
                               "expire_in_seconds": expire_in})

    def _put(self, key: str, body: dict[str, Any]) -> bool:
        _, reply = self.call("PUT", self._key(key), body)
        return bool(reply["set"])

    def kv_delete(self, key: str) -> None:
        self.call("DELETE", self._key(key))

    def kv_list(self, prefix: str = "", page: int = 0, per_page: int = 100) -> list[str]:
        _, reply = self.call("GET", "/v1/kv?" + urlencode({"prefix": prefix, "page": page, "per_page": per_page}))
        return list(reply["keys"])

    # -- events, settings, users ----------------------------------------------------------------------------

    def emit(self, type: str, data: dict[str, Any] | None = None, id: str | None = None) -> str:
        """Emit event ``type`` (``<this plugin>.<noun>.<verb>``) with ``data`` (a JSON object); its id, the
        dedupe id subscribers see (give your own ``id`` to make a retry of the same emit a duplicate)."""
        _, reply = self.call("POST", "/v1/events", {"type": type, "data": data, "id": id})
        return str(reply["id"])

    def settings(self) -> dict[str, Any]:
        _, reply = self.call("GET", "/v1/settings")
        return dict(reply["settings"])

    def user(self, name: str) -> dict[str, Any] | None:
        try:
            _, reply = self.call("GET", "/v1/users/" + quote(name, safe=""))
        except HostApiError as exc:
            if exc.status == 404 and exc.problem.get("title") == "No such user":
                return None
            raise
        return dict(reply)

    def whoami(self) -> dict[str, Any]:
        return dict(self.call("GET", "/v1/whoami")[1])


def _enc(value: bytes | None) -> str | None:
    return base64.b64encode(value).decode() if value is not None else None

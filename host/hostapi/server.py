"""The host API's sockets, in the supervisor: one listening Unix socket per plugin, at
``run/_api/<name>/api.sock``, mounted into that plugin's sandbox only (host.launch). The socket a call arrives
on says which plugin is calling; the token proves it is that plugin's live instance; the manifest's grant
(fixed when the instance started) says what it may do (host.hostapi.routes.dispatch).
"""

from __future__ import annotations

import logging
import os
import shutil
import socketserver
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.errors import HostApiError
from host.hostapi import tokens
from host.hostapi.limits import Audit, RateLimit
from host.hostapi.routes import Call, Grant, dispatch
from host.layout import MAX_SOCKET_PATH, Layout
from host.registry import Registry

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

    from manifests import Manifest

log = logging.getLogger(__name__)
MAX_CONNECTIONS = 16  # per plugin, at once; more are closed at once (its workers share a handful)


class HostApi:
    """Opens each plugin's socket on its first start, issues and revokes the per-instance tokens."""

    def __init__(self, registry: Registry, layout: Layout, rate: float = 50.0, burst: int = 100) -> None:
        self.registry = registry
        self.layout = layout
        self.limit = RateLimit(rate, burst)
        self.audit = Audit(registry)
        self._servers: dict[str, _Server] = {}
        self._grants: dict[tuple[str, str], Grant] = {}
        self._lock = threading.Lock()

    def forget_leftovers(self) -> int:
        """Once this supervisor holds the home's lock: a killed host's tokens (their instances are gone).
        Never earlier: a second `host serve` that fails to take the lock must not revoke the running host's."""
        return tokens.revoke_all(self.registry)

    def socket_path(self, plugin: str) -> Path:
        return self.layout.run / "_api" / plugin / "api.sock"

    def start_instance(self, manifest: Manifest, instance: str, gid: int | None) -> tuple[Path, str]:
        """Before an instance spawns: its plugin's socket (opened if need be) and a fresh token for it."""
        plugin = manifest.name
        with self._lock:
            if plugin not in self._servers:
                self._servers[plugin] = self._open(plugin, gid)
        return self.socket_path(plugin), self.grant(manifest, instance)

    def grant(self, manifest: Manifest, instance: str) -> str:
        """Fix what instance ``instance`` of the plugin may do (its manifest's grant) and issue its token."""
        with self._lock:
            self._grants[(manifest.name, instance)] = Grant.of(manifest)
        return tokens.issue(self.registry, manifest.name, instance)

    def stop_instance(self, plugin: str, instance: str) -> None:
        """The instance stopped (or never came up): its token no longer works."""
        tokens.revoke(self.registry, plugin, instance)
        with self._lock:
            self._grants.pop((plugin, instance), None)
        self.audit.flush(plugin)

    def close(self, plugin: str) -> None:
        """The plugin is gone (uninstalled) or the host stops: no socket, no token."""
        tokens.revoke(self.registry, plugin)
        with self._lock:
            server = self._servers.pop(plugin, None)
            for key in [k for k in self._grants if k[0] == plugin]:
                del self._grants[key]
        if server is not None:
            server.shutdown()
            server.server_close()
        self.audit.flush(plugin)
        shutil.rmtree(self.socket_path(plugin).parent, ignore_errors=True)

    def close_all(self) -> None:
        with self._lock:
            plugins = list(self._servers)
        for plugin in plugins:
            self.close(plugin)

    def _open(self, plugin: str, gid: int | None) -> _Server:
        path = self.socket_path(plugin)
        if len(str(path).encode()) > MAX_SOCKET_PATH:
            raise HostApiError(500, "Socket path too long", f"{path} is longer than {MAX_SOCKET_PATH} bytes; use "
                               "a shorter --home", plugin)
        top = path.parent.parent
        top.mkdir(exist_ok=True)
        os.chmod(top, 0o711)  # noqa: S103 - traverse only: plugins reach their own dir below
        shutil.rmtree(path.parent, ignore_errors=True)
        path.parent.mkdir(mode=0o700)
        # Only the plugin's own group may enter (root hosts: every plugin has its own uid and gid); with
        # bubblewrap the other plugins do not even see the directory.
        if gid is not None:
            os.chown(path.parent, 0, gid)
            os.chmod(path.parent, 0o750)  # noqa: S103 - root and the plugin's own group
        # http.server (with email, http.client and ssl: ~3.5 MiB resident) only once a plugin with host-API
        # permissions starts: a supervisor none of whose plugins has any never loads it (issue 12).
        from host.hostapi.handler import Handler

        old = os.umask(0o177)
        try:
            server = _Server(str(path), Handler)
        finally:
            os.umask(old)
        if gid is not None:
            os.chown(path, 0, gid)
            os.chmod(path, 0o660)
        server.api, server.plugin = self, plugin
        threading.Thread(target=server.serve_forever, name=f"host-api-{plugin}", daemon=True).start()
        return server

    def handle(self, plugin: str, method: str, target: str, authorization: str, body: bytes
               ) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        """One call on ``plugin``'s socket: (status, JSON body, extra headers). Never raises."""
        # what the audit counts: method and the first two path segments ("PUT /v1/kv"), never a key
        op = f"{method} {'/'.join(target.split('?', 1)[0].split('/')[:3])}"[:40]
        headers: dict[str, str] = {}
        try:
            scheme, _, secret = authorization.partition(" ")
            instance = tokens.check(self.registry, plugin, secret.strip()) if scheme.lower() == "bearer" else None
            grant = self._grants.get((plugin, instance)) if instance is not None else None
            if grant is None:
                raise HostApiError(401, "Unauthorized", f"no live host API token of plugin {plugin!r} "
                                   "(send PLUGIN_HOST_API_TOKEN as 'Authorization: Bearer ...')", plugin)
            wait = self.limit.take(plugin)
            if wait:
                headers["Retry-After"] = str(max(1, round(wait)))
                raise HostApiError(429, "Too many host API calls",
                                   f"plugin {plugin!r} may make {self.limit.rate:g} calls a second "
                                   f"(bursts of {self.limit.burst})", plugin)
            _, (status, reply) = dispatch(self.registry, grant, Call.parse(method, target, body))
        except HostApiError as exc:
            status, reply = exc.status, exc.problem()
            detail = {"permission": exc.extra["permission"]} if "permission" in exc.extra else {}
            self.audit.call(plugin, op, status, **detail)
            return status, reply, headers
        except Exception:
            log.exception("%s: host API call %s failed", plugin, op)
            status, reply = 500, {"type": "about:blank", "title": "Host API error", "status": 500,
                                  "detail": "the host could not complete the call"}
        self.audit.call(plugin, op, status)
        return status, reply, headers


class _Server(socketserver.ThreadingUnixStreamServer):
    request_queue_size = 64
    daemon_threads = True
    api: HostApi
    plugin: str

    def __init__(self, path: str, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(path, handler)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

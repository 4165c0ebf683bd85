"""The admin socket (run/admin.sock, root:<web gid> 0660): every op the admin web tier may ask for, each
authenticated here, in the supervisor, by the credential it carries.

A request is ``{"op": ..., "credential": "phk_..." | <session id>, ...args}``. The credential is an API token
(``phk_`` prefix) or an admin UI session id (Registry.create_session); a change asked with a session must also
carry that session's ``csrf`` token. The answer is the op's JSON, or ``{"problem": {...}}`` (RFC 9457 members:
status, title, detail) that the admin app answers as it is. So the web tier, which any client talks to, holds
no admin power of its own: without a valid token it can read and change nothing.

Ops and the scope they need (``read`` tokens may only read):

- no credential: ``login`` (a token → a session; failures rate-limited per client and audited);
- read: ``whoami``, ``logout``, ``plugins``, ``plugin``, ``settings``, ``logs``, ``access``, ``audit``, ``metrics``
  (without a credential too when HOST_METRICS_PUBLIC=true);
- admin: ``enable``, ``disable``, ``restart``, ``uninstall``, ``put_settings``, ``install``, ``preview`` (what an
  upload asks for, for the UI's consent page).

Changes go through host.operations, audited as ``token:<name>``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host import origins
from host.errors import AdminError, HostError, PluginNotFound, SettingsError, SupervisorUnavailable, UsageError
from host.registry import PluginRecord, TokenRecord
from host.supervisor import metrics as supervisor_metrics
from host.webuser import WebUser
from manifests import ManifestError
from manifests.setting_rules import values_schema

if TYPE_CHECKING:
    from host.supervisor.core import Supervisor

log = logging.getLogger(__name__)
READ_OPS = frozenset({"whoami", "logout", "plugins", "plugin", "settings", "logs", "access", "audit", "metrics"})
ADMIN_OPS = frozenset({"enable", "disable", "restart", "uninstall", "put_settings", "install", "preview"})
SESSION_TTL = 8 * 3600.0
LOGIN_FAILURES = 5  # per client address and minute; the next attempt gets 429
MAX_LINES = 1000  # logs and audit: the most lines one request returns
# What one answer may carry (host.control caps a reply at 1 MiB); JSON escaping can make a log line 6x longer.
REPLY_BUDGET = 768 * 1024
TAIL_BYTES = 128 * 1024
TOKEN_PREFIX = "phk_"


def prepare_uploads(layout: Any, user: WebUser | None) -> None:
    """run/uploads: the web tier (group) may create files there, not replace another's (sticky), nobody else
    may enter. Emptied at start: an upload is consumed by the request that made it."""
    path: Path = layout.uploads
    path.mkdir(exist_ok=True)
    for entry in path.iterdir():
        if entry.is_file() or entry.is_symlink():
            entry.unlink(missing_ok=True)
    if user is not None:
        os.chown(path, 0, user.gid)
    os.chmod(path, 0o1770 if user is not None else 0o700)


class AdminOps:
    """``handle(req) -> dict`` for the admin socket's ControlServer."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.settings = supervisor.settings
        self.registry = supervisor.registry
        self.layout = supervisor.layout
        self.ops: dict[str, Callable[[TokenRecord, dict[str, Any]], dict[str, Any]]] = {
            "whoami": self.whoami, "logout": self.logout, "plugins": self.plugins, "plugin": self.plugin,
            "settings": self.get_settings, "logs": self.logs, "access": self.access, "audit": self.audit,
            "enable": self.enable, "disable": self.disable, "restart": self.restart,
            "uninstall": self.uninstall, "put_settings": self.put_settings, "install": self.install,
            "preview": self.preview, "metrics": lambda token, req: supervisor_metrics.snapshot(self.sup),
        }

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._dispatch(req)
        except AdminError as exc:
            return {"problem": exc.problem()}
        except PluginNotFound as exc:
            return {"problem": AdminError(404, "Not Found", str(exc)).problem()}
        except SettingsError as exc:
            return {"problem": AdminError(422, "Invalid setting", str(exc), key=exc.key).problem()}
        except (UsageError, ManifestError) as exc:
            return {"problem": AdminError(422, "Unprocessable Content", str(exc)).problem()}
        except SupervisorUnavailable as exc:
            return {"problem": AdminError(409, "Conflict", str(exc)).problem()}
        except HostError as exc:
            # the operation was understood and attempted, and failed (a plugin that does not come up ...)
            return {"problem": AdminError(409, "Operation failed", str(exc)).problem()}
        except Exception:
            log.exception("admin op %r failed", req.get("op"))
            return {"problem": AdminError(500, "Internal Server Error", "the supervisor failed to do this; "
                                          "see the host's log").problem()}

    def _dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        op = str(req.get("op"))
        if op == "login":
            return self.login(req)
        if op == "metrics" and self.settings.metrics_public and not req.get("credential"):
            return supervisor_metrics.snapshot(self.sup)  # HOST_METRICS_PUBLIC: /metrics without a token
        fn = self.ops.get(op)
        if fn is None:
            raise AdminError(404, "Not Found", f"no admin op {op!r}")
        token, csrf = self.authenticate(req.get("credential"))
        if op in ADMIN_OPS:
            if token.scope != "admin":
                raise AdminError(403, "Forbidden", f"token {token.name!r} has scope {token.scope!r}; this change "
                                 "needs an 'admin' token")
            if csrf is not None and not hmac.compare_digest(str(req.get("csrf") or ""), csrf):
                raise AdminError(403, "Forbidden", "missing or wrong CSRF token; reload the page and try again")
        return fn(token, req)

    def authenticate(self, credential: object) -> tuple[TokenRecord, str | None]:
        """(the token, the session's CSRF token or None for a bearer token); 401 otherwise."""
        if not isinstance(credential, str) or not credential:
            raise AdminError(401, "Unauthorized", "send a token: Authorization: Bearer phk_... "
                             "(create one with `host token create NAME --scope admin|read`)")
        if credential.startswith(TOKEN_PREFIX):
            token = self.registry.check_token(credential)
            if token is None:
                raise AdminError(401, "Unauthorized", "unknown or revoked token")
            return token, None
        session = self.registry.check_session(credential)
        if session is None:
            raise AdminError(401, "Unauthorized", "the session has expired or ended; log in again")
        return session

    # -- sessions (the admin UI) ------------------------------------------------------------------------

    def login(self, req: dict[str, Any]) -> dict[str, Any]:
        client = str(req.get("client") or "unknown")[:64]
        if self.registry.login_failures(client) >= LOGIN_FAILURES:
            raise AdminError(429, "Too Many Requests", "too many failed logins from this address; wait a minute",
                             retry_after=60)
        secret = req.get("credential")
        token = self.registry.check_token(secret) if isinstance(secret, str) else None
        if token is None:
            self.registry.record_login_failure(client)
            self.registry.record(None, "login_failed", client=client)
            raise AdminError(401, "Unauthorized", "unknown or revoked token")
        sid, csrf = self.registry.create_session(token.name, SESSION_TTL)
        self.registry.record(None, "login", who=_who(token), client=client)
        return {"session": sid, "csrf": csrf, "token": token.name, "scope": token.scope, "ttl": SESSION_TTL}

    def logout(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        ended = self.registry.end_session(req.get("credential"))
        if ended:
            self.registry.record(None, "logout", who=_who(token))
        return {"ok": True, "ended": ended}

    def whoami(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        return {"token": token.name, "scope": token.scope}

    # -- reading ----------------------------------------------------------------------------------------

    def _live(self) -> dict[str, Any]:
        plugins: dict[str, Any] = self.sup.status()["plugins"]
        return plugins

    def _view(self, rec: PluginRecord, live: dict[str, Any] | None) -> dict[str, Any]:
        from host.risk import assess, grants
        from host.signing import signature_badge
        from manifests import parse_manifest

        st = live or {}
        try:
            manifest = parse_manifest(rec.manifest, f"registry:{rec.name}")
        except ManifestError:
            manifest = None
        last = st.get("last_exit") or {}
        sandbox = st.get("sandbox") or {}
        signature = signature_badge(self.registry.provenance(rec.name, rec.install_id))
        risk = assess(manifest, unsigned=signature["signed"] is False) if manifest is not None else None
        s = self.settings
        return {
            "name": rec.name,
            "version": rec.version,
            "description": manifest.description if manifest is not None else "",
            "enabled": rec.enabled,
            "state": (st.get("state") or "stopped") if rec.enabled else "disabled",
            "pid": st.get("pid"),
            "restarts": int(st.get("restarts") or 0),
            "failures": int(st.get("failures") or 0),
            "reason": st.get("reason"),
            "last_error": st.get("reason") or last.get("reason"),
            "permissions": [{"permission": g.permission, "value": g.value, "enforced_by": g.enforced_by}
                            for g in grants(manifest)] if manifest is not None else [],
            "risk": {"score": risk.score, "reasons": list(risk.reasons)} if risk is not None else None,
            "signature": signature,
            "sandbox": {"level": sandbox.get("level"), "backend": sandbox.get("backend"),
                        "missing": list(sandbox.get("missing") or [])} if sandbox else None,
            "urls": origins.public_urls(rec.name, s.bind, s.origin_domain, s.path_mode),
            "nav": [{"title": e.title, "path": e.path} for e in manifest.nav] if manifest is not None else [],
            "installed_at": rec.installed_at,
            "updated_at": rec.updated_at,
        }

    def view(self, rec: PluginRecord) -> dict[str, Any]:
        return self._view(rec, self._live().get(rec.name))

    def plugins(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        live = self._live()
        return {"plugins": [self._view(r, live.get(r.name)) for r in self.registry.all()]}

    def plugin(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        rec = self.registry.require(_name(req))
        return {"plugin": self._view(rec, self._live().get(rec.name))}

    def get_settings(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        from host import configure

        name = _name(req)
        shown = configure.view(self.settings, self.registry, name)
        schema = configure.manifest_of(self.registry, name).settings
        return {"plugin": name, "settings": shown["settings"], "schema": values_schema(schema)}

    def logs(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        from host.supervisor.logs import CURRENT, PREVIOUS

        name = _name(req)
        self.registry.require(name)
        which = PREVIOUS if req.get("previous") else CURRENT
        return {"plugin": name, "lines": _tail(self.layout.logs(name) / which, _count(req))}

    def access(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        from host.access_log import format_entry, read_access

        name = _name(req)
        self.registry.require(name)
        entries = read_access(self.layout, name, _count(req))
        lines = [format_entry(e) for e in entries]
        # oldest first: keep the newest that fit (each entry is there twice, as a line and as fields)
        skip = len(entries) - _fit(list(reversed(entries)), REPLY_BUDGET // 2)
        return {"plugin": name, "lines": lines[skip:], "entries": entries[skip:],
                **({"truncated": True} if skip else {})}

    def audit(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        plugin = req.get("plugin") or None
        events = self.registry.events(str(plugin) if plugin else None, limit=_count(req, 100))
        rows = [{"id": e.id, "ts": e.ts, "plugin": e.plugin, "kind": e.kind, "who": e.who, "detail": e.detail}
                for e in events]
        kept = _fit(rows, REPLY_BUDGET)  # newest first
        return {"events": rows[:kept], **({"truncated": True} if kept < len(rows) else {})}

    # -- changes ----------------------------------------------------------------------------------------

    def enable(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        return self._set_enabled(token, _name(req), True)

    def disable(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        return self._set_enabled(token, _name(req), False)

    def _set_enabled(self, token: TokenRecord, name: str, enabled: bool) -> dict[str, Any]:
        from host import operations  # the installer's modules: loaded when the admin first changes something

        changed, _ = operations.set_enabled(self.settings, self.registry, self.layout, name, enabled, _who(token))
        return {"changed": changed, "plugin": self._view(self.registry.require(name), self._live().get(name))}

    def restart(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        from host import operations

        name = _name(req)
        operations.restart(self.settings, self.registry, self.layout, name, _who(token))
        return {"plugin": self._view(self.registry.require(name), self._live().get(name))}

    def uninstall(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        from host import operations

        name = _name(req)
        kept = operations.uninstall(self.settings, self.registry, self.layout, name, _who(token), log.info,
                                    keep_data=bool(req.get("keep_data")))
        return {"uninstalled": name, "kept": kept}

    def put_settings(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        from host import operations

        name = _name(req)
        values = req.get("values")
        if not isinstance(values, dict):
            raise AdminError(422, "Unprocessable Content", "the body must be a JSON object of setting: value "
                             "(null unsets a setting)")
        self.registry.require(name)
        unset = [k for k, v in values.items() if v is None]
        changed = operations.change_settings(self.settings, self.registry, self.layout, name,
                                             {k: v for k, v in values.items() if v is not None}, unset,
                                             _who(token), log.info)
        return {**self.get_settings(token, req), "changed": changed}

    def install(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        from host.supervisor.admin_install import install_upload

        return install_upload(self, _who(token), req)

    def preview(self, token: TokenRecord, req: dict[str, Any]) -> dict[str, Any]:
        """What an upload asks for (the UI's consent page); the upload stays for the ``install`` that follows."""
        from host.supervisor.admin_preview import preview_upload

        return preview_upload(self, req)


def _who(token: TokenRecord) -> str:
    return f"token:{token.name}"


def _name(req: dict[str, Any]) -> str:
    name = req.get("name")
    if not isinstance(name, str) or not name:
        raise AdminError(422, "Unprocessable Content", "a plugin name is required")
    return name


def _count(req: dict[str, Any], default: int = 100) -> int:
    try:
        n = int(req.get("n") or default)
    except (TypeError, ValueError) as exc:
        raise AdminError(422, "Unprocessable Content", "n must be a whole number") from exc
    return max(1, min(n, MAX_LINES))


def _fit(items: list[Any], budget: int) -> int:
    """How many of ``items``, from the first, fit in ``budget`` bytes of JSON."""
    size = 0
    for i, item in enumerate(items):
        size += len(json.dumps(item, default=str)) + 2
        if size > budget:
            return i
    return len(items)


def _tail(path: Path, n: int, max_bytes: int = TAIL_BYTES) -> list[str]:
    """The last ``n`` lines of ``path`` (reading at most its last ``max_bytes``); [] when it does not exist.
    Opened without following a symlink: these files sit in directories the plugin or web user can write."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise AdminError(409, "Conflict", f"cannot read {path.name}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        size = os.fstat(fd).st_size
        fh.seek(max(0, size - max_bytes))
        data = fh.read(max_bytes)
    return [line.decode(errors="replace") for line in data.splitlines()[-n:]]

"""The admin API, /admin/api/v1/: one route table (:data:`ROUTES`) from which both the Flask routes and the
OpenAPI 3.1 document (host.admin.openapi) are made, so the two cannot drift apart.

Every route takes ``Authorization: Bearer phk_...`` (never a cookie: no CSRF on the API) and hands the request
to the supervisor's admin socket, which authenticates it, checks the scope and acts; errors are RFC 9457
problems. Inputs are checked here first (names, counts, JSON bodies) so nonsense never reaches the supervisor.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request

from host.admin.client import AdminClient
from host.errors import AdminError

PREFIX = "/admin/api/v1"
NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")  # manifests' plugin name pattern
MAX_LINES = 1000
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
# Writing an upload and installing it (building a venv with pip) takes a while.
INSTALL_TIMEOUT = 900.0


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path" | "query"
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Route:
    """One API operation: ``method`` ``path`` (OpenAPI template syntax) → admin op ``op`` needing ``scope``."""

    method: str
    path: str
    op: str
    summary: str
    scope: str  # "read" | "admin"
    response: str  # a component schema name
    params: tuple[Param, ...] = ()
    body: dict[str, Any] | None = None  # content type -> schema
    status: int = 200
    errors: tuple[int, ...] = field(default=(401, 403, 404, 422))


NAME_PARAM = Param("name", "path", {"type": "string", "pattern": NAME.pattern}, "The plugin's name.", required=True)
N_PARAM = Param("n", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LINES, "default": 100},
                "How many (the newest) to return.")
SETTINGS_BODY = {"application/json": {"type": "object", "additionalProperties": True,
                                      "description": "setting: value; null unsets a setting (its default applies "
                                                     "again). Settings not named are left as they are."}}
GRANT_DOC = ("The permissions the operator grants, as JSON in the shape of the manifest's [permissions] table "
             "(e.g. {\"network\": {\"egress\": [\"api.example.com:443\"]}}); {} grants none. An archive whose "
             "manifest asks for more is refused (409) with the difference.")
INSTALL_BODY = {
    "multipart/form-data": {
        "type": "object", "required": ["archive", "grant"],
        "properties": {"archive": {"type": "string", "format": "binary",
                                   "description": "The plugin as .zip, .tar.gz, .tgz or .tar."},
                       "grant": {"type": "string", "description": GRANT_DOC},
                       "enable": {"type": "string", "enum": ["true", "false"], "default": "true"}},
    },
    "application/octet-stream": {"type": "string", "format": "binary",
                                 "description": "The archive itself; pass grant (and filename) as query parameters."},
}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/plugins", "plugins", "List installed plugins", "read", "PluginList"),
    Route("POST", "/plugins", "install", "Install (or upgrade) a plugin from an uploaded archive", "admin",
          "InstallResult", body=INSTALL_BODY, status=201, errors=(401, 403, 409, 413, 415, 422),
          params=(Param("grant", "query", {"type": "string"}, GRANT_DOC + " (raw-body uploads only)"),
                  Param("filename", "query", {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,100}$"},
                        "The archive's file name, for its type (raw-body uploads only)."))),
    Route("GET", "/plugins/{name}", "plugin", "One plugin", "read", "PluginEnvelope", (NAME_PARAM,)),
    Route("DELETE", "/plugins/{name}", "uninstall", "Stop and remove a plugin (its data too unless keep_data)",
          "admin", "Uninstalled", (NAME_PARAM, Param("keep_data", "query", {"type": "boolean", "default": False},
                                                     "Keep its data directory (and uid)."))),
    Route("POST", "/plugins/{name}/enable", "enable", "Enable (and start) a plugin; clears quarantine", "admin",
          "PluginEnvelope", (NAME_PARAM,)),
    Route("POST", "/plugins/{name}/disable", "disable", "Disable a plugin: 404 at once, stopped on return",
          "admin", "PluginEnvelope", (NAME_PARAM,)),
    Route("POST", "/plugins/{name}/restart", "restart", "Restart a plugin with no downtime", "admin",
          "PluginEnvelope", (NAME_PARAM,), errors=(401, 403, 404, 409, 422)),
    Route("GET", "/plugins/{name}/settings", "settings", "A plugin's settings (secrets write-only)", "read",
          "Settings", (NAME_PARAM,)),
    Route("PUT", "/plugins/{name}/settings", "put_settings", "Change a plugin's settings; restarts it if it runs",
          "admin", "Settings", (NAME_PARAM,), body=SETTINGS_BODY, errors=(401, 403, 404, 409, 422)),
    Route("GET", "/plugins/{name}/logs", "logs", "The newest lines of a plugin's output", "read", "Lines",
          (NAME_PARAM, N_PARAM, Param("previous", "query", {"type": "boolean", "default": False},
                                      "The previous instance's output."))),
    Route("GET", "/plugins/{name}/access", "access", "The newest lines of a plugin's access log", "read", "Lines",
          (NAME_PARAM, N_PARAM)),
    Route("GET", "/audit", "audit", "The audit log, newest first", "read", "Audit",
          (N_PARAM, Param("plugin", "query", {"type": "string", "pattern": NAME.pattern},
                          "Only this plugin's events.")), errors=(401, 422)),
)


def credential() -> str | None:
    """The bearer token of the request (None without one; the supervisor answers 401)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _bad(detail: str) -> AdminError:
    return AdminError(422, "Unprocessable Content", detail)


def _query(route: Route) -> dict[str, Any]:
    """The route's query parameters, checked against their schema (422 on a bad one)."""
    args: dict[str, Any] = {}
    for p in route.params:
        if p.where != "query" or p.name not in request.args:
            continue
        raw = request.args[p.name]
        kind = p.schema["type"]
        if kind == "integer":
            if not re.fullmatch(r"[0-9]{1,7}", raw) or not p.schema["minimum"] <= int(raw) <= p.schema["maximum"]:
                raise _bad(f"{p.name} must be a whole number from {p.schema['minimum']} to {p.schema['maximum']}")
            args[p.name] = int(raw)
        elif kind == "boolean":
            if raw not in ("true", "false"):
                raise _bad(f"{p.name} must be true or false")
            args[p.name] = raw == "true"
        else:
            if "pattern" in p.schema and not re.fullmatch(p.schema["pattern"], raw):
                raise _bad(f"{p.name} must match {p.schema['pattern']}")
            args[p.name] = raw
    return args


def _json_body() -> Any:
    if not request.is_json:
        raise _bad("send a JSON body (Content-Type: application/json)")
    try:
        return json.loads(request.get_data(cache=False) or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"the body is not JSON: {exc}") from None


def _grant(text: str | None) -> dict[str, Any]:
    if text is None:
        raise _bad("say which permissions you grant: grant={...} (JSON of the manifest's [permissions]; {} = none)")
    try:
        grant = json.loads(text)
    except ValueError as exc:
        raise _bad(f"grant is not JSON: {exc}") from None
    if not isinstance(grant, dict):
        raise _bad("grant must be a JSON object (the manifest's [permissions] table)")
    return grant


class Uploads:
    """Writes an upload into run/uploads, where the supervisor picks it up (host.supervisor.admin_install)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, filename: str, stream: Any) -> str:
        name = os.path.basename(filename or "")
        suffix = next((s for s in ARCHIVE_SUFFIXES if name.lower().endswith(s)), None)
        if suffix is None:
            raise _bad(f"the archive must be one of {', '.join(ARCHIVE_SUFFIXES)} (by its file name)")
        upload = f"{secrets.token_hex(16)}{suffix}"
        fd = os.open(self.directory / upload, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o640)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(1 << 16):
                    out.write(chunk)
        except BaseException:
            (self.directory / upload).unlink(missing_ok=True)
            raise
        return upload


def register(app: Flask, backend: AdminClient) -> None:
    """Add the API's routes (and its OpenAPI document) to the admin app."""
    from host.admin import openapi

    bp = Blueprint("admin_api", __name__, url_prefix=PREFIX)
    uploads = Uploads(backend.layout.uploads)

    def view_for(route: Route) -> Callable[..., Response]:
        def view(**path: str) -> Response:
            name = path.get("name")
            if name is not None and not NAME.fullmatch(name):
                raise AdminError(404, "Not Found", f"{name[:40]!r} is not a plugin name")
            args: dict[str, Any] = {**path, **_query(route)}
            timeout = 60.0
            if route.op == "put_settings":
                body = _json_body()
                if not isinstance(body, dict):
                    raise _bad("the body must be a JSON object of setting: value (null unsets)")
                args["values"] = body
            elif route.op == "install":
                # Who asks, before a byte of the upload is written: no token, no disk use.
                if backend.call("whoami", credential())["scope"] != "admin":
                    raise AdminError(403, "Forbidden", "installing needs an 'admin' token")
                args.update(_install_args(uploads))
                timeout = INSTALL_TIMEOUT
            try:
                reply = backend.call(route.op, credential(), timeout=timeout, **args)
            finally:
                if "upload" in args:  # the supervisor copied it before answering (or never got it)
                    (uploads.directory / args["upload"]).unlink(missing_ok=True)
            resp = jsonify(reply)
            resp.status_code = route.status
            return resp

        view.__name__ = f"{route.op}_{route.method.lower()}"
        return view

    for route in ROUTES:
        rule = re.sub(r"\{(\w+)\}", r"<\1>", route.path)
        bp.add_url_rule(rule, endpoint=f"{route.op}", view_func=view_for(route), methods=[route.method])

    @bp.get("/openapi.json")
    def openapi_json() -> Response:
        return jsonify(openapi.document(ROUTES, PREFIX))

    app.register_blueprint(bp)


def _install_args(uploads: Uploads) -> dict[str, Any]:
    if request.mimetype == "multipart/form-data":
        archive = request.files.get("archive")
        if archive is None:
            raise _bad("the form needs an 'archive' file field")
        grant = _grant(request.form.get("grant"))
        enable = request.form.get("enable", "true")
        if enable not in ("true", "false"):
            raise _bad("enable must be true or false")
        upload = uploads.save(archive.filename or "", archive.stream)
        return {"upload": upload, "grant": grant, "enable": enable == "true"}
    if request.mimetype == "application/octet-stream":
        grant = _grant(request.args.get("grant"))
        upload = uploads.save(request.args.get("filename") or "upload.tar.gz", request.stream)
        return {"upload": upload, "grant": grant, "enable": True}
    raise AdminError(415, "Unsupported Media Type", "upload the archive as multipart/form-data (fields archive, "
                     "grant) or as application/octet-stream with ?grant=")

"""The admin API's OpenAPI 3.1 document, made from the route table (host.admin.api.ROUTES) and the schemas
below: what the code registers is what the document says (tests/unit/test_admin_api.py checks both ways)."""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from host.admin.api import Route

STATUS_TEXT = {401: "No token, or an unknown or revoked one", 403: "The token's scope is too small",
               404: "No such plugin", 409: "The operation failed or conflicts with the plugin's state",
               413: "The upload is larger than HOST_ADMIN_MAX_UPLOAD", 415: "Unsupported upload type",
               422: "Invalid input (a parameter, the body, a setting's value, the archive or its manifest)"}


def _nullable(kind: str, **more: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **more}


SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object", "description": "RFC 9457 problem details.", "required": ["title", "status"],
        "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                       "detail": {"type": "string"}},
    },
    "Plugin": {
        "type": "object",
        "required": ["name", "version", "enabled", "state", "pid", "restarts", "last_error", "permissions", "risk",
                     "sandbox", "urls"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "description": {"type": "string"},
            "enabled": {"type": "boolean"},
            "state": {"type": "string", "description": "disabled, stopped, starting, running, degraded, backoff, "
                                                       "quarantined, ..."},
            "pid": _nullable("integer"),
            "restarts": {"type": "integer"},
            "failures": {"type": "integer", "description": "Failures in the window that counts toward quarantine."},
            "reason": _nullable("string", description="Why it is not simply running."),
            "last_error": _nullable("string"),
            "permissions": {"type": "array", "items": {
                "type": "object", "required": ["permission", "value", "enforced_by"],
                "properties": {"permission": {"type": "string"}, "value": {"type": "string"},
                               "enforced_by": {"type": "string", "description": "The layer enforcing it."}}}},
            "risk": {"type": ["object", "null"], "properties": {
                "score": {"type": "integer", "minimum": 0, "maximum": 8},
                "reasons": {"type": "array", "items": {"type": "string"}}}},
            "signature": {"type": "object", "description": "Who signed the installed bundle (host.signing); "
                          "signed is null for an install made before signatures were recorded.", "properties": {
                "signed": _nullable("boolean"), "key_id": _nullable("string"),
                "badge": {"type": "string", "description": "The key id, 'unsigned' or '-'."}}},
            "sandbox": {"type": ["object", "null"], "properties": {
                "level": _nullable("string"), "backend": _nullable("string"),
                "missing": {"type": "array", "items": {"type": "string"}}}},
            "urls": {"type": "array", "items": {"type": "string"}},
            "nav": {"type": "array", "description": "Menu entries the plugin declares (manifest [[nav]]).",
                    "items": {"type": "object", "required": ["title", "path"],
                              "properties": {"title": {"type": "string"}, "path": {"type": "string"}}}},
            "installed_at": {"type": "number"},
            "updated_at": {"type": "number"},
        },
    },
    "PluginList": {"type": "object", "required": ["plugins"],
                   "properties": {"plugins": {"type": "array", "items": {"$ref": "#/components/schemas/Plugin"}}}},
    "PluginEnvelope": {"type": "object", "required": ["plugin"],
                       "properties": {"plugin": {"$ref": "#/components/schemas/Plugin"},
                                      "changed": {"type": "boolean"}}},
    "Uninstalled": {"type": "object", "required": ["uninstalled", "kept"],
                    "properties": {"uninstalled": {"type": "string"},
                                   "kept": {"type": "array", "items": {"type": "string"}}}},
    "Settings": {
        "type": "object", "required": ["plugin", "settings", "schema"],
        "properties": {
            "plugin": {"type": "string"},
            "settings": {"type": "array", "items": {
                "type": "object", "required": ["key", "type", "secret", "required", "set", "value"],
                "properties": {"key": {"type": "string"}, "env": {"type": "string"}, "type": {"type": "string"},
                               "secret": {"type": "boolean"}, "required": {"type": "boolean"},
                               "set": {"type": "boolean"}, "default": {},
                               "choices": {"type": ["array", "null"]}, "description": _nullable("string"),
                               "value": {"description": "The value; a secret's is \"••••\" when set, else null."}}}},
            "schema": {"type": "object", "description": "JSON Schema of the plugin's settings."},
            "changed": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Lines": {"type": "object", "required": ["plugin", "lines"],
              "properties": {"plugin": {"type": "string"}, "lines": {"type": "array", "items": {"type": "string"}},
                             "entries": {"type": "array", "items": {"type": "object"},
                                         "description": "Access log only: each request's fields."},
                             "truncated": {"type": "boolean", "description": "Fewer than asked for: the rest "
                                                                             "did not fit."}}},
    "Audit": {"type": "object", "required": ["events"], "properties": {
        "truncated": {"type": "boolean", "description": "Fewer events than asked for: the rest did not fit."},
        "events": {"type": "array", "items": {
        "type": "object", "required": ["id", "ts", "plugin", "kind", "who", "detail"],
        "properties": {"id": {"type": "integer"}, "ts": {"type": "number"}, "plugin": _nullable("string"),
                       "kind": {"type": "string"},
                       "who": _nullable("string", description="token:<name>, local:<user>, or null (the host)."),
                       "detail": {"type": "object"}}}}}},
    "InstallResult": {"type": "object", "required": ["plugin", "output"],
                      "properties": {"plugin": {"$ref": "#/components/schemas/Plugin"},
                                     "changed": {"type": "boolean"},
                                     "output": {"type": "array", "items": {"type": "string"}}}},
}


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.op,
        "summary": route.summary,
        "description": f"Needs a token with scope '{route.scope}'" + (" (or 'admin')." if route.scope == "read"
                                                                       else "."),
        "security": [{"bearer": []}],
        "responses": {
            str(route.status): {"description": "OK", "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{route.response}"}}}},
            **{str(code): {"$ref": f"#/components/responses/{code}"} for code in sorted(route.errors)},
        },
    }
    if route.params:
        op["parameters"] = [{"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                             "description": p.description, "schema": p.schema} for p in route.params]
    if route.body is not None:
        op["requestBody"] = {"required": True,
                             "content": {kind: {"schema": schema} for kind, schema in route.body.items()}}
    return op


def document(routes: Iterable[Route], prefix: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` served under ``prefix``."""
    try:
        version = importlib.metadata.version("plugin-host")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    codes = sorted({c for r in paths.values() for op in r.values() for c in map(int, op["responses"]) if c >= 400})
    return {
        "openapi": "3.1.0",
        "info": {"title": "Plugin Host admin API", "version": version,
                 "description": "Manage the plugins of one Plugin Host. Authenticate with "
                                "`Authorization: Bearer <token>` (`host token create NAME --scope admin|read`). "
                                "Errors are RFC 9457 problem details. Served only on the admin listener."},
        "servers": [{"url": prefix}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "phk_..."}},
            "schemas": SCHEMAS,
            "responses": {str(code): {"description": STATUS_TEXT[code], "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
                for code in codes},
        },
    }


def flask_paths(rules: Iterable[tuple[str, Iterable[str]]], prefix: str) -> set[tuple[str, str]]:
    """(method, OpenAPI path) for Flask URL rules under ``prefix`` (the document itself excluded)."""
    out = set()
    for rule, methods in rules:
        if not rule.startswith(prefix) or rule == f"{prefix}/openapi.json":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule[len(prefix):])
        out |= {(m, path) for m in methods if m not in ("HEAD", "OPTIONS")}
    return out

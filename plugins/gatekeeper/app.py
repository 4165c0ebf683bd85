"""Hooks example: a request.before filter. Requests to other plugins whose path (below the plugin's own
prefix) starts with one of BLOCK_PATHS are refused with 403; the rest get an X-Filter-Gatekeeper header."""

import os

from flask import Flask, jsonify
from plugin_sdk import hooks

app = Flask(__name__)
BLOCKED = tuple(p.strip() for p in os.environ.get("BLOCK_PATHS", "").split(",") if p.strip())
TAG = os.environ.get("TAG", "checked")


def below_plugin(call):
    """The path as the plugin sees it: without /plugins/<name> in path mode."""
    data = call["data"]
    prefix = f"/plugins/{data['plugin']}"
    path = data["path"]
    return path[len(prefix):] or "/" if path.startswith(prefix + "/") or path == prefix else path


@hooks.filter("rules")
def rules(call):
    path = below_plugin(call)
    for blocked in BLOCKED:
        if path == blocked or path.startswith(blocked.rstrip("/") + "/"):
            return hooks.reject(403, f"{blocked} is blocked by the gatekeeper")
    return hooks.allow(headers={"X-Filter-Gatekeeper": TAG})


@app.get("/")
def index():
    return jsonify({"blocked": BLOCKED, "tag": TAG})

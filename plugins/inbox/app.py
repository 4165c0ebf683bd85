"""Hooks example: a plain Flask app that subscribes to notes.note.created and shows what it received.

The host delivers each event at least once; the SDK skips ids it already handled, and the handler is itself
idempotent (INSERT OR IGNORE by event id), so a crash between the two still records each event once.
"""

import json
import os
import sqlite3
from pathlib import Path

from flask import Flask, jsonify, render_template_string, request
from plugin_sdk import hooks

app = Flask(__name__)
DB = Path(os.environ.get("PLUGIN_DATA_DIR", ".")) / "inbox.db"


def db():
    conn = sqlite3.connect(DB, timeout=10)
    conn.execute("CREATE TABLE IF NOT EXISTS seen (n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, "
                 "type TEXT, source TEXT, time TEXT, data TEXT)")
    return conn


@hooks.on("notes.note.created")
def note_created(event):
    if (event.get("data") or {}).get("fail"):
        raise RuntimeError("asked to fail (the host retries, then keeps it as a dead letter)")
    with db() as conn:
        conn.execute("INSERT OR IGNORE INTO seen (id, type, source, time, data) VALUES (?, ?, ?, ?, ?)",
                     (event["id"], event["type"], event["source"], event["time"], json.dumps(event.get("data"))))


def seen():
    with db() as conn:
        rows = conn.execute("SELECT id, type, source, time, data FROM seen ORDER BY n").fetchall()
    return [{"id": r[0], "type": r[1], "source": r[2], "time": r[3], "data": json.loads(r[4])} for r in rows]


@app.get("/events.json")
def events_json():
    return jsonify(seen())


@app.get("/headers.json")
def headers_json():
    """The request headers a request.before filter may have added (X-Filter-*)."""
    return jsonify({k: v for k, v in request.headers.items() if k.lower().startswith("x-filter-")})


PAGE = """<!doctype html><title>Inbox</title><h1>Events seen</h1>
<p>{{ events|length }} event(s) of type notes.note.created.</p>
<ul>{% for e in events %}<li><code>{{ e.id }}</code> {{ e.time }} from {{ e.source }}: {{ e.data }}</li>{% endfor %}</ul>"""


@app.get("/")
def index():
    return render_template_string(PAGE, events=seen())

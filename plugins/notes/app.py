"""A small notes app, written as an ordinary Flask app. The one thing it knows of the host: it announces each new
note as the event ``notes.note.created`` through the plugin SDK's host API, when the host gives it one."""

import json
import os
import time
from pathlib import Path

import humanize
from flask import Flask, redirect, render_template, request, url_for

app = Flask(__name__)
DATA = Path(os.environ.get("PLUGIN_DATA_DIR", ".")) / "notes.json"


def load():
    try:
        return json.loads(DATA.read_text())
    except (FileNotFoundError, ValueError):
        return []


@app.get("/")
def index():
    notes = [dict(n, ago=humanize.naturaltime(time.time() - n["ts"])) for n in load()]
    return render_template("index.html", notes=notes)


@app.post("/notes")
def add():
    text = request.form.get("text", "").strip()
    if text:
        notes = load()
        notes.append({"text": text[:1000], "ts": time.time()})
        tmp = DATA.with_suffix(".tmp")
        tmp.write_text(json.dumps(notes))
        tmp.replace(DATA)
        announce(notes[-1])
    return redirect(url_for("index"))


def announce(note):
    """Tell the host, and so every plugin subscribed to notes.note.created; the note is saved either way."""
    if not os.environ.get("PLUGIN_HOST_API"):
        return  # run outside the host, or without the grant
    try:
        from plugin_sdk.api import HostApi

        HostApi(timeout=2).emit("notes.note.created", {"text": note["text"], "ts": note["ts"]})
    except Exception:
        app.logger.warning("could not announce the note (notes.note.created)", exc_info=True)

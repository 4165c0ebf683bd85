"""A small notes app, written as an ordinary Flask app; it knows nothing about the host."""

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
    return redirect(url_for("index"))

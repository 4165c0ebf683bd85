"""A Flask-only plugin: what `./dev bench` installs for install times, cold starts and the 100-plugin host."""

import time

from flask import Flask, jsonify

app = Flask(__name__)
STARTED = time.time()


@app.get("/")
def index():
    return "tiny"


@app.get("/started")
def started():
    return jsonify(started=STARTED)

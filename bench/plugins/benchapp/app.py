"""The one app every contender of `./dev bench` serves: tiny and large responses, a body sink, server-sent
events paced by the client's acknowledgements, and a WebSocket echo."""

import threading
import time

from flask import Flask, Response, jsonify, request, stream_with_context
from flask_sock import Sock

app = Flask(__name__)
sock = Sock(app)
BLOCK = bytes(range(256)) * 256
STARTED = time.time()
acked = {}  # SSE stream id -> highest event acknowledged (one worker: the host's default)
changed = threading.Condition()


@app.get("/ping")
def ping():
    return "pong"


@app.get("/sleep/<float:s>")
def sleep(s):
    """A slow answer that costs no CPU: the overloaded plugin of the fairness test."""
    time.sleep(min(s, 5.0))
    return "slept"


@app.get("/started")
def started():
    return jsonify(started=STARTED)


@app.post("/sink")
def sink():
    n = 0
    while chunk := request.stream.read(1 << 16):
        n += len(chunk)
    return jsonify(length=n)


@app.get("/bytes/<int:n>")
def stream_bytes(n):
    def gen():
        left = n
        while left > 0:
            piece = BLOCK[: min(left, len(BLOCK))]
            left -= len(piece)
            yield piece
    return Response(gen(), mimetype="application/octet-stream", headers={"Content-Length": str(n)})


@app.get("/events/<stream>")
def events(stream):
    count = min(int(request.args.get("n", 5)), 100_000)
    wait = min(float(request.args.get("wait", 10)), 60.0)

    def generate():
        for n in range(1, count + 1):
            yield f"id: {n}\ndata: {n}\n\n"
            with changed:
                if not changed.wait_for(lambda: acked.get(stream, 0) >= n, timeout=wait):
                    yield "data: abandoned\n\n"
                    return
        yield "data: done\n\n"

    return Response(stream_with_context(generate()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@app.post("/ack/<stream>/<int:n>")
def ack(stream, n):
    with changed:
        acked[stream] = max(acked.get(stream, 0), n)
        changed.notify_all()
    return "ok"


@sock.route("/echo")
def echo(ws):
    while True:
        ws.send(ws.receive())

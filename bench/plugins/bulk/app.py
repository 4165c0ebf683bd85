import hashlib

from flask import Flask, Response, jsonify, request

app = Flask(__name__)
BLOCK = bytes(range(256)) * 256


@app.get("/ping")
def ping():
    return "pong"


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
    return Response(gen(), mimetype="application/octet-stream")

"""A minimal RFC 6455 client for the tests and the benchmark: the handshake over a plain socket, masked frames
out, frames in, the close handshake. Every read has a timeout; nothing loops without a bound."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from dataclasses import dataclass, field

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class Closed(Exception):
    """The connection ended (EOF) where a frame was expected."""


@dataclass
class Answer:
    """The server's answer to a handshake: status, headers (lower-case names) and, unless it was 101, its body."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    ws: WebSocket | None = None


@dataclass
class WebSocket:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)

    def send(self, payload: bytes | str, opcode: int | None = None) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        op = opcode if opcode is not None else (TEXT if isinstance(payload, str) else BINARY)
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x80 | op])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data)) if n < 4096 else _mask(data, mask)
        self.sock.sendall(head + mask + masked)

    def recv(self, timeout: float = 10) -> tuple[int, bytes]:
        """The next message (opcode, payload), continuation frames joined."""
        self.sock.settimeout(timeout)
        op, payload, fin = self._frame()
        while not fin:
            _, more, fin = self._frame()
            payload += more
        return op, payload

    def recv_text(self, timeout: float = 10) -> str:
        op, payload = self.recv(timeout)
        assert op == TEXT, (op, payload[:100])
        return payload.decode()

    def close(self, code: int = 1000, timeout: float = 10) -> bool:
        """Send a close frame, read up to the server's (flask-sock may lose its reply to a client's close: it
        can close the socket before its reader thread sent it) and return whether the connection then ended
        within ``timeout``."""
        try:
            self.send(struct.pack("!H", code), CLOSE)
            while self.recv(timeout)[0] != CLOSE:
                pass
        except Closed:
            return True
        finally:
            ended = self.wait_eof(timeout) if self.sock.fileno() >= 0 else True
            self.sock.close()
        return ended

    def wait_eof(self, timeout: float) -> bool:
        """Whether the server ends the connection within ``timeout`` (bytes still arriving are discarded); our
        socket is closed once it did."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        self.sock.close()
        return True

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.sock.close()
                raise Closed(f"EOF after {len(self.buf)} of {n} bytes")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _frame(self) -> tuple[int, bytes, bool]:
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        mask = self._read(4) if b1 & 0x80 else b""
        data = self._read(n)
        if mask:
            data = _mask(data, mask)
        return b0 & 0x0F, data, bool(b0 & 0x80)


def _mask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


def connect(address: str | tuple[str, int], path: str, headers: dict[str, str] | None = None,
            host: str | None = None, timeout: float = 10) -> Answer:
    """Open a WebSocket at ``path`` on ``address`` (a Unix socket path, or (host, port)). Any answer but 101 is
    read whole (Content-Length) and returned with ``ws`` None."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
        host = host or "plugin"
    else:
        sock = socket.create_connection(address, timeout=timeout)
        host = host or f"{address[0]}:{address[1]}"
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: Upgrade", "Upgrade: websocket",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise Closed(f"EOF before the answer's head ended: {buf!r}")
        buf += chunk
        assert len(buf) < 65536, "answer head too long"
    head, rest = buf.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    answer_headers: dict[str, str] = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        answer_headers[k.strip().lower()] = v.strip()
    if status != 101:
        ws = WebSocket(sock, bytearray(rest))
        body = ws._read(int(answer_headers.get("content-length", "0")))
        sock.close()
        return Answer(status, answer_headers, body)
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()  # RFC 6455 4.2.2
    assert answer_headers.get("sec-websocket-accept") == accept, answer_headers
    return Answer(status, answer_headers, ws=WebSocket(sock, bytearray(rest)))

"""The health probe has one deadline for the whole exchange, and gives way to a command (real Unix sockets)."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from host.supervisor.health import INTERRUPTED, probe

Serve = Callable[[socket.socket], None]


@pytest.fixture
def server() -> Iterator[Callable[[Serve], Path]]:
    """Start a one-connection-at-a-time Unix socket server running ``serve`` on each connection."""
    d = Path(tempfile.mkdtemp(prefix="ph-probe-", dir="/tmp"))
    stop = threading.Event()
    socks: list[socket.socket] = []

    def start(serve: Serve) -> Path:
        path = d / "s.sock"
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(str(path))
        lsock.listen(8)
        lsock.settimeout(0.1)
        socks.append(lsock)

        def loop() -> None:
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    conn, _ = lsock.accept()
                except (TimeoutError, OSError):
                    continue
                with conn:
                    conn.recv(4096)
                    try:
                        serve(conn)
                    except OSError:
                        pass

        threading.Thread(target=loop, daemon=True).start()
        return path

    try:
        yield start
    finally:
        stop.set()
        for s in socks:
            s.close()
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


def trickle(conn: socket.socket) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"." * 100:
        if conn.send(bytes([byte])) != 1:
            return
        time.sleep(0.1)


def test_a_trickling_answer_fails_at_the_deadline(server: Callable[[Serve], Path]) -> None:
    path = server(trickle)
    t0 = time.monotonic()
    assert probe(path, "/", 0.5) == "no answer within 0.5s"
    assert time.monotonic() - t0 < 3  # the trickle would go on for 10 s; slack for a loaded machine


def test_a_status_line_is_an_answer_and_anything_else_is_not(server: Callable[[Serve], Path]) -> None:
    assert probe(server(lambda c: c.sendall(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")), "/", 2) is None


def test_garbage_and_silence(server: Callable[[Serve], Path]) -> None:
    assert probe(server(lambda c: c.sendall(b"SSH-2.0-OpenSSH\r\n")), "/", 2) == "answered garbage"


def test_a_closed_connection_and_a_missing_socket(server: Callable[[Serve], Path], tmp_path: Path) -> None:
    assert probe(server(lambda c: None), "/", 2) == "connection closed without an answer"
    assert probe(tmp_path / "nope.sock", "/", 2) == "socket missing"


def test_a_command_interrupts_a_probe(server: Callable[[Serve], Path]) -> None:
    path = server(trickle)
    r, w = os.pipe()
    try:
        threading.Timer(0.2, os.write, (w, b"x")).start()
        t0 = time.monotonic()
        assert probe(path, "/", 5, wake_fd=r) == INTERRUPTED
        assert time.monotonic() - t0 < 3  # woken at 0.2 s, not at the 5 s deadline
    finally:
        os.close(r)
        os.close(w)

"""host.gunicorn_wire (gunicorn's HTTP/1 writer, sending a head with the first body piece; its cached Date) and
host.web_balance's shared connection counts."""

from __future__ import annotations

import email.utils
import runpy
import time
from types import SimpleNamespace

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from host import gunicorn_wire
from host.gunicorn_wire import SplicingResponse as CoalescingResponse
from host.runtime import GUNICORN_CONFIG, RUNTIME_DIR
from host.web_balance import Counts, free_slot


class Wire:
    """The client's socket as the writer sees it: what each sendall() put on the wire."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))

    def fileno(self) -> int:
        return -1

    @property
    def data(self) -> bytes:
        return b"".join(self.sends)


def response(method: str = "GET", version: str = "1.1") -> tuple[CoalescingResponse, Wire]:
    cfg = Config()
    req = next(iter(RequestParser(cfg, iter([f"{method} / HTTP/{version}\r\nHost: x\r\n\r\n".encode()]),
                                  ("127.0.0.1", 1))))
    wire = Wire()
    return CoalescingResponse(req, wire, cfg), wire


def test_the_head_leaves_with_the_first_piece_and_later_pieces_alone() -> None:
    resp, wire = response()
    resp.start_response("200 OK", [("Content-Length", "10"), ("X-A", "1")])
    resp.write(b"hello")
    assert len(wire.sends) == 1  # gunicorn alone: two sends, the head and then the piece
    assert wire.sends[0].startswith(b"HTTP/1.1 200 OK\r\n") and wire.sends[0].endswith(b"\r\nX-A: 1\r\n\r\nhello")
    resp.write(b"world")
    resp.close()
    assert wire.sends[1:] == [b"world"]


def test_chunked_framing_is_kept_when_the_head_rides_along() -> None:
    resp, wire = response()
    resp.start_response("200 OK", [("X-A", "1")])  # no length on HTTP/1.1: chunked
    resp.write(b"hello")
    resp.write(b"!")
    resp.close()
    head, _, body = wire.data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"
    assert len(wire.sends) == 3  # head+first chunk, second chunk, the last chunk


@pytest.mark.parametrize("length", [None, "0"])
def test_an_empty_first_piece_still_sends_the_head_at_once(length: str | None) -> None:
    # Streaming apps yield b"" to get their headers out before the first event: that must keep working.
    resp, wire = response()
    resp.start_response("200 OK", [("Content-Length", length)] if length else [])
    resp.write(b"")
    assert wire.data.startswith(b"HTTP/1.1 200 OK\r\n") and wire.data.endswith(b"\r\n\r\n")


def test_a_head_request_gets_the_head_and_no_body() -> None:
    resp, wire = response("HEAD")
    resp.start_response("200 OK", [("Content-Length", "5")])
    resp.write(b"hello")
    resp.close()
    assert wire.data.endswith(b"Content-Length: 5\r\n\r\n")


def test_a_response_that_writes_nothing_sends_its_head_on_close() -> None:
    resp, wire = response()
    resp.start_response("204 No Content", [])
    resp.close()
    assert wire.data.startswith(b"HTTP/1.1 204 No Content\r\n") and wire.data.endswith(b"\r\n\r\n")


def test_the_date_is_the_current_seconds_in_http_format() -> None:
    before = int(time.time())
    text = gunicorn_wire.http_date()
    parsed = email.utils.parsedate_to_datetime(text).timestamp()
    assert before <= parsed <= time.time() and text.endswith(" GMT")
    assert gunicorn_wire.http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


def test_every_plugins_gunicorn_gets_the_coalescing_writer_from_its_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # gunicorn runs the host's config file and calls its on_starting hook before serving: after that, the
    # writer gunicorn's workers build for each request (wsgi.create) sends a tiny answer in one piece.
    monkeypatch.setattr(wsgi, "Response", wsgi.Response)  # put back after the test
    monkeypatch.setattr(util, "http_date", util.http_date)
    runpy.run_path(str(RUNTIME_DIR / GUNICORN_CONFIG))["on_starting"](None)
    cfg = Config()
    req = next(iter(RequestParser(cfg, iter([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]), ("127.0.0.1", 1))))
    wire = Wire()
    resp, _ = wsgi.create(req, wire, ("127.0.0.1", 1), ("127.0.0.1", 2), cfg)
    resp.start_response("200 OK", [("Content-Length", "4")])
    resp.write(b"pong")
    resp.close()
    assert len(wire.sends) == 1 and wire.sends[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert wire.sends[0].endswith(b"\r\n\r\npong")


def test_the_balancer_pauses_only_a_worker_two_above_the_least_busy_live_one() -> None:
    counts = Counts(slots=4)
    counts.claim(0, 100)
    counts.claim(1, 101)
    assert not counts.over_share(0) and not counts.over_share(1)
    counts.add(0, 1)
    assert not counts.over_share(0)  # one above another is within its share
    counts.add(0, 1)
    assert counts.over_share(0) and not counts.over_share(1)  # the least busy one never pauses
    counts.free(1)  # that worker died: nobody left to hand connections to
    assert not counts.over_share(0)
    assert free_slot([SimpleNamespace(balance_slot=0), SimpleNamespace(balance_slot=2)], 4) == 1
    assert free_slot([SimpleNamespace(balance_slot=i) for i in range(4)], 4) == 0

"""host.upstream reading an answer that arrives in pieces as small as one byte (a plugin may trickle it): every
split of the head's blank line and of a chunk-size line is found, and what follows stays for the body."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from host import upstream
from host.upstream import UpstreamResponse


class Trickle(upstream._Connection):
    """A connection whose reads return ``size`` bytes at a time from ``data``."""

    def __init__(self, data: bytes, size: int) -> None:
        super().__init__("unused", 1.0)
        self.pieces: Iterator[bytes] = iter([data[i:i + size] for i in range(0, len(data), size)])

    def recv(self, size: int = upstream.CHUNK) -> bytes:
        return next(self.pieces, b"")


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("end", [b"\r\n", b"\n"])
def test_a_head_in_pieces_is_found_whatever_the_split(size: int, end: bytes) -> None:
    conn = Trickle(b"HTTP/1.1 200 OK" + end + b"X-A: b" + end + end + b"body", size)
    assert conn.read_head() == (1, 200, [(b"X-A", b"b")])
    assert conn.buf == b"body"[: len(conn.buf)]  # what came with the head's last piece is the body's


@pytest.mark.parametrize("size", [1, 2, 4])
def test_chunk_lines_in_pieces_are_found_whatever_the_split(size: int) -> None:
    conn = Trickle(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nT: t\r\n\r\n",
                   size)
    assert conn.read_head()[1] == 200
    resp = UpstreamResponse.__new__(UpstreamResponse)
    assert b"".join(resp._chunks(conn)) == b"abcde"
    assert conn.buf == b""

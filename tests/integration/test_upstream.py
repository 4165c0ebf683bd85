"""host.upstream against a scripted HTTP/1.1 server on a real Unix socket: the bytes the plugin receives are
exactly the client's, keep-alive connections are reused, an idle one the plugin closed costs no request, and an
informational answer never leaves the final one behind for the next (another client's) request."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from host.upstream import BadUpstream, SocketPool, SpliceBody, UpstreamRequest, UpstreamTimeout

Script = Callable[[socket.socket, int], None]  # serves one accepted connection (its number)


def read_request(conn: socket.socket) -> bytes:
    """One request's head (and a chunked body up to its last chunk, or a Content-Length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return data
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        while not rest.endswith(b"0\r\n\r\n"):
            rest += conn.recv(65536)
    elif b"content-length:" in head.lower():
        n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < n:
            rest += conn.recv(65536)
    return head + b"\r\n\r\n" + rest


@contextmanager
def server(script: Script) -> Iterator[tuple[str, list[bytes], list[int]]]:
    seen: list[bytes] = []
    accepted: list[int] = []
    with tempfile.TemporaryDirectory(prefix="ph-up-") as tmp:
        path = str(Path(tmp) / "s.sock")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(path)
        lsock.listen(8)
        lsock.settimeout(10)

        def run() -> None:
            n = 0
            while True:
                try:
                    conn, _ = lsock.accept()
                except OSError:
                    return
                n += 1
                accepted.append(n)
                conn.settimeout(10)
                threading.Thread(target=serve_one, args=(conn, n), daemon=True).start()

        def serve_one(conn: socket.socket, n: int) -> None:
            with conn:
                try:
                    script(conn, n)
                except OSError:
                    pass

        t = threading.Thread(target=run, daemon=True)
        t.start()
        try:
            yield path, seen, accepted
        finally:
            lsock.close()


Pools = Callable[[str], SocketPool]


@pytest.fixture
def pools() -> Iterator[Pools]:
    made: list[SocketPool] = []

    def make(path: str) -> SocketPool:
        made.append(SocketPool(path))
        return made[-1]

    yield make
    for pool in made:
        pool.close()  # its idle keep-alive connections


def get(pool: SocketPool, target: str = "/", headers: list[tuple[bytes, bytes]] | None = None,
        body: list[bytes] | None = None, method: str = "GET") -> tuple[int, bytes]:
    resp = pool.handle_request(UpstreamRequest(method, target, headers or [], iter(body) if body else None, 10.0))
    try:
        return resp.status_code, b"".join(resp.iter_raw())
    finally:
        resp.close()


def test_the_plugin_receives_exactly_the_clients_request(pools: Pools) -> None:
    seen: list[bytes] = []

    def script(conn: socket.socket, n: int) -> None:
        seen.append(read_request(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with server(script) as (path, _, _):
        pool = pools(path)
        assert get(pool, "/caf\xe9?q=1", [(b"Host", b"h"), (b"X-Name", b"caf\xe9")], [b"ab", b"c"],
                   method="POST") == (200, b"ok")
    assert seen == [b"POST /caf%E9?q=1 HTTP/1.1\r\nHost: h\r\nX-Name: caf\xe9\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"]  # nothing of our own: no Accept-Encoding, no User-Agent


def test_keep_alive_is_reused_and_an_idle_connection_the_plugin_closed_costs_nothing(pools: Pools) -> None:
    def script(conn: socket.socket, n: int) -> None:
        for i in range(2 if n == 1 else 10):
            if not read_request(conn):
                return
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{n}.{i}".encode())
        # connection 1 is closed by the plugin after two answers (a keep-alive timeout)

    with server(script) as (path, _, accepted):
        pool = pools(path)
        assert get(pool) == (200, b"1.0")
        assert get(pool) == (200, b"1.1")
        threading.Event().wait(0.2)  # the plugin has closed connection 1 by now
        assert get(pool) == (200, b"2.0")  # not an error: the closed one was noticed and a new one opened
        assert get(pool) == (200, b"2.1")
        assert accepted == [1, 2]


def test_an_early_hint_never_leaves_the_real_answer_for_the_next_request(pools: Pools) -> None:
    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")

    with server(script) as (path, _, accepted):
        pool = pools(path)
        assert get(pool) == (200, b"first")
        assert get(pool) == (200, b"second")
        assert accepted == [1]


def test_a_close_delimited_answer_is_read_to_its_end_and_its_connection_not_reused(pools: Pools) -> None:
    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 200_000)

    with server(script) as (path, _, accepted):
        pool = pools(path)
        assert get(pool) == (200, b"x" * 200_000)
        assert get(pool) == (200, b"x" * 200_000)
        assert accepted == [1, 2]


def test_garbage_and_an_unasked_upgrade_are_bad_upstream(pools: Pools) -> None:
    answers = [b"NOT HTTP\r\n\r\n", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"]

    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(answers[n - 1])

    with server(script) as (path, _, _):
        pool = pools(path)
        for _ in answers:
            with pytest.raises(BadUpstream):
                get(pool)


def test_chunked_answers_with_extensions_and_trailers_and_a_head_sent_byte_by_byte(pools: Pools) -> None:
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Folded: a\r\n  b\r\n\r\n"
              b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n")

    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        for i in range(len(answer)):  # the worst case for a reader: one byte per segment
            conn.sendall(answer[i:i + 1])
        read_request(conn)
        conn.sendall(b"HTTP/1.1 204 No Content\n\n")  # bare LF line ends, as h11 allowed

    with server(script) as (path, _, accepted):
        pool = pools(path)
        resp = pool.handle_request(UpstreamRequest("GET", "/", [], None, 10.0))
        assert (resp.status_code, b"".join(resp.iter_raw())) == (200, b"abcde")
        assert resp.headers.get("x-folded") == "a b"  # a folded line joined with one space
        resp.close()
        assert get(pool) == (204, b"")
        assert accepted == [1]  # read to its end, trailers included: the connection was reused


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",  # which one? (smuggling)
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
    b"HTTP/2 200\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # then the plugin closes
])
def test_what_a_plugin_may_not_answer_is_bad_upstream(pools: Pools, answer: bytes) -> None:
    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(answer)

    with server(script) as (path, _, _), pytest.raises(BadUpstream):
        get(pools(path))


def test_an_http_1_0_answer_without_keep_alive_is_not_reused(pools: Pools) -> None:
    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with server(script) as (path, _, accepted):
        pool = pools(path)
        assert get(pool) == (200, b"ok")
        assert get(pool) == (200, b"ok")
        assert accepted == [1, 2]


def spliced(pool: SocketPool, out: socket.socket, timeout: float = 10.0) -> tuple[int, bytes, SpliceBody]:
    """GET / with splicing asked for: what came as bytes before the SpliceBody, which is moved into ``out``."""
    resp = pool.handle_request(UpstreamRequest("GET", "/", [], None, timeout))
    resp.splice = True
    pieces = resp.iter_raw()
    before = b""
    try:
        for piece in pieces:
            if isinstance(piece, SpliceBody):
                piece.move_to(out)
                with contextlib.suppress(StopIteration):
                    next(pieces)  # the writer comes back: the answer is complete
                return resp.status_code, before, piece
            before += piece
        raise AssertionError("no SpliceBody for a Content-Length answer of 1 MiB")
    finally:
        resp.close()


def client_pair() -> tuple[socket.socket, socket.socket]:
    """A TCP connection on 127.0.0.1, as the web tier has with its client: (server side, client side)."""
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        client = socket.create_connection(lsock.getsockname())
        conn, _ = lsock.accept()
    return conn, client


def test_a_spliced_body_arrives_whole_and_the_connection_serves_the_next_answer(pools: Pools) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB

    def script(conn: socket.socket, n: int) -> None:
        for _ in range(2):
            read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    with server(script) as (path, _, accepted):
        pool = pools(path)
        for _ in range(2):
            conn, client = client_pair()
            got = bytearray()
            reader = threading.Thread(target=lambda c=client, g=got: g.extend(recv_all(c, len(body))), daemon=True)
            reader.start()
            with client:
                with conn:
                    status, before, piece = spliced(pool, conn)
                reader.join(10)  # to the end of the connection, which closed above
            assert status == 200 and before + bytes(got) == body and piece.moved == piece.length > 0
        assert accepted == [1]  # the second answer came on the same, kept-alive connection


def recv_all(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        piece = sock.recv(1 << 20)
        if not piece:
            break
        data += piece
    return data


@pytest.mark.parametrize(("then", "error"), [
    ("close", "the plugin closed the connection before the end of its answer"),
    ("stall", "the plugin stopped sending its answer"),
])
def test_a_plugin_that_stops_midway_through_a_spliced_body_fails_it(pools: Pools, then: str, error: str) -> None:
    stop = threading.Event()

    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10)
        if then == "stall":
            stop.wait(10)

    with server(script) as (path, _, _):
        pool = pools(path)
        conn, client = client_pair()
        with conn, client, pytest.raises((BadUpstream, UpstreamTimeout), match=error):
            spliced(pool, conn, timeout=0.5)
        stop.set()

"""The proxy, end to end: real host, real sandboxed plugins, real sockets."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import h11
import httpx
import pytest

from tests.integration.harness import FIXTURES, ServedHost, served_plugins

MiB = 1024 * 1024


def test_index_welcomes_and_lists_plugins(served: ServedHost) -> None:
    r = served.get("/")
    assert r.status_code == 200
    assert "Welcome to the Plugin System!" in r.text
    for name in ("example", "notes", "echo"):
        assert f'href="/plugins/{name}/"' in r.text


def test_seed_style_plugin_serves_its_route(served: ServedHost) -> None:
    r = served.get("/plugins/example/example")
    assert r.status_code == 200
    assert r.text == "Hello from Example Plugin!"


def test_native_flask_app_templates_static_form_and_redirect(served: ServedHost) -> None:
    page = served.get("/plugins/notes/")
    assert page.status_code == 200
    assert 'href="/plugins/notes/static/style.css"' in page.text  # url_for sees SCRIPT_NAME
    assert 'action="/plugins/notes/notes"' in page.text
    css = served.get("/plugins/notes/static/style.css")
    assert css.status_code == 200 and "font-family" in css.text
    post = httpx.post(served.url + "/plugins/notes/notes", data={"text": "buy milk"}, timeout=10)
    assert post.status_code == 302
    assert post.headers["location"] == "/plugins/notes/"
    after = served.get("/plugins/notes/")
    # rendered with humanize (a PyPI dependency): "now", or "a second ago" on a loaded machine
    assert "buy milk" in after.text and ("now" in after.text or "second ago" in after.text)


def test_app_factory_in_a_package_with_blueprint_and_session(served: ServedHost) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as c:
        page = c.get("/plugins/shop/cart/")
        assert page.status_code == 200
        assert 'action="/plugins/shop/cart/add"' in page.text
        assert c.post("/plugins/shop/cart/add", data={"item": "tea"}).json() == {"items": ["tea"]}
        assert c.post("/plugins/shop/cart/add", data={"item": "cake"}).json() == {"items": ["tea", "cake"]}
        assert "2 items" in c.get("/plugins/shop/cart/").text  # the session cookie came back under the prefix
    r = httpx.post(served.url + "/plugins/shop/cart/add", data={"item": "x"}, timeout=10)
    assert "Path=/plugins/shop" in r.headers["set-cookie"]


def test_redirect_stays_under_prefix(served: ServedHost) -> None:
    r = served.get("/plugins/echo/go")
    assert r.status_code == 302
    assert r.headers["location"] == "/plugins/echo/target"
    assert served.get(r.headers["location"]).text == "arrived"


def test_8_mib_post_body_arrives_intact(served: ServedHost) -> None:
    body = os.urandom(8 * MiB)
    r = httpx.post(served.url + "/plugins/echo/echo", content=body, timeout=60)
    assert r.status_code == 200
    assert r.json() == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}


def test_chunked_upload_is_streamed(served: ServedHost) -> None:
    parts = [os.urandom(1 * MiB) for _ in range(5)]
    r = httpx.put(served.url + "/plugins/echo/echo", content=iter(parts), timeout=60)
    assert r.json()["length"] == 5 * MiB
    assert r.json()["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


def test_32_mib_streamed_response(served: ServedHost) -> None:
    h = hashlib.sha256()
    n = 0
    with httpx.stream("GET", served.url + f"/plugins/echo/bytes/{32 * MiB}", timeout=60) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            h.update(chunk)
            n += len(chunk)
    block = bytes(range(256)) * 256
    assert n == 32 * MiB
    assert h.hexdigest() == hashlib.sha256(block * 512).hexdigest()


def test_a_large_body_with_a_length_arrives_intact_and_heads_stay_bodiless(served: ServedHost) -> None:
    # The web tier splices such a body from the plugin's socket to the client's (host.gunicorn_wire): whole
    # and in order, the connection reusable afterwards, the same bytes by path and by origin.
    size = 3 * MiB + 7
    expected = hashlib.sha256((bytes(range(256)) * 256 * 49)[:size]).hexdigest()
    with httpx.Client(timeout=60) as client:
        for _ in range(2):  # the second one on the kept-alive connections of both hops
            r = client.get(served.url + f"/plugins/echo/sized/{size}")
            assert r.status_code == 200 and r.headers["content-length"] == str(size)
            assert hashlib.sha256(r.content).hexdigest() == expected
        r = client.head(served.url + f"/plugins/echo/sized/{size}")
        assert (r.status_code, r.headers["content-length"], r.content) == (200, str(size), b"")
        assert client.get(served.url + "/plugins/echo/sized/10").content == bytes(range(10))
    with served.origin_client("echo", timeout=60) as client:
        assert hashlib.sha256(client.get(f"/sized/{size}").content).hexdigest() == expected


def test_a_body_the_plugin_cuts_short_is_cut_short_for_the_client(served: ServedHost) -> None:
    # A million bytes announced, ten sent, then the plugin's side closes: the client must see a truncated
    # body (its connection closed early), never a complete-looking answer or a hang.
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"0123456789"
    with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|peer closed"):
        _plugin_answers(served, answer)
    assert served.get("/plugins/echo/sized/100000").content[:3] == bytes(range(3))  # and the host serves on


@pytest.mark.parametrize(("method", "code"), [("GET", 201), ("POST", 418), ("DELETE", 204), ("PATCH", 409),
                                              ("GET", 500)])
def test_status_codes_pass_through(served: ServedHost, method: str, code: int) -> None:
    r = httpx.request(method, served.url + f"/plugins/echo/status/{code}", timeout=10)
    assert r.status_code == code


def test_query_string_path_and_script_root(served: ServedHost) -> None:
    r = served.get("/plugins/echo/request?a=1&a=2&b=x%20y")
    info = r.json()
    assert info["args"] == {"a": ["1", "2"], "b": ["x y"]}
    assert info["script_root"] == "/plugins/echo"
    assert info["path"] == "/request"
    assert info["url"].startswith(served.url + "/plugins/echo/request")
    assert info["six"] == "1.16.0"


def test_forwarded_headers_are_set_by_the_host_not_the_client(served: ServedHost) -> None:
    r = served.get("/plugins/echo/request", headers={
        "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example", "X-Real-IP": "6.6.6.6",
        "Connection": "close, X-Secret-Hop", "X-Secret-Hop": "must-not-pass", "Keep-Alive": "timeout=5",
        "Cookie": "plugin_host_session=admin; theme=dark", "Authorization": "Bearer phk_admintoken",
    })
    info = r.json()
    headers = {k.lower(): v for k, v in info["headers"]}
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert info["remote_addr"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-prefix"] == "/plugins/echo"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{served.port}"
    assert "x-real-ip" not in headers
    assert "x-secret-hop" not in headers
    assert "keep-alive" not in headers
    assert "authorization" not in headers
    assert info["cookies"] == {"theme": "dark"}


SPOOFED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "6.6.6.6, 203.0.113.9",
           "X-Forwarded-Host": "www.example.org"}


def _seen(url: str, headers: dict[str, str], source: str = "127.0.0.1") -> dict[str, Any]:
    """What the echo plugin saw of a request sent from ``source`` (any 127/8 address reaches the host)."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10) as client:
        r = client.get(url + "/plugins/echo/request", headers=headers)
    assert r.status_code == 200, r.text
    info = dict(r.json())
    info["headers"] = {k.lower(): v for k, v in info["headers"]}
    return info


def test_cant_claim_https_from_loopback_by_default(served: ServedHost) -> None:
    # gunicorn's default forwarded_allow_ips trusts 127.0.0.1: any local process could say "https".
    for spoof in (SPOOFED, {"X-Forwarded-Ssl": "on"}, {"X-Forwarded-Protocol": "ssl"}):
        info = _seen(served.url, spoof)
        assert info["url"] == f"{served.url}/plugins/echo/request"
        assert info["headers"]["x-forwarded-proto"] == "http"
        assert info["remote_addr"] == "127.0.0.1"
        assert not {"x-forwarded-ssl", "x-forwarded-protocol"} & set(info["headers"])


@pytest.fixture(scope="module")
def behind_proxy() -> Iterator[ServedHost]:
    """A host whose operator put a front proxy on 127.0.0.1 (HOST_FORWARDED_ALLOW_IPS)."""
    with served_plugins(FIXTURES / "echo", wait=("echo",), env={"HOST_FORWARDED_ALLOW_IPS": "127.0.0.1"}) as host:
        yield host


def test_a_configured_front_proxy_tells_the_plugin_scheme_client_and_host(behind_proxy: ServedHost) -> None:
    info = _seen(behind_proxy.url, SPOOFED)
    assert info["url"] == "https://www.example.org/plugins/echo/request"
    assert info["remote_addr"] == "203.0.113.9"  # the last hop the proxy did not vouch for, not 6.6.6.6
    assert info["headers"]["x-forwarded-for"] == "203.0.113.9"
    assert info["headers"]["x-forwarded-proto"] == "https"


def test_cant_pass_for_the_front_proxy_from_another_address(behind_proxy: ServedHost) -> None:
    info = _seen(behind_proxy.url, SPOOFED, source="127.0.0.2")
    assert info["url"] == f"{behind_proxy.url}/plugins/echo/request"
    assert info["remote_addr"] == "127.0.0.2"
    assert info["headers"]["x-forwarded-proto"] == "http"


def test_cookies_are_scoped_to_the_plugin_and_repeated_headers_kept(served: ServedHost) -> None:
    r = served.get("/plugins/echo/cookies")
    cookies = r.headers.get_list("set-cookie")
    assert len(cookies) == 2
    assert any(c.startswith("a=1") and "Path=/plugins/echo" in c for c in cookies)
    b = next(c for c in cookies if c.startswith("b=2"))
    assert "Path=/plugins/echo/sub" in b
    assert "domain" not in b.lower()
    assert r.headers.get_list("x-multi") == ["one", "two"]


def test_cant_widen_a_cookie_with_attribute_spellings_browsers_accept(served: ServedHost) -> None:
    r = served.get("/plugins/echo/headers", params=[
        ("Set-Cookie", "a=1; Domain =evil.example; Path =/"),
        ("Set-Cookie", "b=2;  DOMAIN= evil.example; path=/plugins/echo/x; Path=/"),
        ("Set-Cookie", "__Host-c=3; Secure; Path=/"),
        ("Set-Cookie", "plugin_host_session=forged; Path=/"),
    ])
    assert r.status_code == 200
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/plugins/echo/", "b=2; Path=/plugins/echo/"]


def test_cant_instruct_a_front_proxy(served: ServedHost) -> None:
    # nginx would serve /etc/shadow (or an internal-only location) for X-Accel-Redirect; lighttpd and Apache
    # mod_xsendfile likewise for X-Sendfile.
    sent = [("X-Accel-Redirect", "/internal/admin"), ("X-Sendfile", "/etc/shadow"), ("X-Sendfile-Type", "X-Sendfile"),
            ("X-LIGHTTPD-send-file", "/etc/shadow"), ("X-Lighttpd-Send-File", "/etc/shadow"),
            ("X-Accel-Limit-Rate", "1"), ("X-Accel-Buffering", "no")]
    r = served.get("/plugins/echo/headers", params=sent)
    assert r.status_code == 200
    passed = {k for k, _ in r.headers.multi_items() if k.startswith(("x-accel", "x-sendfile", "x-lighttpd"))}
    assert passed == {"x-accel-buffering"}


def test_unknown_plugin_is_a_json_404(served: ServedHost) -> None:
    r = served.get("/plugins/nope/anything")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["title"] == "Unknown plugin"


def test_dot_dot_cannot_escape_the_prefix(served: ServedHost) -> None:
    # Sent raw, so no client normalises the path first.
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(b"GET /plugins/echo/%2e%2e/%2e%2e/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")


def _raw(port: int, request: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Send ``request`` as is, close our side, and read the whole answer: (status line, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        data = b""
        for _ in range(1000):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.decode().partition(":") for line in lines)}
    return status, headers, body


@pytest.mark.parametrize("body", [
    b"5\nhello\n0\n\n",  # bare LF ends the chunk lines
    b"zz\r\nhello\r\n0\r\n\r\n",  # not a hex size
    b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the chunk data
    b"5;a b\r\nhello\r\n0\r\n\r\n",  # a broken chunk extension
    b"5\r\nhel",  # the body ends mid-chunk
])
def test_broken_chunked_framing_is_a_400_problem(served: ServedHost, body: bytes) -> None:
    status, headers, answer = _raw(served.port, b"POST /plugins/echo/echo HTTP/1.1\r\nHost: x\r\n"
                                                b"Transfer-Encoding: chunked\r\n\r\n" + body)
    assert status.startswith(b"HTTP/1.1 400 ")
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(answer[: int(headers["content-length"])])
    assert problem["title"] == "Malformed request body"
    assert problem["status"] == 400


@pytest.mark.parametrize("request_head", [
    b"POST /plugins/echo/echo HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Length: 0\r\n\r\n",
    b"POST /plugins/echo/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /plugins/echo/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n",
    b"POST /plugins/echo/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n",
    b"GET /plugins/echo/request HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n X-Forwarded-For: 6.6.6.6\r\n\r\n",
])
def test_cant_smuggle_with_ambiguous_request_framing(served: ServedHost, request_head: bytes) -> None:
    # The web tier's gunicorn refuses these before our code runs; proven here so an upgrade cannot lose it.
    status, _, _ = _raw(served.port, request_head + b"0\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 ")


def test_a_clients_non_ascii_header_byte_reaches_the_plugin(served: ServedHost) -> None:
    status, _, body = _raw(served.port, b"GET /plugins/echo/request HTTP/1.1\r\nHost: x\r\n"
                                        b"X-Name: caf\xe9\r\nConnection: close\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200 "), body  # a 500 while httpx encoded header values as ASCII
    assert ["X-Name", "caf\xe9"] in json.loads(body)["headers"]


def _plugin_answers(served: ServedHost, response: bytes) -> httpx.Response:
    """The client's view of a plugin that wrote ``response`` byte for byte."""
    return served.get("/plugins/echo/raw/" + response.hex())


def _head(line: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n" + line + b"\r\n\r\nok"


@pytest.mark.parametrize("line", [
    b"X-A: a\rSet-Cookie: evil=1; Domain=example.org",  # a bare CR inside a value
    b"Set-Cookie : evil=1; Domain=example.org",  # space before the colon
    b"X(A): 1",  # not a token
    b"X-A: a\x00b",
])
def test_cant_split_or_disguise_a_response_header(served: ServedHost, line: bytes) -> None:
    r = _plugin_answers(served, _head(line))
    assert r.status_code == 502  # h11 refuses the plugin's response; nothing of it reaches the client
    assert r.json()["title"] == "Bad gateway"


def test_response_headers_are_filtered_however_they_are_framed(served: ServedHost) -> None:
    # A bare LF ends a header line for h11, so this is two headers, and the cookie is scoped like any other.
    r = _plugin_answers(served, _head(b"X-A: a\nSet-Cookie: evil=1; Domain=example.org; Path=/"))
    assert r.headers.get_list("set-cookie") == ["evil=1; Path=/plugins/echo/"]
    # Folded lines are joined into one value.
    r = _plugin_answers(served, _head(b"X-A: 1\r\n Set-Cookie: evil=1"))
    assert r.headers["x-a"] == "1 Set-Cookie: evil=1" and "set-cookie" not in r.headers


def test_a_response_header_the_web_tier_cannot_send_is_dropped_not_a_500(served: ServedHost) -> None:
    r = _plugin_answers(served, _head(b"X-A: a\x01b\r\nX-B: kept"))
    assert r.status_code == 200 and r.text == "ok"
    assert "x-a" not in r.headers and r.headers["x-b"] == "kept"
    r = _plugin_answers(served, _head("X-Price: 9 \u20ac".encode()))
    assert r.status_code == 200  # UTF-8 from a plugin: a 500 before, passed byte for byte now
    assert (b"x-price", "9 \u20ac".encode()) in r.headers.raw


def test_content_length_beside_chunked_does_not_truncate(served: ServedHost) -> None:
    r = _plugin_answers(served, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n"
                                b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert r.status_code == 200
    assert r.text == "hello"  # "he" before: the plugin's Content-Length was passed on beside the chunks


SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Smuggled: 1\r\n\r\nsmuggled"


@pytest.mark.parametrize(("method", "target", "status", "body"), [
    ("GET", "/plugins/echo/lies/5", 200, b"\0" * 5),  # a small body, copied
    ("GET", f"/plugins/echo/lies/{MiB}", 200, b"\0" * MiB),  # a large one, spliced (host.gunicorn_wire)
    ("HEAD", f"/plugins/echo/lies/{MiB}", 200, b""),  # a body to a HEAD request
    ("GET", "/plugins/echo/raw/" + (b"HTTP/1.1 204 No Content\r\nContent-Length: 58\r\n\r\n" + SMUGGLED).hex(),
     204, b""),
    ("GET", "/plugins/echo/raw/" + (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                                    + SMUGGLED).hex(), 200, b"ok"),  # bytes after the last chunk
])
def test_cant_smuggle_an_answer_into_the_next_one_on_the_clients_connection(served: ServedHost, method: str,
                                                                           target: str, status: int,
                                                                           body: bytes) -> None:
    # A plugin writes an answer of its own behind the one it framed (at once and after a pause). The client's
    # kept-alive connection carries its next request to another plugin (path mode shares one origin; a front
    # proxy pooling its connections to the host sends other users' requests the same way): that answer must be
    # the other plugin's, and nothing the first one sent beyond its answer may reach the client as an answer.
    answers = _on_one_connection(served.port, [(method, target), ("GET", "/plugins/example/example")])
    assert [(code, got) for code, _, got in answers] == [(status, body), (200, b"Hello from Example Plugin!")]
    assert all(b"x-smuggled" not in names for _, names, _ in answers)


def _on_one_connection(port: int, requests: list[tuple[str, str]]) -> list[tuple[int, list[bytes], bytes]]:
    """Each request in turn on one kept-alive connection, its answer read as a client parses it (h11):
    (status, header names, body)."""
    conn = h11.Connection(h11.CLIENT)
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for method, target in requests:
            s.sendall(conn.send(h11.Request(method=method, target=target, headers=[("Host", "127.0.0.1")]))
                      + conn.send(h11.EndOfMessage()))
            status, names, body = 0, [], b""
            for _ in range(10_000):
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(s.recv(65536))
                elif isinstance(event, h11.Response):
                    status, names = event.status_code, [k for k, _ in event.headers]
                elif isinstance(event, h11.Data):
                    body += event.data
                else:
                    assert isinstance(event, h11.EndOfMessage), event
                    break
            out.append((status, names, body))
            conn.start_next_cycle()  # fails if the host closed the connection
    return out


def test_body_over_the_manifest_limit_is_413(served: ServedHost) -> None:
    r = httpx.post(served.url + "/plugins/example/example", content=b"x" * (17 * MiB), timeout=30)
    assert r.status_code == 413
    assert r.json()["title"] == "Request body too large"


def test_slow_plugin_times_out_with_504(served: ServedHost) -> None:
    r = served.get("/plugins/echo/sleep/5.0")  # echo's manifest allows 3 s
    assert r.status_code == 504
    assert "did not answer within 3s" in r.json()["detail"]


def test_healthz_reports_host_and_plugin_states(served: ServedHost) -> None:
    h = served.health()
    assert h["status"] == "ok"
    example = h["plugins"]["example"]
    assert set(example) == {"state", "enabled", "version", "sandbox"}  # no pid, no reason: see test_web_tier
    assert (example["state"], example["enabled"], example["version"]) == ("running", True, "1.0.0")
    assert example["sandbox"] in ("full", "weak")

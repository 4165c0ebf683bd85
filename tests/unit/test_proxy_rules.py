"""Header hygiene, cookie scoping, forwarding trust and path rules of the proxy (pure functions, no sockets)."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from host.headers import (
    Forwarding,
    request_headers,
    response_headers,
    scope_cookie,
)
from host.proxy import (
    BadRequestBody,
    BodyTooLarge,
    ProxyError,
    body_stream,
    escapes_prefix,
    upstream_errors,
    upstream_path,
    upstream_request,
)
from host.settings import HostSettings
from host.upstream import BadUpstream, ConnectFailed, RawHeaders, RequestRefused, UpstreamTimeout


def build(headers: list[tuple[str, str]], length: str | None = None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in request_headers(headers, prefix="/plugins/p", client_ip="10.0.0.1", scheme="https",
                                host="example.org", content_length=length):
        out.setdefault(k.lower(), []).append(v)
    return out


def test_hop_by_hop_and_connection_named_headers_are_stripped() -> None:
    h = build([("Connection", "keep-alive, X-Private"), ("X-Private", "1"), ("TE", "trailers"),
               ("Upgrade", "h2c"), ("Proxy-Authorization", "x"), ("Transfer-Encoding", "chunked"),
               ("Accept", "text/html")])
    assert set(h) == {"accept", "host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                      "x-forwarded-prefix"}


def test_client_cannot_spoof_forwarding_headers() -> None:
    h = build([("X-Forwarded-For", "1.2.3.4"), ("Forwarded", "for=1.2.3.4"), ("X-Forwarded-Prefix", "/"),
               ("Host", "evil")])
    assert h["x-forwarded-for"] == ["10.0.0.1"]
    assert h["x-forwarded-prefix"] == ["/plugins/p"]
    assert h["x-forwarded-proto"] == ["https"]
    assert h["host"] == ["example.org"]
    assert "forwarded" not in h


def test_client_cannot_send_scheme_headers_the_plugins_gunicorn_believes() -> None:
    h = build([("X-Forwarded-Ssl", "on"), ("X-Forwarded-Protocol", "ssl"), ("X-Forwarded-Scheme", "https"),
               ("X-Url-Scheme", "https"), ("Front-End-Https", "on")])
    assert set(h) == {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix"}


def forwarding(spec: str) -> Forwarding:
    return Forwarding(HostSettings(forwarded_allow_ips=spec).forwarded_networks)


XFF = [("X-Forwarded-For", "6.6.6.6, 203.0.113.9"), ("x-forwarded-for", "10.0.0.7"),
       ("X-Forwarded-Host", "evil.example, www.example.org")]


def test_no_one_is_a_front_proxy_by_default_not_even_loopback() -> None:
    fwd = Forwarding(HostSettings().forwarded_networks)
    for peer in ("127.0.0.1", "::1", "10.0.0.2", ""):
        assert not fwd.trusts(peer)
        assert fwd.client(peer, "host:8000", XFF) == (peer, "host:8000")


def test_a_front_proxy_is_believed_up_to_the_last_hop_it_does_not_vouch_for() -> None:
    fwd = forwarding("10.0.0.2, 10.0.0.0/29")
    # 10.0.0.7 is a proxy too; 203.0.113.9 is the client it saw; 6.6.6.6 is what the client wrote.
    assert fwd.client("10.0.0.2", "10.0.0.2:8000", XFF) == ("203.0.113.9", "www.example.org")
    assert fwd.client("10.0.0.2", "h", [("X-Forwarded-For", "10.0.0.3, 10.0.0.4")]) == ("10.0.0.3", "h")
    assert fwd.client("10.0.0.2", "h", [("X-Forwarded-For", "6.6.6.6, junk, 10.0.0.4")]) == ("10.0.0.4", "h")
    assert fwd.client("10.0.0.2", "h", []) == ("10.0.0.2", "h")
    assert fwd.client("10.0.0.9", "h", XFF) == ("10.0.0.9", "h")  # not a proxy: its headers are the client's
    assert fwd.client("10.0.0.2", "h", [("X-Forwarded-Host", "a.example\r\nX: y")]) == ("10.0.0.2", "h")
    v6 = "[2001:db8::1]:8443"
    assert fwd.client("10.0.0.2", "h", [("X-Forwarded-Host", v6)]) == ("10.0.0.2", v6)


def test_a_unix_socket_peer_is_a_proxy_only_once_proxies_are_configured() -> None:
    assert not forwarding("").trusts("")
    assert forwarding("10.0.0.2").trusts("")
    assert forwarding("*").trusts("192.0.2.1") and forwarding("*").trusts("2001:db8::1")


@pytest.mark.parametrize("spec", ["10.0.0.1/24", "localhost", "127.0.0.1;10.0.0.1"])
def test_forwarded_allow_ips_must_be_addresses_or_networks(spec: str) -> None:
    with pytest.raises(ValidationError, match="forwarded_allow_ips"):
        HostSettings(forwarded_allow_ips=spec)


def test_host_credentials_never_reach_a_plugin() -> None:
    h = build([("Cookie", "plugin_host_session=s3cret; a=1"), ("Authorization", "Bearer phk_abc")])
    assert h["cookie"] == ["a=1"]
    assert "authorization" not in h
    h = build([("Cookie", "plugin_host_session=s3cret"), ("Authorization", "Basic dXNlcjpwdw==")])
    assert "cookie" not in h
    assert h["authorization"] == ["Basic dXNlcjpwdw=="]  # the plugin's own auth scheme passes


def test_content_length_is_ours() -> None:
    assert build([("Content-Length", "999")], length="5")["content-length"] == ["5"]


def test_response_headers_keep_repeats_and_drop_hop_by_hop() -> None:
    up = httpx.Headers([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2; Path=/x"), ("Connection", "close"),
                        ("Keep-Alive", "timeout=5"), ("X-Multi", "1"), ("X-Multi", "2")])
    out = response_headers(up, "/plugins/p")
    assert [v for k, v in out if k.lower() == "x-multi"] == ["1", "2"]
    assert [v for k, v in out if k.lower() == "set-cookie"] == ["a=1; Path=/plugins/p/", "b=2; Path=/plugins/p/x"]
    assert not any(k.lower() in ("connection", "keep-alive") for k, _ in out)


def test_response_headers_pass_byte_for_byte() -> None:
    # UTF-8 from a plugin used to be decoded by httpx and then refused by the web tier's gunicorn (latin-1).
    up = httpx.Headers([(b"X-Price", "9 \u20ac".encode())])
    assert response_headers(up, "/plugins/p") == [("x-price", "9 \xe2\x82\xac")]
    up = httpx.Headers([(b"X-Name", b"caf\xe9")])
    assert response_headers(up, "/plugins/p") == [("x-name", "caf\xe9")]


def test_response_headers_the_web_tier_could_not_send_are_dropped() -> None:
    up = httpx.Headers([(b"X-A", b"a\x01b"), (b"X-B", b"a\x7fb"), (b"X-C", b"a\tb"), (b"X(D)", b"1")])
    assert response_headers(up, "/plugins/p") == [("x-c", "a\tb")]


def test_raw_headers_filter_as_httpx_headers_did() -> None:
    """The web tier's own header block (host.upstream: no httpx import there) filters as httpx.Headers did."""
    sent = [(b"Connection", b"close, X-Secret"), (b"connection", b"X-Other"), (b"X-Secret", b"1"), (b"X-Other", b"2"),
            (b"Content-Length", b"2"), (b"TRANSFER-ENCODING", b"chunked"), (b"X-Name", b"caf\xe9"),
            (b"Set-Cookie", b"a=1"), (b"Location", b"/login"), (b"X-Bad", b"a\x01b")]
    for prefix in ("/plugins/p", ""):
        assert response_headers(RawHeaders(sent), prefix) == response_headers(httpx.Headers(sent), prefix)
    assert response_headers(RawHeaders(sent), "/plugins/p") == [
        ("x-name", "caf\xe9"), ("set-cookie", "a=1; Path=/plugins/p/"), ("location", "/plugins/p/login")]
    assert RawHeaders(sent).get("CONNECTION") == "close, X-Secret, X-Other" and RawHeaders([]).get("upgrade") == ""


def test_content_length_beside_transfer_encoding_is_dropped() -> None:
    up = httpx.Headers([("Content-Length", "2"), ("Transfer-Encoding", "chunked"), ("Content-Type", "text/plain")])
    assert response_headers(up, "/plugins/p") == [("content-type", "text/plain")]
    assert response_headers(httpx.Headers([("Content-Length", "2")]), "/p") == [("content-length", "2")]


def test_proxy_headers_go_both_ways() -> None:
    assert "proxy" not in build([("Proxy", "http://evil.example:3128")])  # httpoxy
    assert "proxy-foo" not in build([("Proxy-Foo", "1")])
    assert response_headers(httpx.Headers([("Proxy-Status", "x"), ("Proxy", "y")]), "/p") == []


def test_upstream_request_keeps_the_clients_header_bytes() -> None:
    # A client's obs-text byte arrives latin-1 decoded (PEP 3333); httpx's ASCII default raised: a 500.
    req = upstream_request("GET", "/", [("Host", "h"), ("X-Name", "caf\xe9")], None, 3.0)
    assert req.headers == [(b"Host", b"h"), (b"X-Name", b"caf\xe9")]


def test_origin_wide_response_headers_are_dropped() -> None:
    up = httpx.Headers([("Service-Worker-Allowed", "/"), ("Clear-Site-Data", '"cookies"'),
                        ("Strict-Transport-Security", "max-age=63072000"), ("Alt-Svc", 'h3=":443"'),
                        ("Content-Type", "text/html")])
    assert response_headers(up, "/plugins/p") == [("content-type", "text/html")]


@pytest.mark.parametrize("name", ["X-Accel-Redirect", "x-accel-redirect", "X-Accel-Limit-Rate", "X-Accel-Expires",
                                  "X-Accel-Charset", "X-Sendfile", "X-SENDFILE", "X-Sendfile-Type", "X-Sendfile2",
                                  "X-LIGHTTPD-send-file", "X-Lighttpd-Send-File", "X-Lighttpd-Send-Tempfile",
                                  "X-LiteSpeed-Location", "X-LiteSpeed-Purge", "X-Reproxy-URL"])
def test_front_proxy_instructions_are_dropped(name: str) -> None:
    up = httpx.Headers([(name, "/etc/shadow"), ("Content-Type", "text/plain")])
    assert response_headers(up, "/plugins/p") == [("content-type", "text/plain")]


def test_accel_buffering_passes_so_streams_stay_unbuffered() -> None:
    up = httpx.Headers([("X-Accel-Buffering", "no")])
    assert response_headers(up, "/plugins/p") == [("x-accel-buffering", "no")]


@pytest.mark.parametrize(("cookie", "expected"), [
    ("s=1", "s=1; Path=/plugins/p/"),
    ("s=1; Path=/", "s=1; Path=/plugins/p/"),
    ("s=1; path=/plugins/p/x; HttpOnly", "s=1; HttpOnly; Path=/plugins/p/x"),
    ("s=1; Domain=.example.com; Secure", "s=1; Secure; Path=/plugins/p/"),
    ("s=1; Path=/plugins/pp", "s=1; Path=/plugins/p/plugins/pp"),  # a sibling prefix is not ours
    ("s=1; Path=/plugins/p", "s=1; Path=/plugins/p"),
    ("__Secure-s=1; Secure; Path=/", "__Secure-s=1; Secure; Path=/plugins/p/"),  # the browser checks Secure
    ("s=a=b; Max-Age=60; SameSite=Lax", "s=a=b; Max-Age=60; SameSite=Lax; Path=/plugins/p/"),
])
def test_cookies_are_confined_to_the_plugin(cookie: str, expected: str) -> None:
    assert scope_cookie(cookie, "/plugins/p") == expected


# Spellings a browser reads as Domain or Path (RFC 6265bis 5.6: split on the first '=', strip both sides,
# compare names case-insensitively, the last Path wins); each once slipped past a regex.
@pytest.mark.parametrize(("cookie", "expected"), [
    ("s=1; Domain =evil.example", "s=1; Path=/plugins/p/"),
    ("s=1; domain= evil.example", "s=1; Path=/plugins/p/"),
    ("s=1;  DOMAIN=evil.example", "s=1; Path=/plugins/p/"),
    ("s=1;Domain\t=\tevil.example;HttpOnly", "s=1; HttpOnly; Path=/plugins/p/"),
    ("s=1; Domain", "s=1; Path=/plugins/p/"),
    ("s=1; Domain=a.example; Domain=b.example", "s=1; Path=/plugins/p/"),
    ("s=1; Path =/", "s=1; Path=/plugins/p/"),
    ("s=1; PATH= /plugins/p/x ", "s=1; Path=/plugins/p/x"),
    ("s=1; Path=/plugins/p/x; Path=/", "s=1; Path=/plugins/p/"),  # browsers keep the last Path
    ("s=1; Path=/; path=/plugins/p/x", "s=1; Path=/plugins/p/x"),
    ("s=1; Path=/other; Path =/plugins/p/x", "s=1; Path=/plugins/p/x"),
    ("s=1; Path=", "s=1; Path=/plugins/p/"),
    ("s=1; Path=relative", "s=1; Path=/plugins/p/"),  # browsers ignore a Path not starting with '/'
])
def test_cookie_attributes_are_parsed_as_browsers_parse_them(cookie: str, expected: str) -> None:
    assert scope_cookie(cookie, "/plugins/p") == expected


def test_cant_escape_the_prefix_with_a_path_browsers_ignore() -> None:
    # Over 1024 octets browsers drop the Path and fall back to the request's directory: "/plugins" for a
    # response to "/plugins/p", which every plugin shares.
    long = "/plugins/p/" + "a" * 1100
    assert scope_cookie(f"s=1; Path={long}", "/plugins/p") == "s=1; Path=/plugins/p/"


@pytest.mark.parametrize("cookie", [
    "__Host-s=1; Secure; Path=/",  # needs Path=/ (and no Domain): impossible under a prefix
    "__host-s=1; Secure; Path=/",
    "plugin_host_session=forged; Path=/",  # the host's own session cookie
    " plugin_host_session =forged",
    "__Secure-plugin_host_session=forged; Secure",
    "s=1; Domain=evil.example\x0b; Path=/",  # a control character: browsers ignore the whole cookie
    "s=1\x00; Path=/",
])
def test_cant_set_cookies_the_plugin_may_not_have(cookie: str) -> None:
    assert scope_cookie(cookie, "/plugins/p") is None
    up = httpx.Headers([("Set-Cookie", cookie), ("Content-Type", "text/plain")])
    assert response_headers(up, "/plugins/p") == [("content-type", "text/plain")]


@pytest.mark.parametrize(("sub", "bad"), [("a/b", False), ("../x", True), ("a/../../x", True), ("./a", True),
                                          ("a/..", True), ("a\\..\\b", True), ("..a/b..", False)])
def test_dot_segments_are_refused(sub: str, bad: bool) -> None:
    assert escapes_prefix(sub) is bad


def test_upstream_path_keeps_the_clients_encoding() -> None:
    assert upstream_path("/plugins/p/a%2Fb/c?x=1", "/plugins/p", "a/b/c") == "/a%2Fb/c"
    assert upstream_path("/plugins/p", "/plugins/p", "") == "/"
    assert upstream_path(None, "/plugins/p", "a b") == "/a%20b"


def test_body_stream_stops_at_the_limit() -> None:
    import io
    assert b"".join(body_stream(io.BytesIO(b"x" * 10), 10)) == b"x" * 10
    with pytest.raises(BodyTooLarge):
        b"".join(body_stream(io.BytesIO(b"x" * 11), 10))


def test_limit_errors_name_the_manifest_field_that_raises_them() -> None:
    """A 413 or 504 says what to grant, not just that a limit was hit."""
    import io
    with pytest.raises(BodyTooLarge) as big:
        b"".join(body_stream(io.BytesIO(b"x" * (16 << 20 | 1)), 16 << 20))
    assert str(big.value) == ("the plugin accepts request bodies of at most 16 MiB "
                              "(its manifest's permissions.requests.max_body_mb)")
    with pytest.raises(ProxyError) as slow, upstream_errors("wiki", 30.0):
        raise UpstreamTimeout("slow")
    assert slow.value.detail == ("plugin 'wiki' did not answer within 30s "
                                 "(its manifest's permissions.requests.timeout_seconds)")


class BrokenChunks:
    """A wsgi.input whose parser finds broken framing after the first read (as gunicorn's raises)."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, size: int) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise ValueError("Invalid chunk size: b'zz'")
        return b"hello"


def test_body_stream_reports_a_body_it_cannot_read() -> None:
    stream = body_stream(BrokenChunks(), 100)
    assert next(stream) == b"hello"
    with pytest.raises(BadRequestBody, match=r"malformed or ended early \(ValueError\)"):
        next(stream)


@pytest.mark.parametrize(("exc", "status"), [
    (BadRequestBody("broken"), 400),
    (ConnectFailed("refused"), 503),
    (UpstreamTimeout("slow"), 504),
    (BadUpstream("garbage"), 502),
    (RequestRefused("illegal header"), 502),
    (BodyTooLarge("big"), 413),
])
def test_upstream_errors_map_to_statuses(exc: Exception, status: int) -> None:
    with pytest.raises(ProxyError) as caught, upstream_errors("p", 3.0):
        raise exc
    assert caught.value.status == status


def test_proxy_through_mock_transport_streams_and_scopes() -> None:
    seen: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["path"] = request.url.raw_path.decode()
        return httpx.Response(201, headers=[("Set-Cookie", "k=v")], content=b"made")

    client = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://plugin")
    resp = client.send(client.build_request("POST", "/a?b=1", content=b"x"), stream=True)
    assert seen["path"] == "/a?b=1"
    assert resp.status_code == 201
    assert response_headers(resp.headers, "/plugins/p")[0] == ("set-cookie", "k=v; Path=/plugins/p/")

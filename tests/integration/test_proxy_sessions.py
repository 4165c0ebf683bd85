"""No client ever reaches a plugin with a cookie it did not send (issue 7): the proxy keeps no state between
requests, across web workers, threads, keep-alive connections and plugin restarts."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.harness import FIXTURES, ServedHost, served_plugins

ROUNDS = 40


@pytest.fixture(scope="module")
def two_workers() -> Iterator[ServedHost]:
    with served_plugins(FIXTURES / "echo", wait=("echo",),
                        env={"HOST_WEB_WORKERS": "2", "HOST_WEB_THREADS": "8"}) as host:
        yield host


def _seen(client: httpx.Client, url: str, cookie: str | None, renew: bool) -> dict[str, str]:
    client.cookies.clear()  # the test's own client must not replay cookies either: we send them by hand
    headers = {"Cookie": cookie} if cookie else {}
    r = client.get(url + "/plugins/echo/whoami", params={"renew": "1"} if renew else {}, headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json()["cookies"])


def _hammer(host: ServedHost) -> list[str]:
    """Alice logs in and keeps getting Set-Cookie; an anonymous client and Bob (own cookie) run beside her,
    on keep-alive connections and on fresh ones. Returns every violation seen."""
    login = httpx.post(host.url + "/plugins/echo/login/alice", timeout=10)
    assert login.status_code == 200
    assert "sid=alice" in login.headers["set-cookie"]
    violations: list[str] = []
    lock = threading.Lock()

    def client(identity: str | None, keepalive: bool) -> None:
        cookie = f"sid={identity}" if identity else None
        want = {"sid": identity} if identity else {}
        with httpx.Client(timeout=10) as keep:
            for i in range(ROUNDS):
                if keepalive:
                    got = _seen(keep, host.url, cookie, renew=i % 2 == 0)
                else:
                    with httpx.Client(timeout=10) as fresh:
                        got = _seen(fresh, host.url, cookie, renew=i % 2 == 0)
                if got != want:
                    with lock:
                        violations.append(f"{identity or 'anonymous'} sent {cookie!r}, plugin saw {got}")

    jobs = [(who, ka) for who in ("alice", None, "bob") for ka in (True, False)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        for f in [pool.submit(client, who, ka) for who, ka in jobs]:
            f.result()
    return violations


def test_no_client_sees_another_clients_cookie(two_workers: ServedHost) -> None:
    violations = _hammer(two_workers)
    assert violations == [], f"{len(violations)} leaks, first: {violations[:3]}"


def test_no_cookie_leaks_after_a_plugin_restart(two_workers: ServedHost) -> None:
    before = _hammer(two_workers)
    r = two_workers.cli("restart", "echo")
    assert r.returncode == 0, r.stderr
    two_workers.wait_state("echo", "running")
    after = _hammer(two_workers)
    assert before == [] and after == [], f"leaks: {(before + after)[:3]}"


def test_upstream_request_carries_only_the_clients_headers(two_workers: ServedHost) -> None:
    """No default headers of an HTTP client library (User-Agent, Accept-Encoding, Accept) are invented."""
    conn = http.client.HTTPConnection("127.0.0.1", two_workers.port, timeout=10)
    try:
        conn.putrequest("GET", "/plugins/echo/request", skip_accept_encoding=True)  # sends Host only
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 200
        seen = {k.lower() for k, _ in json.loads(resp.read())["headers"]}
    finally:
        conn.close()
    assert not seen & {"user-agent", "accept-encoding", "accept", "cookie", "authorization"}, seen

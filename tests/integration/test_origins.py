"""One origin per plugin, end to end: on a loopback bind every plugin is also at http://<name>.localhost:PORT/,
at the root of its own origin, routed by Host; the host's own pages stay on the main host name."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.integration.harness import ServedHost


def test_a_plugin_on_its_own_origin_sees_root_paths_and_its_public_url(served: ServedHost) -> None:
    with served.origin_client("echo") as c:
        info = c.get("/request?a=1", headers={"X-Forwarded-Prefix": "/plugins/x"}).json()
    headers = {k.lower(): v for k, v in info["headers"]}
    assert info["script_root"] == "" and info["path"] == "/request"
    assert info["url"] == served.origin("echo") + "/request?a=1"
    assert "x-forwarded-prefix" not in headers  # the client's copy is dropped; none is set at the root
    assert headers["host"] == headers["x-forwarded-host"] == f"echo.localhost:{served.port}"


def test_absolute_links_redirects_and_static_files_work_at_the_root(served: ServedHost) -> None:
    with served.origin_client("notes") as c:
        page = c.get("/")
        assert page.status_code == 200
        assert 'href="/static/style.css"' in page.text and 'action="/notes"' in page.text
        assert "font-family" in c.get("/static/style.css").text
        post = c.post("/notes", data={"text": "on its own origin"})
        assert post.status_code == 302 and post.headers["location"] == "/"
        assert "on its own origin" in c.get("/").text
    with served.origin_client("echo") as c:
        r = c.get("/go")
        assert r.headers["location"] == "/target" and c.get("/target").text == "arrived"


def test_the_hosts_own_pages_are_not_served_on_a_plugin_origin(served: ServedHost) -> None:
    with served.origin_client("echo") as c:
        r = c.get("/healthz")
    assert r.status_code == 404  # echo has no /healthz: the plugin answered, not the host
    assert r.headers["content-type"].startswith("text/html")
    assert served.get("/healthz").json()["status"] == "ok"  # the host's, on the main host name


def test_an_unknown_plugin_origin_is_a_404_problem(served: ServedHost) -> None:
    with served.origin_client("nope") as c:
        r = c.get("/")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["title"] == "Unknown plugin"


def test_a_plugins_cookies_stay_host_only_on_its_origin_with_their_own_path(served: ServedHost) -> None:
    with served.origin_client("echo") as c:
        r = c.get("/headers", params=[("Set-Cookie", "a=1; Domain=localhost; Path=/"),
                                      ("Set-Cookie", "b=2; domain =.echo.localhost; Path=/sub; HttpOnly"),
                                      ("Set-Cookie", "__Host-c=3; Secure; Path=/")])
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/sub; HttpOnly", "__Host-c=3; Secure; Path=/"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_reaches_a_plugin_origin_with_no_dns_set_up(served: ServedHost) -> None:
    out = subprocess.run(["curl", "-sS", "--max-time", "20", served.origin("echo") + "/request"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert json.loads(out)["url"] == served.origin("echo") + "/request"


def test_index_links_each_plugins_own_origin_and_warns_of_the_shared_one(served: ServedHost) -> None:
    page = served.get("/").text
    for name in ("example", "notes", "echo"):
        assert f'href="{served.origin(name)}/"' in page and f'href="/plugins/{name}/"' in page
    assert "share one browser origin with each other and with this host" in page

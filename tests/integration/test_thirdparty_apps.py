"""Real third-party Flask apps from PyPI, unchanged (installed by their own requirements), hosted on their own
origin and driven in headless Chromium as a user would: register, log in, forms with CSRF tokens, navigation
by the absolute links their templates write, static assets.

An Otter Wiki (otterwiki on PyPI): Flask-Login, Flask-WTF's CSRFProtect on every form, GitPython, a SQLite
database through Flask-SQLAlchemy, templates full of ``href="/..."``. The plugin directory is only a
manifest; the app's configuration (SECRET_KEY, REPOSITORY, ...) comes from the plugin's settings, and its
repository is set up as its documentation says (``git init``), as the operator would.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.harness import ServedHost, run_host, short_home

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Response

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the plugin's repository is handed to its own uid")

OTTERWIKI = """
name = "wiki"
version = "2.26.1"
entrypoint = "otterwiki.server:app"
requirements = ["otterwiki==2.26.1"]
description = "An Otter Wiki, from PyPI, unchanged"

[settings.secret_key]
secret = true
required = true

[settings.repository]
required = true

[settings.sqlalchemy_database_uri]
required = true

[settings.email_needs_confirmation]
type = "boolean"
default = false

[permissions.filesystem]
write = ["{repo}"]

[permissions.resources]
memory_mb = 512
"""


def plugin_uid(home: Path, name: str) -> int:
    owners = json.loads(Path("/var/lib/plugin-host/uids.json").read_text())["owners"]
    return next(int(uid) for uid, owner in owners.items() if owner == {"home": str(home), "plugin": name})


@pytest.fixture(scope="module")
def wiki() -> Iterator[ServedHost]:
    with short_home() as home:
        repo, bundle = home.parent / "wiki-repo", home.parent / "wiki-plugin"
        bundle.mkdir()
        (bundle / "plugin.toml").write_text(OTTERWIKI.format(repo=repo))
        # secret_key is set last: until every required setting has a value the install does not import the
        # app (which exits at import without its repository)
        run_host(home, "install", str(bundle), "--yes", "--set", f"repository={repo}",
                 "--set", f"sqlalchemy_database_uri=sqlite:///{home}/data/wiki/wiki.db", check=True)
        subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=30)
        uid = plugin_uid(home, "wiki")
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(repo)], check=True, timeout=30)
        run_host(home, "config", "wiki", f"secret_key={secrets.token_hex(16)}", check=True)
        host = ServedHost(home).start(wait_plugins=("wiki",), timeout=120)
        try:
            yield host
        finally:
            host.stop()


def test_otterwiki_unchanged_on_its_own_origin(wiki: ServedHost, browser_context: BrowserContext) -> None:
    base = wiki.origin("wiki")
    page = browser_context.new_page()
    assets: list[Response] = []
    page.on("response", lambda r: assets.append(r) if "/static/" in r.url else None)

    page.goto(base + "/")
    assert page.title().endswith("An Otter Wiki")

    # register (the first user becomes the admin) and log in: forms carrying Flask-WTF CSRF tokens
    page.goto(base + "/-/register")
    page.fill("#email", "ada@example.org")
    page.fill("#name", "Ada Lovelace")
    page.fill("#password1", "correct horse battery staple")
    page.fill("#password2", "correct horse battery staple")
    page.click("form[action='/-/register'] input[type=submit]")
    page.goto(base + "/-/login")
    page.fill("#email", "ada@example.org")
    page.fill("#password", "correct horse battery staple")
    page.click("form[action='/-/login'] input[type=submit]")
    page.wait_for_url(base + "/")
    assert "You logged in successfully." in page.inner_text("body")
    session = next(c for c in browser_context.cookies() if c["name"] == "session")
    assert (session["domain"], session["path"]) == ("wiki.localhost", "/")  # host-only on its own origin

    # the same form without its token is refused: CSRF protection works through the host
    forged = page.evaluate("""async () => {
        const r = await fetch("/-/create", {method: "POST", body: new URLSearchParams({pagename: "Forged"})});
        return {status: r.status, text: await r.text()};
    }""")
    assert forged["status"] == 400 and "CSRF" in forged["text"]

    # create a page in the wiki's editor (CodeMirror) and save it: a commit in its git repository
    page.goto(base + "/-/create")
    page.fill("#pagename", "Otters")
    page.click("input[value='Create and open in editor']")
    page.wait_for_url(base + "/Otters?edit")
    page.click(".cm-content")  # CodeMirror 6
    page.keyboard.type("# Otters\n\nOtters hold hands while they sleep.\n")
    page.click("#save-page-btn")
    page.fill("#commit-message", "Add otters")
    page.click("#saveform input[type=submit]")
    page.wait_for_url(base + "/Otters")
    assert "Otters hold hands while they sleep." in page.inner_text("body")

    # navigation by the absolute links the templates write (href="/-/index", href="/Otters", ...)
    for href in ("/-/index", "/Otters"):
        page.locator(f"a[href='{href}']:visible").first.click()
        page.wait_for_url(base + href)
    page.goto(base + "/Otters/history")  # the commit, by the wiki's git repository
    assert "Add otters" in page.inner_text("body") and "Ada Lovelace" in page.inner_text("body")

    # static assets (/static/css/..., /static/js/...) all came from the plugin
    assert any(r.url.startswith(base + "/static/css/otterwiki.css") for r in assets)
    assert assets and all(r.status in (200, 304) for r in assets), [(r.status, r.url) for r in assets if
                                                                      r.status not in (200, 304)]

    # by path the same app is broken: the links its templates write lead to the host's root, not the plugin
    page.goto(wiki.url + "/plugins/wiki/Otters")
    assert "Otters hold hands while they sleep." in page.inner_text("body")
    escaping = page.evaluate("""() => [...document.querySelectorAll("a[href^='/']")].map((a) => a.getAttribute("href"))
                                    .filter((href) => !href.startsWith("/plugins/wiki"))""")
    assert "/Otters" in escaping  # e.g. its sidebar's href="/{{path}}"
    answer = page.goto(wiki.url + "/Otters")
    assert answer is not None and answer.status == 404  # the host's, not the wiki's page

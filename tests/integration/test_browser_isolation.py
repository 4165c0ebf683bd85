"""In a real browser (headless Chromium): a plugin's page on its own origin cannot read another plugin's pages
or cookies, while by path (one shared origin) the same attack works and the index says so."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.integration.harness import ServedHost

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

# Run in the attacker's page: read the victim's page with the user's cookies, as a script of that page could.
STEAL = """async (url) => {
    const out = {};
    try {
        const r = await fetch(url, {credentials: "include"});
        out.read = await r.text();
    } catch (e) {
        out.error = String(e);
    }
    const blind = await fetch(url, {credentials: "include", mode: "no-cors"});
    out.opaque = {type: blind.type, status: blind.status, body: await blind.text()};
    out.cookie = document.cookie;
    out.frame = await new Promise((resolve) => {
        const f = document.createElement("iframe");
        f.onload = () => {
            try { resolve(f.contentWindow.document.body.innerText); } catch (e) { resolve(`${e.name}: ${e.message}`); }
        };
        f.src = url;
        document.body.appendChild(f);
    });
    return out;
}"""


def steal(page: Page, attacker: str, victim: str) -> dict[str, Any]:
    page.goto(attacker)
    result: dict[str, Any] = page.evaluate(STEAL, victim)
    return result


def test_cant_read_another_plugins_pages_or_cookies_from_its_own_origin(served: ServedHost,
                                                                       browser_context: BrowserContext) -> None:
    page = browser_context.new_page()
    page.goto(served.origin("echo") + "/cookies")  # the victim plugin sets cookies on its origin
    jar = {c["name"]: c for c in browser_context.cookies()}
    assert jar["a"]["domain"] == "echo.localhost" and jar["a"]["path"] == "/"  # host-only: no leading dot
    page.goto(served.origin("echo") + "/whoami")
    assert json.loads(page.inner_text("body"))["cookies"] == {"a": "1"}  # its own page sees them

    got = steal(page, served.origin("notes") + "/", served.origin("echo") + "/whoami")
    assert "read" not in got and got["error"] == "TypeError: Failed to fetch"  # CORS: no answer to read
    assert got["opaque"] == {"type": "opaque", "status": 0, "body": ""}
    assert got["cookie"] == ""  # echo's cookies are not notes' cookies
    assert "SecurityError" in got["frame"] and "cross-origin" in got["frame"]


def test_by_path_plugins_share_one_origin_and_the_index_says_so(served: ServedHost,
                                                                browser_context: BrowserContext) -> None:
    page = browser_context.new_page()
    page.goto(served.url + "/plugins/echo/cookies")
    # The same attack, between the same two plugins reached by path, works: the reason for origin mode.
    got = steal(page, served.url + "/plugins/notes/", "/plugins/echo/whoami")
    assert json.loads(got["read"])["cookies"] == {"a": "1"}
    assert json.loads(got["frame"])["cookies"] == {"a": "1"}
    page.goto(served.url + "/")
    warning = page.locator("#shared-origin-warning")
    assert warning.is_visible()
    assert "share one browser origin with each other and with this host" in warning.inner_text()
    # ... and links each plugin's own origin, which the browser reaches with no DNS set-up
    page.click(f'a[href="{served.origin("echo")}/"]')
    page.wait_for_url(served.origin("echo") + "/")

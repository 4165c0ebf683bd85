"""The admin UI in headless Chromium against a real served host: log in with a token, disable a plugin and see
its page answer 404 through the proxy, enable it again, install an uploaded archive through the consent page,
configure it, log out; and a plugin's page can neither read nor drive the admin UI.

Screenshots of the plugin table and a plugin page go to tests/artifacts/ (not committed) for a person to look at.
"""

from __future__ import annotations

import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.integration.harness import FIXTURES, REPO, ServedHost, served_plugins, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Dialog, Page

ARTIFACTS = REPO / "tests" / "artifacts"
INSTALL_MS = 300_000  # an upload's install builds a venv


@pytest.fixture(scope="module")
def admin_host() -> Iterator[tuple[ServedHost, str, str]]:
    """A host serving ``steady``, with an admin and a read token."""
    with served_plugins(FIXTURES / "steady", wait=("steady",)) as host:
        tokens = [host.cli("token", "create", name, "--scope", scope).stdout.strip().splitlines()[-1]
                  for name, scope in (("ui-test", "admin"), ("ui-viewer", "read"))]
        assert all(t.startswith("phk_") for t in tokens)
        yield host, tokens[0], tokens[1]


def log_in(page: Page, host: ServedHost, token: str) -> None:
    page.goto(host.admin_url + "/admin/")
    assert page.url.startswith(host.admin_url + "/admin/login")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(host.admin_url + "/admin/")


def public_status(host: ServedHost, path: str) -> int:
    return httpx.get(host.url + path, timeout=10).status_code


def archive_of(plugin: Path, dest: Path) -> Path:
    out = dest / f"{plugin.name}.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(plugin, arcname=plugin.name, filter=lambda t: None if "__pycache__" in t.name else t)
    return out


def test_log_in_disable_enable_install_configure_log_out(admin_host: tuple[ServedHost, str, str],
                                                        browser_context: BrowserContext, tmp_path: Path) -> None:
    host, token, _ = admin_host
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser_context.new_page()
    asked: list[str] = []

    def confirm(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", confirm)
    log_in(page, host, token)
    cookie = next(c for c in browser_context.cookies() if c["name"] == "plugin_host_session")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"], cookie["domain"]) == (
        True, "Strict", "/admin/", "127.0.0.1")  # host-only: no leading dot
    row = page.locator("#plugin-steady")
    assert row.locator(".badge[data-state]").inner_text().lower() == "running"

    row.locator('button[data-action="disable"]').click()
    page.wait_for_url("**/admin/?done=disable&plugin=steady")
    assert asked == ["Disable steady? Its pages answer 404 until it is enabled again."]
    assert "steady: disabled" in page.locator(".notice").inner_text()
    assert page.locator("#plugin-steady .badge[data-state]").inner_text().lower() == "disabled"
    started = time.monotonic()
    wait_for(lambda: public_status(host, "/plugins/steady/") == 404, 2.0, what="steady to answer 404")
    took = time.monotonic() - started
    proxied = page.context.new_page()
    seen = proxied.goto(host.url + "/plugins/steady/")  # the browser's own view
    assert seen is not None and seen.status == 404
    proxied.close()

    page.locator('#plugin-steady button[data-action="enable"]').click()
    page.wait_for_url("**/admin/?done=enable&plugin=steady")
    wait_for(lambda: public_status(host, "/plugins/steady/") == 200, 30, what="steady to be served again")
    assert took < 2.0

    # install by upload: the consent page shows what the archive asks for, with the layer enforcing each
    page.click("nav >> text=Install")
    page.set_input_files("#archive", str(archive_of(FIXTURES / "configured", tmp_path)))
    page.click("#review")
    page.wait_for_url("**/admin/install")
    assert page.locator("h1").count() == 1, page.content()[:3000] + host.read_log()[-5000:]
    assert "Install configured" in page.locator("h1").inner_text()
    permissions = page.locator("#consent-permissions").inner_text()
    assert "network" in permissions and "network namespace" in permissions and "seccomp" in permissions
    page.screenshot(path=str(ARTIFACTS / "admin-consent.png"), full_page=True)
    page.check("#grant")
    with page.expect_navigation(url="**/admin/plugins/configured?done=install*", timeout=INSTALL_MS):
        page.click("#install", no_wait_after=True)
    assert "configured: installed" in page.locator(".notice").inner_text()
    # it needs its secret before it can start: the settings form says so and takes it (write-only)
    page.fill("#setting-secret_key", "s3cret-from-the-ui")
    page.fill("#setting-greeting", "hello from the admin UI")
    page.click("#save-settings")
    page.wait_for_url("**/admin/plugins/configured?done=settings*")
    assert "s3cret-from-the-ui" not in page.content()
    wait_for(lambda: public_status(host, "/plugins/configured/") == 200, 60, what="configured to be served")
    assert "hello from the admin UI" in httpx.get(host.url + "/plugins/configured/", timeout=10).text
    page.reload()
    wait_for(lambda: (page.reload(), page.locator("h1 .badge").inner_text().lower() == "running")[1], 30,
             interval=0.5, what="the page to show configured running")
    page.screenshot(path=str(ARTIFACTS / "admin-plugin.png"), full_page=True)
    page.click("nav >> text=Plugins")
    assert page.locator("#plugins tbody tr").count() == 2
    page.screenshot(path=str(ARTIFACTS / "admin-plugins.png"), full_page=True)

    page.click("nav >> text=Audit log")
    audit = page.locator("#audit").inner_text()
    assert "token:ui-test" in audit and "disabled" in audit and "installed" in audit
    page.screenshot(path=str(ARTIFACTS / "admin-audit.png"), full_page=True)

    page.click("#logout")
    page.wait_for_url("**/admin/login?done=logout")
    assert not [c for c in browser_context.cookies() if c["name"] == "plugin_host_session"]
    page.goto(host.admin_url + "/admin/")
    assert page.url.startswith(host.admin_url + "/admin/login")


# Run in a plugin's page: read the admin UI with the operator's cookies, as a script of that page could.
READ = """async (url) => {
    try {
        const r = await fetch(url, {credentials: "include"});
        return {read: await r.text()};
    } catch (e) {
        return {error: String(e)};
    }
}"""
# ... and post a form to it (a navigation: no CORS in the way, the cookie goes along when the site is the same).
FORGE = """([action, csrf]) => {
    const f = document.createElement("form");
    f.method = "POST";
    f.action = action;
    const i = document.createElement("input");
    i.name = "csrf";
    i.value = csrf;
    f.appendChild(i);
    document.body.appendChild(f);
    f.submit();
}"""


def forged_post(page: Page, attacker: str, action: str, csrf: str) -> tuple[int, str]:
    page.goto(attacker)
    with page.expect_navigation() as nav:
        page.evaluate(FORGE, [action, csrf])
    response = nav.value
    assert response is not None
    return response.status, page.content()


def test_cant_read_or_drive_the_admin_ui_from_a_plugin_page(admin_host: tuple[ServedHost, str, str],
                                                            browser_context: BrowserContext) -> None:
    host, token, _ = admin_host
    page = browser_context.new_page()
    log_in(page, host, token)
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    assert csrf
    action = host.admin_url + "/admin/plugins/steady/disable"
    # by path the plugin shares the admin's *site* (127.0.0.1, another port): SameSite=Strict lets the cookie
    # go; on its own origin (steady.localhost) it is another site. Both are refused, even knowing the CSRF token.
    for attacker in (host.url + "/plugins/steady/", host.origin("steady") + "/"):
        page.goto(attacker)
        got: dict[str, Any] = page.evaluate(READ, host.admin_url + "/admin/")
        assert got == {"error": "TypeError: Failed to fetch"}  # CORS: nothing to read
        for token_guess in ("forged", csrf):
            status, body = forged_post(page, attacker, action, token_guess)
            assert status == 403 and "cross-origin requests to the admin listener are refused" in body
    assert host.plugin("steady")["state"] == "running"
    page.goto(host.admin_url + "/admin/")
    assert page.locator("#plugin-steady .badge[data-state]").inner_text().lower() == "running"


def test_a_read_token_sees_the_plugins_but_no_controls(admin_host: tuple[ServedHost, str, str],
                                                       browser_context: BrowserContext) -> None:
    host, _, reader = admin_host
    page = browser_context.new_page()
    log_in(page, host, reader)
    assert page.locator("#plugin-steady").is_visible()
    assert page.locator("#plugin-steady button").count() == 0 and page.locator("nav >> text=Install").count() == 0
    # the table follows changes made elsewhere (here: the command line) without a reload
    badge = page.locator("#plugin-steady .badge[data-state]")
    assert badge.inner_text().lower() == "running"
    host.cli("disable", "steady")
    try:
        wait_for(lambda: badge.inner_text().lower() == "disabled", 15, interval=0.5, what="the table to refresh")
    finally:
        host.cli("enable", "steady")
    wait_for(lambda: badge.inner_text().lower() == "running", 30, interval=0.5, what="the table to refresh")


def test_everything_works_without_javascript(admin_host: tuple[ServedHost, str, str], browser: Browser) -> None:
    host, token, _ = admin_host
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        log_in(page, host, token)
        page.click('#plugin-steady button[data-action="disable"]')  # no confirmation without a script
        page.wait_for_url("**/admin/?done=disable&plugin=steady")
        wait_for(lambda: public_status(host, "/plugins/steady/") == 404, 2.0, what="steady to answer 404")
        page.click('#plugin-steady button[data-action="enable"]')
        page.wait_for_url("**/admin/?done=enable&plugin=steady")
        host.wait_state("steady", "running", 30)
    finally:
        context.close()


def test_failed_logins_are_limited_and_audited(admin_host: tuple[ServedHost, str, str],
                                               browser_context: BrowserContext) -> None:
    """Last in this module: 127.0.0.1 may not log in for a minute afterwards."""
    host, token, _ = admin_host
    page = browser_context.new_page()
    statuses = []
    for guess in ("phk_guess1", "phk_guess2", "phk_guess3", "phk_guess4", "phk_guess5", token):
        page.goto(host.admin_url + "/admin/login")
        page.fill("#token", guess)
        with page.expect_navigation() as nav:
            page.click("#login")
        statuses.append(nav.value.status if nav.value else None)
    assert statuses == [401] * 5 + [429]  # even the right token, for a minute
    assert "Too many failed logins from 127.0.0.1" in page.locator(".alert").inner_text()
    audit = host.cli("audit", "--json", "-n", "50").stdout
    assert audit.count('"login_failed"') == 5 and '"127.0.0.1"' in audit

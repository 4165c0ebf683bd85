"""Real third-party Flask apps from PyPI, unchanged (installed by their own requirements), driven in headless
Chromium as a user would, on their own origins and by path: log in, forms with CSRF tokens, navigation by the
links their templates write, static assets. Each plugin directory is only a manifest; configuration comes
from the plugin's settings, as the app's own documentation asks for it.

- An Otter Wiki (otterwiki): Flask-Login, Flask-WTF's CSRFProtect on every form, GitPython, SQLite through
  Flask-SQLAlchemy, templates full of absolute links (``href="/-/index"``, ``action="/-/login"``), its
  repository set up as its documentation says (``git init``).
- I Hate Money (ihatemoney): projects behind a password (a session), Flask-WTF forms, Flask-Talisman's CSP,
  Flask-Babel, SQLite migrations at start, configured by a Python settings file it is pointed to; it resets
  SCRIPT_NAME itself, so it writes ``/static/...`` and ``/create`` even by path.
- klaus: a git repository viewer (dulwich, pygments), configured by environment variables; links built with
  ``url_for``, so by path it needs nothing but SCRIPT_NAME.

All three share one host (three installs cost a minute), each with its own uid, venv and data.
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
    from playwright.sync_api import BrowserContext, Page, Response

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the plugin's repository is handed to its own uid"),
    # the module's host installs three real apps from PyPI (~2 min on an idle 2-core machine): a loaded one
    # took over pytest-timeout's 300 s for that setup
    pytest.mark.timeout(900),
]

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


IHATEMONEY = """
name = "money"
version = "7.2.1"
entrypoint = "ihatemoney.wsgi:application"
requirements = ["ihatemoney==7.2.1"]
description = "I Hate Money, from PyPI, unchanged"

[settings.ihatemoney_settings_file_path]
required = true
description = "Its settings file (Python), as its documentation says"

[permissions.filesystem]
read = ["{etc}"]

[permissions.resources]
memory_mb = 512
"""

IHATEMONEY_CFG = """
SECRET_KEY = "{secret}"
SQLALCHEMY_DATABASE_URI = "sqlite:///{home}/data/money/ihatemoney.db"
ACTIVATE_DEMO_PROJECT = False
"""

KLAUS = """
name = "klaus"
version = "3.0.1"
entrypoint = "klaus.contrib.wsgi:application"
requirements = ["klaus==3.0.1", "dulwich==0.22.8"]
description = "klaus, a git web viewer, from PyPI, unchanged"

[settings.klaus_repos]
required = true
description = "Space-separated repository paths"

[settings.klaus_site_name]
default = "Repositories"

# klaus runs `git log`; git refuses repositories owned by another user unless safe.directory says so, which
# it reads only from protected configuration: GIT_CONFIG_COUNT/KEY/VALUE count as the command line's
[settings.git_config_count]
type = "integer"
default = 1

[settings.git_config_key_0]
default = "safe.directory"

[settings.git_config_value_0]
default = "*"

[permissions.filesystem]
read = ["{repos}"]
"""


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=Ada Lovelace", "-c", "user.email=ada@example.org", *args], cwd=cwd,
                   check=True, timeout=30, capture_output=True)


def bundle_of(home: Path, name: str, manifest: str) -> Path:
    bundle = home.parent / f"{name}-plugin"
    bundle.mkdir()
    (bundle / "plugin.toml").write_text(manifest)
    return bundle


@pytest.fixture(scope="module")
def apps() -> Iterator[ServedHost]:
    """One host serving the three apps."""
    with short_home() as home:
        # I Hate Money: its settings file where the operator keeps configuration (read-only for the plugin)
        etc = home.parent / "etc-ihatemoney"
        etc.mkdir()
        (etc / "ihatemoney.cfg").write_text(IHATEMONEY_CFG.format(secret=secrets.token_hex(16), home=home))
        run_host(home, "install", str(bundle_of(home, "money", IHATEMONEY.format(etc=etc))), "--yes",
                 "--set", f"ihatemoney_settings_file_path={etc / 'ihatemoney.cfg'}", check=True)
        # klaus: a repository with two commits, readable by everyone (not the plugin's: it only reads it)
        repos = home.parent / "repos"
        (repos / "demo" / "src").mkdir(parents=True)
        git("init", "-q", cwd=repos / "demo")
        (repos / "demo" / "src" / "hello.py").write_text('print("hi")\n')
        git("add", "-A", cwd=repos / "demo")
        git("commit", "-qm", "First commit", cwd=repos / "demo")
        (repos / "demo" / "src" / "hello.py").write_text('print("hello, otters")\n')
        git("commit", "-qam", "Greet the otters", cwd=repos / "demo")
        run_host(home, "install", str(bundle_of(home, "klaus", KLAUS.format(repos=repos))), "--yes",
                 "--set", f"klaus_repos={repos / 'demo'}", check=True)
        # the wiki
        repo = home.parent / "wiki-repo"
        bundle = bundle_of(home, "wiki", OTTERWIKI.format(repo=repo))
        # secret_key is set last: until every required setting has a value the install does not import the
        # app (which exits at import without its repository)
        run_host(home, "install", str(bundle), "--yes", "--set", f"repository={repo}",
                 "--set", f"sqlalchemy_database_uri=sqlite:///{home}/data/wiki/wiki.db", check=True)
        subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=30)
        uid = plugin_uid(home, "wiki")
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(repo)], check=True, timeout=30)
        run_host(home, "config", "wiki", f"secret_key={secrets.token_hex(16)}", check=True)
        host = ServedHost(home).start(wait_plugins=("wiki", "money", "klaus"), timeout=120)
        try:
            yield host
        finally:
            host.stop()


def log_in(page: Page, base: str) -> None:
    page.goto(base + "/-/login")
    page.fill("#email", "ada@example.org")
    page.fill("#password", "correct horse battery staple")
    page.locator("form", has=page.locator("#password")).locator("input[type=submit]").click()
    page.wait_for_url(base + "/")
    assert "You logged in successfully." in page.inner_text("body")


def write_page(page: Page, base: str, name: str, text: str) -> None:
    """Create a page in the wiki's editor (CodeMirror) and save it: a commit in its git repository."""
    page.goto(base + "/-/create")
    page.fill("#pagename", name)
    page.click("input[value='Create and open in editor']")
    page.wait_for_url(base + f"/{name}?edit")
    page.click(".cm-content")  # CodeMirror 6
    page.keyboard.type(f"# {name}\n\n{text}\n")
    page.click("#save-page-btn")
    page.fill("#commit-message", f"Add {name.lower()}")
    page.click("#saveform input[type=submit]")
    page.wait_for_url(base + f"/{name}")
    assert text in page.inner_text("body")


def browse(page: Page, base: str, name: str) -> list[str]:
    """Navigation by the links the templates write (``href="/-/index"``, ``href="/Otters"``; by path some are
    built with url_for and carry the prefix, the others not). Returns the hrefs followed."""
    followed = []
    for href in ("/-/index", f"/{name}"):
        link = page.locator(f"a[href$='{href}']:visible").first
        followed.append(str(link.get_attribute("href")))
        link.click()
        page.wait_for_url(base + href)
    page.goto(base + f"/{name}/history")  # the commit, by the wiki's git repository
    assert f"Add {name.lower()}" in page.inner_text("body") and "Ada Lovelace" in page.inner_text("body")
    return followed


def forged_post_is_refused(page: Page) -> None:
    """The wiki's form without its CSRF token (posted to the absolute path its form names) is refused."""
    forged = page.evaluate("""async () => {
        const r = await fetch("/-/create", {method: "POST", body: new URLSearchParams({pagename: "Forged"})});
        return {status: r.status, text: await r.text()};
    }""")
    assert forged["status"] == 400 and "CSRF" in forged["text"]


def static_served(assets: list[Response], base: str) -> None:
    """Its /static/css/..., /static/js/... all came from the plugin (by path after the host's 307)."""
    assert any(r.url.startswith(base + "/static/css/otterwiki.css") and r.status == 200 for r in assets), \
        [(r.status, r.url) for r in assets]
    assert all(r.status in (200, 304, 307) for r in assets), [(r.status, r.url) for r in assets]


def recorder(page: Page) -> list[Response]:
    assets: list[Response] = []
    page.on("response", lambda r: assets.append(r) if "/static/" in r.url else None)
    return assets


def test_otterwiki_unchanged_on_its_own_origin(apps: ServedHost, browser_context: BrowserContext) -> None:
    base = apps.origin("wiki")
    page = browser_context.new_page()
    assets = recorder(page)

    page.goto(base + "/")
    assert page.title().endswith("An Otter Wiki")

    # register (the first user becomes the admin) and log in: forms carrying Flask-WTF CSRF tokens
    page.goto(base + "/-/register")
    page.fill("#email", "ada@example.org")
    page.fill("#name", "Ada Lovelace")
    page.fill("#password1", "correct horse battery staple")
    page.fill("#password2", "correct horse battery staple")
    page.click("form[action='/-/register'] input[type=submit]")
    log_in(page, base)
    session = next(c for c in browser_context.cookies() if c["name"] == "session")
    assert (session["domain"], session["path"]) == ("wiki.localhost", "/")  # host-only on its own origin

    forged_post_is_refused(page)
    write_page(page, base, "Otters", "Otters hold hands while they sleep.")
    assert browse(page, base, "Otters") == ["/-/index", "/Otters"]
    static_served(assets, base)


def test_otterwiki_unchanged_by_path(apps: ServedHost, browser_context: BrowserContext) -> None:
    """The same app by path (``/plugins/wiki/``), where its templates' absolute links (``href="/-/index"``,
    ``action="/-/login"``, ``src="/static/..."``) reach the host's root: asked for from the wiki's pages, the
    host sends them under the wiki's prefix, and its ``redirect("/")`` comes back under it too."""
    base = apps.url + "/plugins/wiki"
    page = browser_context.new_page()
    assets = recorder(page)
    page.goto(base + "/")
    assert page.title().endswith("An Otter Wiki")
    escaping = page.evaluate("""() => [...document.querySelectorAll("a[href^='/']")].map((a) => a.getAttribute("href"))
                                    .filter((href) => !href.startsWith("/plugins/wiki"))""")
    assert "/-/register" in escaping  # the links as the app wrote them: the host does not rewrite pages

    log_in(page, base)  # the user registered on the wiki's origin: one wiki, one repository
    session = next(c for c in browser_context.cookies() if c["name"] == "session")
    assert (session["domain"], session["path"]) == ("127.0.0.1", "/plugins/wiki/")  # the wiki's prefix only
    forged_post_is_refused(page)
    write_page(page, base, "Beavers", "Beavers build dams.")
    assert "/Beavers" in browse(page, base, "Beavers")  # an absolute link, followed by the host's 307
    static_served(assets, base)

    # only from the wiki's pages: the same path typed in is the host's 404, not the wiki's page
    answer = page.goto(apps.url + "/Beavers")
    assert answer is not None and answer.status == 404


def use_money(page: Page, base: str, project: str) -> list[Response]:
    """Create a project (a form with a CSRF token), add two people and a bill, settle up, leave and come back
    with the project's code; a forged form without the token changes nothing."""
    assets = recorder(page)
    pid = project.lower()
    page.goto(base + "/")
    create = page.locator("form[action='/create']")  # an absolute action, whatever the mode
    create.locator("#name").fill(project)
    create.locator("#password").fill("s3cret-code")
    create.locator("#contact_email").fill("ada@example.org")
    create.locator("[type=submit]").click()
    page.wait_for_url(base + f"/{pid}/")
    for who in ("Ada", "Bob"):
        page.fill("#add-member-form input[name=name]", who)
        page.click("#add-member-form [type=submit]")
        page.wait_for_url(base + f"/{pid}/")
    page.goto(base + f"/{pid}/add")
    page.fill("#what", "Dinner")
    page.select_option("#payer", label="Ada")
    page.fill("#amount", "30")
    page.click("form:not([action]) #submit")
    page.wait_for_url(base + f"/{pid}/")
    page.locator(f"a[href='/{pid}/settle_bills']").first.click()  # by path: the host's 307 from its page
    page.wait_for_url(base + f"/{pid}/settle_bills")
    assert "Bob\tAda\t15.00" in page.inner_text("body")  # who pays whom: the app did its sums

    forged = page.evaluate(f"""async () => {{
        const r = await fetch("/{pid}/members/add", {{method: "POST", body: new URLSearchParams({{name: "Eve"}})}});
        return r.status;
    }}""")
    assert forged == 200  # the form again, with its errors: the app's own way of refusing it

    page.locator("form[action='/exit']").evaluate("(f) => f.requestSubmit()")  # its button is in a dropdown
    page.wait_for_url(base + "/")
    page.goto(base + f"/{pid}/")
    page.wait_for_url(base + f"/authenticate?project_id={pid}")  # out of the session: the project asks again
    page.fill("#password", "s3cret-code")
    page.locator("form", has=page.locator("#password")).locator("[type=submit]").click()
    page.wait_for_url(base + f"/{pid}/")
    names = page.evaluate("() => [...document.querySelectorAll('td')].map((td) => td.innerText)")
    assert "Dinner" in names and "Ada" in names and "Bob" in names and "Eve" not in names
    assert any(r.url == base + "/static/css/main.css" and r.status == 200 for r in assets), \
        [(r.status, r.url) for r in assets]
    assert all(r.status in (200, 304, 307) for r in assets), [(r.status, r.url) for r in assets]
    return assets


def test_ihatemoney_unchanged_on_its_own_origin(apps: ServedHost, browser_context: BrowserContext) -> None:
    base = apps.origin("money")
    use_money(browser_context.new_page(), base, "Trip")
    session = next(c for c in browser_context.cookies() if c["name"] == "session")
    assert (session["domain"], session["path"]) == ("money.localhost", "/")


def test_ihatemoney_unchanged_by_path(apps: ServedHost, browser_context: BrowserContext) -> None:
    assets = use_money(browser_context.new_page(), apps.url + "/plugins/money", "Beach")
    assert any(r.status == 307 for r in assets)  # it wrote /static/... and the host sent it under the prefix
    session = next(c for c in browser_context.cookies() if c["name"] == "session")
    assert (session["domain"], session["path"]) == ("127.0.0.1", "/plugins/money/")


@pytest.mark.parametrize("mode", ["origin", "path"])
def test_klaus_unchanged(apps: ServedHost, browser_context: BrowserContext, mode: str) -> None:
    """Browse the repository list, the commit log, a commit's diff, its tree and a file: links by url_for."""
    base = apps.origin("klaus") if mode == "origin" else apps.url + "/plugins/klaus"
    page = browser_context.new_page()
    assets = recorder(page)
    page.goto(base + "/")
    assert page.title() == "Repository list - Repositories"
    page.click("a:has-text('demo')")
    page.wait_for_url(base + "/demo/")
    assert "Greet the otters" in page.inner_text("body") and "First commit" in page.inner_text("body")
    page.click("a:has-text('Greet the otters')")
    page.wait_for_url(f"{base}/demo/commit/*/")
    assert 'print("hello, otters")' in page.inner_text("body")  # the diff, highlighted by pygments
    # its commit page links the file as b'src/hello.py' (klaus's own bug), so into the tree instead
    page.locator("a[href*='/demo/tree/']").first.click()
    page.wait_for_url(f"{base}/demo/tree/*/")
    page.click("a.dir:has-text('src')")
    page.wait_for_url(f"{base}/demo/tree/*/src")
    page.click("a:has-text('hello.py')")
    page.wait_for_url(f"{base}/demo/blob/*/src/hello.py")
    assert 'print("hello, otters")' in page.inner_text("body")
    assert all(r.status in (200, 304) and r.url.startswith(base + "/static/") for r in assets), \
        [(r.status, r.url) for r in assets]
    assert any(r.url == base + "/static/klaus.css" for r in assets)

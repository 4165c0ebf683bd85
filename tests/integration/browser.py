"""Headless Chromium for browser tests: Playwright for Python driving Debian's ``chromium`` package.

Fixtures (imported by conftest.py, so any integration test can ask for them):

- ``browser``: one Chromium per test session (starting it costs about a second).
- ``browser_context``: a fresh context per test (its own cookies, storage and cache), closed afterwards.

Never ``playwright install``: the browser is the distribution's ``/usr/bin/chromium`` (``./dev test`` installs
it as root), launched by path. Playwright gives each launch a fresh temporary profile (``--user-data-dir``),
so no state leaks between runs. Where Chromium or Playwright is missing the tests skip and say why, except in
CI (``CI=true``), where a browser test that cannot run is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext

# The flags this machine needs (no GPU, no user namespaces for Chromium's own sandbox: the tests' pages are
# our fixtures on loopback) and quiet ones (no QUIC, no background fetches, updates or sync to the internet).
# Playwright adds --headless itself.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000


def chromium_path() -> str | None:
    """Debian's Chromium, if installed."""
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``; in CI, fail instead: there the browser must be installed (./dev test does it)."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        unavailable("Playwright is not installed: pip install -e '.[test]' (./dev test does)")
    path = chromium_path()
    if path is None:
        unavailable("Chromium is not installed: run ./dev test as root (it installs Debian's chromium), or "
                    "apt-get install chromium")
    playwright = sync_playwright().start()
    try:
        try:
            chromium = playwright.chromium.launch(executable_path=path, args=FLAGS, headless=True, timeout=60_000)
        except Error as exc:
            unavailable(f"Chromium at {path} did not start: {exc.message.splitlines()[0]}")
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def browser_context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()

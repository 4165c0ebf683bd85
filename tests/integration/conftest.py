"""Integration fixtures: one installed-and-served host shared by the proxy tests (installs are slow)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integration.browser import browser, browser_context  # noqa: F401  (shared browser fixtures)
from tests.integration.harness import BUNDLED, FIXTURES, ServedHost, served_plugins


def pytest_configure(config: pytest.Config) -> None:
    # A `host serve` started by a test binds no admin listener unless it asks for one (ServedHost picks a free
    # port): the default 127.0.0.1:8001 would be taken by whichever of the tests running side by side came first.
    os.environ.setdefault("HOST_ADMIN_BIND", "")


@pytest.fixture(scope="session")
def served() -> Iterator[ServedHost]:
    """example (seed style), notes (native Flask), echo (test plugin), shop (an app factory in a package) and
sse (server-sent events, paced by the client), served by one host."""
    with served_plugins(BUNDLED / "example_plugin", BUNDLED / "notes", FIXTURES / "echo", FIXTURES / "factory_app",
                        FIXTURES / "sse", wait=("example", "notes", "echo", "shop", "sse")) as host:
        yield host

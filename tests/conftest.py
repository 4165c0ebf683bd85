"""Shared fixtures: short home dirs (Unix socket paths must fit in 108 bytes) and a served host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import short_home


@pytest.fixture
def home() -> Iterator[Path]:
    with short_home() as h:
        yield h


# Modules that take minutes (PyPI installs of real apps, many hosts, browsers), started first: pytest-xdist
# (--dist loadfile) hands out modules in collection order, so one of these collected last would run alone at
# the end while the other workers idle.
SLOW_FIRST = ("test_thirdparty_apps", "test_admin_ui", "test_apply", "test_admin_api", "test_lifecycle",
              "test_dockerfile", "test_metrics", "test_install_archive", "test_exit_causes", "test_plugin_settings")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow modules first, then the other integration modules, unit tests last; each module's own tests keep
    their order (many build on the state earlier ones left)."""
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        module = path.removeprefix("tests/integration/").removesuffix(".py")
        if module in SLOW_FIRST and path.startswith("tests/integration/"):
            return SLOW_FIRST.index(module)
        return len(SLOW_FIRST) + (0 if item.nodeid.startswith("tests/integration/") else 1)

    items.sort(key=rank)  # stable: the order inside a module is kept

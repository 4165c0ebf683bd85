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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist (``./dev test`` runs ``--dist loadgroup``): a module runs whole on one worker,
    so its module-scoped host is built once; and every module using the session-wide ``served`` host (from
    tests/integration/conftest.py, not a module's own fixture of that name) shares one group, so that host
    of five plugins is built once, not once per worker (a module using it anywhere goes whole into that
    group). Without xdist the marks do nothing."""
    def module_of(item: pytest.Item) -> object:
        return getattr(item, "module", None)

    sharing = {id(module_of(item)) for item in items
               if "served" in getattr(item, "fixturenames", ()) and not hasattr(module_of(item), "served")}
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        module = module_of(item)
        group = "served" if id(module) in sharing else getattr(module, "__name__", item.nodeid)
        item.add_marker(pytest.mark.xdist_group(group))

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


# Wall time per test module (setup + call + teardown of its tests, module fixtures included), printed at the end
# of every run so SLOW_FIRST can be kept true: with --dist loadfile a module is the unit of scheduling.
_MODULE_TIMES: dict[str, list[float]] = {}  # path -> [seconds, first report (monotonic), last report, worker]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    import time

    path = report.nodeid.split("::", 1)[0]
    worker = getattr(getattr(getattr(report, "node", None), "gateway", None), "id", "-")
    now = time.monotonic()
    entry = _MODULE_TIMES.setdefault(path, [0.0, now - report.duration, now, worker])
    entry[0] += report.duration
    entry[2] = now


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _MODULE_TIMES:
        return
    t0 = min(entry[1] for entry in _MODULE_TIMES.values())
    terminalreporter.section("module wall times (seconds; start/end from the first report)")
    for path, (seconds, first, last, worker) in sorted(_MODULE_TIMES.items(), key=lambda kv: -kv[1][0])[:40]:
        terminalreporter.write_line(f"{seconds:8.1f}  {worker:>4}  {first - t0:7.1f} {last - t0:7.1f}  {path}")

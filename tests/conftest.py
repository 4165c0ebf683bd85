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


# Seconds each integration module took (the "module wall times" table printed at the end of a run; measured
# with -n 3 on the loaded 2-core machine, so ~2x an idle one: only their order matters). Modules are handed out
# longest first (LPT): a long module started last would run alone at the end while the other workers idle.
# A module not listed yet (a new one) counts as DEFAULT_SECONDS: before the short ones, so it cannot form the
# tail either. Refresh the table when a module's place in it changes a lot.
MODULE_SECONDS = {
    "test_thirdparty_apps": 561, "test_runtime_management": 448, "test_exit_causes": 421, "test_install": 332,
    "test_signed_install": 331, "test_lifecycle": 278, "test_apply": 277, "test_lifecycle_start": 227,
    "test_lifecycle_shutdown": 219, "test_plugin_settings": 216, "test_admin_ui": 200, "test_admin_api": 176,
    "test_isolation": 168, "test_disk_quota": 159, "test_host_api": 150, "test_web_tier": 144,
    "test_websocket": 142, "test_proxy_sessions": 137, "test_install_hygiene": 134, "test_bench": 133,
    "test_metrics": 125, "test_sandbox_user": 122, "test_hooks": 120, "test_registry_admin_cli": 115,
    "test_proxy": 114, "test_install_archive": 114, "test_sandbox_policy": 110, "test_fault_injection": 106,
    "test_dockerfile": 100, "test_cli_contract": 91, "test_escape": 85, "test_runner_attacks": 62,
    "test_egress": 61, "test_runner_lifecycle": 20, "test_web_mounts": 19, "test_streaming": 18,
    "test_install_bundle": 17, "test_runner_fds": 9, "test_origins": 8, "test_kernel_attacks": 8,
    "test_upstream": 8, "test_browser_isolation": 8, "test_runner_support": 8, "test_probe_deadline": 8,
}
DEFAULT_SECONDS = 150


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist (>= 3.6) hands out modules by their number of tests, most first, unless told to keep the
    # collection order: the order below is the one wanted (a module of 3 tests can take the longest).
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration modules longest first, unit tests last (seconds each); each module's own tests keep their
    order (many build on the state earlier ones left)."""
    def rank(item: pytest.Item) -> float:
        path = item.nodeid.split("::", 1)[0]
        if not path.startswith("tests/integration/"):
            return 0.0
        return -MODULE_SECONDS.get(path.removeprefix("tests/integration/").removesuffix(".py"), DEFAULT_SECONDS)

    items.sort(key=rank)  # stable: the order inside a module (and of the unit modules) is kept


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

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
# with -n 3 on the 2-core machine at load ~4; a module that only reuses a session host shows ~2: only the
# order matters). Modules are handed out longest first (LPT): a long module started last would run alone at
# the end while the other workers idle.
# A module not listed yet (a new one) counts as DEFAULT_SECONDS: before the short ones, so it cannot form the
# tail either. Refresh the table when a module's place in it changes a lot.
MODULE_SECONDS = {
    "test_exit_causes": 147, "test_thirdparty_apps": 122, "test_runtime_management": 114, "test_admin_api": 104,
    "test_install": 89, "test_signed_install": 77, "test_lifecycle_start": 63, "test_bench": 61,
    "test_cli_contract": 58, "test_lifecycle_shutdown": 56, "test_lifecycle": 55, "test_proxy": 54,
    "test_websocket": 53, "test_plugin_settings": 48, "test_web_tier": 47, "test_admin_ui": 47,
    "test_proxy_sessions": 46, "test_metrics": 44, "test_fault_injection": 43, "test_apply": 42,
    "test_disk_quota": 40, "test_install_hygiene": 40, "test_host_api": 37, "test_escape": 36, "test_hooks": 36,
    "test_isolation": 36, "test_idle_memory": 35, "test_wheel_cache": 35, "test_sandbox_policy": 30,
    "test_install_archive": 28, "test_egress": 25, "test_runner_attacks": 25, "test_registry_admin_cli": 22,
    "test_dockerfile": 20, "test_instance_tree": 9, "test_runner_lifecycle": 8, "test_kernel_attacks": 4,
    "test_browser_isolation": 3,
    "test_sandbox_user": 2, "test_web_mounts": 2, "test_streaming": 2, "test_install_bundle": 2,
    "test_runner_fds": 2, "test_origins": 2, "test_upstream": 2, "test_runner_support": 2, "test_probe_deadline": 2,
}
DEFAULT_SECONDS = 40


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

"""Integration fixtures: one installed-and-served host shared by the proxy tests (installs are slow)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.installer import RUNTIME_REQUIREMENTS
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


@pytest.fixture(scope="session")
def runtime_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin runtime's wheels (RUNTIME_REQUIREMENTS and their dependencies) from pip's configured index,
    downloaded once per test run (mostly a wait on the index: ~25 s on a loaded machine) and shared by the xdist
    workers under a lock. Read-only to tests: copy them into a wheelhouse of your own."""
    base = tmp_path_factory.getbasetemp()
    run = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this run's, shared by its workers
    wheels = run / "runtime-wheels"
    with open(run / "runtime-wheels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (wheels / ".complete").exists():
            shutil.rmtree(wheels, ignore_errors=True)  # a worker that failed half-way
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:", "-d",
                            str(wheels), *RUNTIME_REQUIREMENTS], check=True, capture_output=True, timeout=300)
            (wheels / ".complete").touch()
    return wheels

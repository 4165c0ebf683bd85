"""Integration fixtures: one installed-and-served host shared by the proxy tests (installs are slow)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BUNDLED, FIXTURES, ServedHost, run_host


@pytest.fixture(scope="session")
def served() -> Iterator[ServedHost]:
    """example (seed style), notes (native Flask), echo (test plugin) and shop (an app factory in a
package), served by one host."""
    d = Path(tempfile.mkdtemp(prefix="ph-", dir="/tmp"))
    home = d / "h"
    for src in (BUNDLED / "example_plugin", BUNDLED / "notes", FIXTURES / "echo", FIXTURES / "factory_app"):
        run_host(home, "install", str(src), "--yes", check=True)
    host = ServedHost(home).start(wait_plugins=("example", "notes", "echo", "shop"))
    try:
        yield host
    finally:
        host.stop()
        shutil.rmtree(d, ignore_errors=True)

"""Fail closed: a plugin whose policy needs a layer this machine cannot give does not start, and says why
everywhere an operator looks; `HOST_SANDBOX=weak` starts it with the layers that exist, loudly."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BUNDLED, ServedHost, run_host, short_home

# The runner's documented override of the bubblewrap binary: pointing it at nothing takes the namespace
# layer away for real (the runner probes it and finds no usable bwrap).
NO_BWRAP = {"SANDBOX_RUNNER_BWRAP": "/nonexistent/bwrap"}


@pytest.fixture
def installed_home() -> Iterator[Path]:
    with short_home() as home:
        run_host(home, "install", str(BUNDLED / "example_plugin"), "--yes", check=True)
        yield home


def test_missing_layer_in_strict_mode_refuses_to_start_and_says_why(installed_home: Path) -> None:
    host = ServedHost(installed_home, env=NO_BWRAP).start()
    try:
        st = host.wait_state("example", "quarantined", timeout=30)
        assert "sandbox set-up failed (exit 121)" in st["reason"]
        assert "sandbox_runner: example: namespaces: bwrap not usable" in st["reason"]
        assert host.get("/plugins/example/example").status_code == 503
        listed = {p["name"]: p for p in json.loads(host.cli("list", "--json").stdout)}
        assert listed["example"]["state"] == "quarantined"
        assert "namespaces" in listed["example"]["reason"]
        log = host.cli("logs", "example", "-n", "5").stdout
        assert "sandbox_runner: example: namespaces: bwrap not usable" in log
        assert st["restarts"] == 0  # a set-up failure is not retried
    finally:
        host.stop()


def _world_traversable(path: str) -> bool:
    p = Path(path).resolve()
    return all(os.stat(q).st_mode & 0o001 for q in [p, *p.parents])


@pytest.mark.skipif(not _world_traversable(os.path.realpath(sys.base_prefix)),
                    reason="without bubblewrap the plugin's uid must reach the Python runtime, and this "
                    "machine keeps it under a 0700 directory")
def test_weak_mode_runs_with_the_layers_that_exist_and_says_so(installed_home: Path) -> None:
    host = ServedHost(installed_home, env={**NO_BWRAP, "HOST_SANDBOX": "weak"}).start(wait_plugins=("example",))
    try:
        assert host.get("/plugins/example/example").text == "Hello from Example Plugin!"
        sandbox = host.plugin("example")["sandbox"]
        assert sandbox["level"] == "weak" and "namespaces" in sandbox["missing"]
        assert "running with a weaker sandbox" in host.read_log()
    finally:
        host.stop()


def test_healthz_reports_the_layers_applied(installed_home: Path) -> None:
    host = ServedHost(installed_home).start(wait_plugins=("example",))
    try:
        sandbox = host.plugin("example")["sandbox"]
        assert sandbox == {"backend": "bwrap", "level": "full", "missing": []}
    finally:
        host.stop()

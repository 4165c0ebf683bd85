"""host.supervisor.serve: `host serve` hands its validated settings to the interpreter it becomes, which serves
with exactly those values (and says so in one line when started any other way)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from host.settings import HostSettings
from host.supervisor import core, serve


@pytest.mark.parametrize(("started_as", "safe_path"), [("/venv/bin/host", True), ("/src/host/__main__.py", False)])
def test_the_supervisor_process_serves_with_the_settings_host_serve_validated(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, started_as: str, safe_path: bool) -> None:
    """The `host` script did not put the working directory on sys.path, so the supervisor gets -P (else a `host`
    package there would be imported as root); `python -m host` did, and the supervisor finds itself the same way."""
    execs: list[list[str]] = []
    monkeypatch.setattr(sys, "argv", [started_as, "serve"])

    def execv(path: str, argv: list[str]) -> None:
        execs.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    settings = HostSettings(home=tmp_path, bind="127.0.0.1:9", web_workers=3, pip_args="--index-url x")
    with pytest.raises(SystemExit):
        serve.handoff(settings, verbose=True)
    argv = execs[0]
    assert argv[0] == sys.executable and argv[argv.index("-m") + 1] == "host.supervisor"
    assert ("-P" in argv) is safe_path or sys.flags.safe_path

    served: list[Any] = []

    class Supervisor:
        def __init__(self, got: HostSettings) -> None:
            served.append(got)

        def bind(self) -> None:
            pass

        def run(self) -> int:
            return 0

    monkeypatch.setattr(core, "Supervisor", Supervisor)
    with pytest.raises(SystemExit) as ended:
        serve.main(argv[argv.index("-m") + 2:])
    assert ended.value.code == 0
    got = served[0]
    for field in HostSettings.model_fields:  # every field, pip_args too (only the web tiers go without it)
        expected = settings.home_dir if field == "home" else getattr(settings, field)
        assert getattr(got, field) == expected, field
    assert got.origin_domain == settings.origin_domain


@pytest.mark.parametrize("argv", [[], ["--settings-fd"], ["--settings-fd", "x"], ["--settings-fd", "3", "-v"]])
def test_started_by_hand_it_says_how_it_is_started(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        serve.main(argv)
    assert ended.value.code == 2
    assert "usage: python -m host.supervisor --settings-fd FD" in capsys.readouterr().err

"""What the CLI prints of plugin-supplied text, and the modes of what it creates."""

from __future__ import annotations

import logging
import stat
import sys
from pathlib import Path

import pytest

from host import cli
from host.layout import Layout
from host.registry import Registry
from host.terminal import PrintableFormatter, printable
from manifests import Manifest
from manifests.model import Permissions

ERASE_LINE_ABOVE = "\x1b[1A\x1b[2K"


def test_terminal_control_characters_from_plugins_are_defused() -> None:
    assert printable("\x1b]52;c;cHduZWQ=\x07boom\r\x00ok\tfine\n") == "?]52;c;cHduZWQ=?boom??ok?fine?"
    assert printable("\x1b]52;c;x\x07\tfine\n", multiline=True) == "?]52;c;x?\tfine\n"
    assert printable("\x9b2K \x7f \u202egnp.exe \u2066x\u2069 ünï ✓") == "?2K ? ?gnp.exe ?x? ünï ✓"
    assert printable(None) == ""


def test_the_consent_summary_defuses_what_the_manifest_says() -> None:
    # model_construct skips validation: a manifest registered before the model refused control characters
    m = Manifest.model_construct(name="evil", version="1.0", entrypoint="app:app",
                                 description=f"{ERASE_LINE_ABOVE}trusted", requirements=(f"six{ERASE_LINE_ABOVE}",),
                                 health_path="/", permissions=Permissions())
    lines = cli.permission_summary(m)
    assert not any("\x1b" in line for line in lines)
    assert lines[0].endswith("?[1A?[2Ktrusted") and "six?[1A?[2K" in lines[2]


def test_host_check_prints_no_escape_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plugin.toml").write_text('name = "evil"\nversion = "1.0"\nentrypoint = "app:app"\n'
                                          'description = "\\u001b[1A\\u001b[2Ktrusted"\n')
    monkeypatch.setattr(sys, "argv", ["host", "check", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    out = capsys.readouterr()
    assert "\x1b" not in out.out + out.err
    assert "description: '\\x1b[1A\\x1b[2Ktrusted': one line of text without control characters" in out.err


def test_progress_lines_and_errors_are_defused(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cli.progress(f"warning: skipped symlink {ERASE_LINE_ABOVE}x -> /etc/shadow")

    def boom(**_: object) -> None:
        raise cli.HostError(f"quarantined: {ERASE_LINE_ABOVE}all good", plugin="evil")

    monkeypatch.setattr(cli.cli, "main", boom)
    with pytest.raises(SystemExit):
        cli.main()
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "==> warning: skipped symlink ?[1A?[2Kx -> /etc/shadow" in err
    assert "error: evil: quarantined: ?[1A?[2Kall good" in err


def test_serve_console_log_lines_are_defused() -> None:
    record = logging.LogRecord("plugins.evil", logging.INFO, __file__, 1, "%s", (f"{ERASE_LINE_ABOVE}ok\tx",), None)
    assert PrintableFormatter("%(name)s: %(message)s").format(record) == "plugins.evil: ?[1A?[2Kok\tx"


def test_home_is_traversable_only_and_the_registry_private(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    layout.ensure()
    Registry(layout.registry).put("a", "1", "1-x", {}, enabled=True)
    assert stat.S_IMODE(layout.home.stat().st_mode) == 0o711
    assert stat.S_IMODE(layout.registry.stat().st_mode) == 0o600

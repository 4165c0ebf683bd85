"""What the CLI prints of plugin-supplied text, and the modes of what it creates."""

from __future__ import annotations

import stat
from pathlib import Path

from host.cli import printable
from host.layout import Layout
from host.registry import Registry


def test_terminal_control_characters_from_plugins_are_defused() -> None:
    assert printable("\x1b]52;c;cHduZWQ=\x07boom\r\x00ok\tfine\n") == "?]52;c;cHduZWQ=?boom??ok\tfine\n"
    assert printable(None) == ""


def test_home_is_traversable_only_and_the_registry_private(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    layout.ensure()
    Registry(layout.registry).put("a", "1", "1-x", {}, enabled=True)
    assert stat.S_IMODE(layout.home.stat().st_mode) == 0o711
    assert stat.S_IMODE(layout.registry.stat().st_mode) == 0o600

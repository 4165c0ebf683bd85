"""The generated passwd and group files: the plugin under its own name and home, nothing of the host."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from host.layout import Layout
from host.sandbox_user import group_text, passwd_text, write_etc_files


def test_the_plugin_is_its_uid_with_its_data_dir_as_home() -> None:
    assert passwd_text("notes", 700003, 700003, "/srv/h/data/notes").splitlines() == [
        "root:x:0:0:root:/nonexistent:/usr/sbin/nologin",
        "notes:x:700003:700003:plugin notes:/srv/h/data/notes:/usr/sbin/nologin",
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
    ]
    assert group_text("notes", 700003) == "root:x:0:\nnotes:x:700003:\nnogroup:x:65534:\n"


def test_a_plugin_named_like_a_fixed_account_is_the_only_one_with_that_name() -> None:
    names = [line.split(":")[0] for line in passwd_text("root", 700001, 700001, "/d").splitlines()]
    assert names == ["root", "nobody"]
    assert passwd_text("root", 700001, 700001, "/d").startswith("root:x:700001:")
    # a non-root host whose own uid is 65534: the plugin keeps it, "nobody" goes
    assert [ln.split(":")[0] for ln in passwd_text("p", 65534, 65534, "/d").splitlines()] == ["root", "p"]


def test_a_home_that_would_break_the_format_is_refused() -> None:
    with pytest.raises(ValueError, match="passwd home"):
        passwd_text("p", 1, 1, "/srv/a:b/data/p")


def test_files_are_roots_0644_in_run(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    (tmp_path / "run").mkdir()
    etc = write_etc_files(layout, "notes", 700003)
    assert [dest for dest, _src in etc] == ["/etc/passwd", "/etc/group"]
    for _dest, src in etc:
        st = Path(src).lstat()
        assert Path(src).parent == layout.run and stat.S_IMODE(st.st_mode) == 0o644 and stat.S_ISREG(st.st_mode)
    assert "notes:x:700003:700003:" in Path(etc[0][1]).read_text()

"""Plugin uids unique per machine: the allocation file shared by every home (no processes: a fake /proc)."""

from __future__ import annotations

import json
import pwd
from pathlib import Path

import pytest

from host.errors import UidError
from host.uids import UidFile, ids_in_use

BASE = 1_900_000_000  # far from any real user, group or process of the machine running the tests


@pytest.fixture
def uids(tmp_path: Path) -> UidFile:
    (tmp_path / "proc").mkdir()
    return UidFile(tmp_path / "lib" / "uids.json", proc=tmp_path / "proc")


def _homes(tmp_path: Path, *names: str) -> list[Path]:
    for n in names:
        (tmp_path / n).mkdir()
    return [tmp_path / n for n in names]


def _process(proc: Path, pid: int, uid: int, gid: int = 0) -> None:
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "status").write_text(f"Name:\tsleep\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
                                            f"Gid:\t{gid}\t{gid}\t{gid}\t{gid}\n")


def test_two_homes_never_get_the_same_uid(uids: UidFile, tmp_path: Path) -> None:
    a, b, c = _homes(tmp_path, "a", "b", "c")
    got = [uids.claim(h, "echo", BASE) for h in (a, b, c)]
    assert got == [BASE + 1, BASE + 2, BASE + 3]
    assert uids.claim(a, "notes", BASE) == BASE + 4
    assert uids.claim(b, "echo", BASE) == BASE + 2  # a failed install retried: the pair keeps its uid
    assert uids.path.stat().st_mode & 0o777 == 0o600
    assert uids.path.parent.stat().st_mode & 0o777 == 0o700


def test_a_uid_that_owns_a_process_or_a_name_is_skipped(uids: UidFile, tmp_path: Path) -> None:
    (home,) = _homes(tmp_path, "h")
    _process(uids.proc, 4242, BASE + 1)
    _process(uids.proc, 4343, 0, gid=BASE + 2)  # plugins run with gid = uid: a used gid counts too
    assert ids_in_use(uids.proc) >= {BASE + 1, BASE + 2}
    assert uids.claim(home, "echo", BASE) == BASE + 3
    # and one /etc/passwd or /etc/group knows (root and the system users from 0 up)
    got = UidFile(tmp_path / "other.json", proc=uids.proc).claim(home, "other", -1)
    assert got > 0
    with pytest.raises(KeyError):
        pwd.getpwuid(got)


def test_keep_data_reinstall_keeps_its_uid_and_released_uids_are_never_reused(uids: UidFile,
                                                                              tmp_path: Path) -> None:
    a, b = _homes(tmp_path, "a", "b")
    first = uids.claim(a, "echo", BASE)
    assert uids.claim(a, "echo", BASE, current=first) == first  # upgrade, or reinstall after --keep-data
    uids.release(a, "echo")
    assert uids.claim(b, "echo", BASE) == first + 1
    assert uids.claim(a, "echo", BASE, current=first) == first  # its kept data still belongs to that uid


def test_cant_take_a_uid_another_home_holds(uids: UidFile, tmp_path: Path) -> None:
    a, b = _homes(tmp_path, "a", "b")
    held = uids.claim(a, "echo", BASE)
    with pytest.raises(UidError, match=rf"its uid {held} is also recorded for plugin 'echo' of {a} "):
        uids.claim(b, "legacy", BASE, current=held)  # e.g. a home allocated per home before this file existed


def test_homes_that_are_gone_are_forgotten_but_their_uids_stay_used(uids: UidFile, tmp_path: Path) -> None:
    a, b = _homes(tmp_path, "a", "b")
    gone = uids.claim(a, "echo", BASE)
    a.rmdir()
    assert uids.claim(b, "echo", BASE) == gone + 1
    assert json.loads(uids.path.read_text())["owners"] == {str(gone + 1): {"home": str(b), "plugin": "echo"}}


def test_a_damaged_file_fails_closed(uids: UidFile, tmp_path: Path) -> None:
    (home,) = _homes(tmp_path, "h")
    uids.path.parent.mkdir(parents=True)
    uids.path.write_text("{")
    with pytest.raises(UidError, match="is damaged"):
        uids.claim(home, "echo", BASE)

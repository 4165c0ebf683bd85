"""Habits of unchanged third-party apps, found running real ones from PyPI, that the sandbox broke: a fixture
plugin (tests/fixtures/plugins/app_habits) writes where it names no directory at import, uses multiprocessing
and a pty. Each failed before with the error quoted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import FIXTURES, ServedHost, served_plugins


def _bwrap() -> bool:
    from sandbox_runner.bwrap import usable

    return usable()[0] is not None


pytestmark = pytest.mark.skipif(not _bwrap(), reason="a private /dev/shm and devpts need bubblewrap")


@pytest.fixture(scope="module")
def habits() -> Iterator[ServedHost]:
    with served_plugins(FIXTURES / "app_habits", wait=("habits",)) as host:
        yield host


def test_an_app_writes_its_default_files_into_its_data_dir(habits: ServedHost) -> None:
    # before: the install failed with "OSError: [Errno 30] Read-only file system: '.../bundle/started.log'"
    data = habits.home / "data" / "habits"
    where = habits.get("/plugins/habits/").json()
    assert where["cwd"] == str(data) and where["instance"] == str(data / "instance")
    assert {"started.log", "instance"} <= set(where["files"])
    assert (data / "instance" / "app.db").is_file()


def test_multiprocessing_works(habits: ServedHost) -> None:
    # before: "PermissionError: [Errno 13] Permission denied" (sem_open in /dev/shm), at import
    r = habits.get("/plugins/habits/pool")
    assert (r.status_code, r.json()) == (200, [1, 4, 9])


def test_a_spawned_child_that_imports_the_app_anew_writes_into_the_data_dir_too(habits: ServedHost) -> None:
    # before: the child died importing the app ("Read-only file system: '.../bundle/instance'") and the pool broke
    r = habits.get("/plugins/habits/spawn")
    assert r.status_code == 200, r.text
    assert r.json() == [16]


def test_a_pty_works(habits: ServedHost) -> None:
    # before: "OSError: out of pty devices"
    r = habits.get("/plugins/habits/pty")
    assert (r.status_code, r.text) == (200, "hello from a pty\r\n")

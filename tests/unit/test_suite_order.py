"""The suite's own scheduling (tests/conftest.py): integration modules longest first, unit tests last, and
pytest-xdist told to keep that order."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tests import conftest


def _items(*nodeids: str) -> list[Any]:
    return [SimpleNamespace(nodeid=n) for n in nodeids]


def test_integration_modules_go_longest_first_new_ones_before_short_ones_unit_tests_last() -> None:
    items = _items("tests/unit/test_a.py::t1", "tests/integration/test_runner_fds.py::t1",
                   "tests/integration/test_brand_new.py::t1", "tests/integration/test_thirdparty_apps.py::t1",
                   "tests/integration/test_runner_fds.py::t2", "tests/unit/test_b.py::t1",
                   "tests/integration/test_thirdparty_apps.py::t2")
    assert conftest.MODULE_SECONDS["test_runner_fds"] < conftest.DEFAULT_SECONDS \
        < conftest.MODULE_SECONDS["test_thirdparty_apps"]
    conftest.pytest_collection_modifyitems(SimpleNamespace(), items)  # type: ignore[arg-type]
    assert [i.nodeid for i in items] == [
        "tests/integration/test_thirdparty_apps.py::t1", "tests/integration/test_thirdparty_apps.py::t2",
        "tests/integration/test_brand_new.py::t1",
        "tests/integration/test_runner_fds.py::t1", "tests/integration/test_runner_fds.py::t2",
        "tests/unit/test_a.py::t1", "tests/unit/test_b.py::t1"]  # each module's own order kept


def test_xdist_is_told_not_to_reorder_modules_by_their_number_of_tests() -> None:
    config = SimpleNamespace(option=SimpleNamespace(loadscopereorder=True))
    conftest.pytest_configure(config)  # type: ignore[arg-type]
    assert config.option.loadscopereorder is False
    conftest.pytest_configure(SimpleNamespace(option=SimpleNamespace()))  # type: ignore[arg-type]  # no xdist

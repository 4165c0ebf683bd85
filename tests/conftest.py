"""Shared fixtures: short home dirs (Unix socket paths must fit in 108 bytes) and a served host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import short_home


@pytest.fixture
def home() -> Iterator[Path]:
    with short_home() as h:
        yield h

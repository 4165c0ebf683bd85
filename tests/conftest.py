"""Shared fixtures: short home dirs (Unix socket paths must fit in 108 bytes) and a served host."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def home() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ph-", dir="/tmp"))
    try:
        yield d / "h"
    finally:
        shutil.rmtree(d, ignore_errors=True)

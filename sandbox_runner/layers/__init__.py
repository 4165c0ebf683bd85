"""The confinement layers, one module each; :mod:`sandbox_runner.inner` applies them in a fixed order.

Each layer module exposes ``prepare(...) -> Step``: all look-ups (libraries, ABI, paths) happen in
``prepare`` so that applying a layer never needs something an earlier layer has already taken away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple


class Step(NamedTuple):
    """A prepared layer: ``run`` applies it and returns what it did; ``run is None`` means unavailable."""

    layer: str
    run: Callable[[], str] | None
    detail: str = ""


def unavailable(layer: str, why: str) -> Step:
    return Step(layer, None, why)
